"""Building one replica: every component made from the config, each collaborator a
constructor argument, in the order their dependencies need (as Contour's serve.go and
Envoy Gateway's runners do). Nothing runs here but what building needs (etcd started,
the store read once, secrets primed, ports bound); server.py runs what this returns.

    assemble(config)  an async context: the built Replica; on exit, what building
                      started (the etcd connection, the embedded etcd, the data-dir
                      lock) is closed in reverse order
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable, Container, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
from envoy.config.core.v3 import base_pb2

from controlplane.admin import AdminService
from controlplane.admin.auth import CertificateAuthenticator, TokenAuthenticator
from controlplane.admin.proxies import proxy_messages
from controlplane.analysis import Window
from controlplane.analysis.admission import Admission, RoutedClusters, Sender
from controlplane.analysis.health import HealthBoard
from controlplane.analysis.prometheus import PrometheusAnalysis
from controlplane.api import admin_pb2_grpc
from controlplane.discovery import DnsLookup, LeasedEndpoints, NameResolver
from controlplane.errors import FieldError, InvalidInputError
from controlplane.fleet import EtcdFleet, FleetReporter, fleet_acked_secrets
from controlplane.model import DesiredState
from controlplane.publish import Publisher, xds_diff
from controlplane.rollout.analysis_reports import AnalysisReporter, ByProvider, EtcdAnalysis
from controlplane.rollout.engine import RolloutEngine
from controlplane.stage import RenderStage
from controlplane.store import EmbeddedEtcd, EtcdTLS, Store
from controlplane.store.audit_anchor import ANCHOR_FILE, AUDIT_KEY_PURPOSE, AuditAnchor
from controlplane.store.datadir import DataDirLock
from controlplane.store.embedded import MAX_REQUEST_BYTES
from controlplane.store.kv import parse_endpoint
from controlplane.store.leader import LeaderElection, LeadWork, together
from controlplane.store.revocations import RevocationStore, RevokedSerials
from controlplane.store.tokens import TOKEN_KEY_PURPOSE, TokenStore
from controlplane.xds.cache import SnapshotCache
from controlplane.xds.identity import (
    GroupOfNode,
    peer_certificate_group,
    peer_serial,
    refusing_revoked,
)
from controlplane.xds.peers import MAX_STREAMS_PER_PEER
from controlplane.xds.proxies import ProxyRegistry
from controlplane.xds.server import AggregatedDiscoveryServer
from controlplane.xds.stream import node_cluster

if TYPE_CHECKING:
    from controlplane.analysis.receiver import MetricsReceiver
    from controlplane.secrets import Material, Vault
    from controlplane.secrets.server_trust import ServerTrust
    from controlplane.secrets.sync import SecretSync
    from controlplane.telemetry import Telemetry

log = logging.getLogger("controlplane")

DEFAULT_XDS_ADDR = "127.0.0.1:18000"
DEFAULT_ADMIN_ADDR = "127.0.0.1:18001"
DEFAULT_METRICS_ADDR = "127.0.0.1:18002"
DEFAULT_DATA_DIR = ".controlplane"

# Memory per idle proxy: benchmarks/memory.py prints ours beside a bare grpc.aio handler
# with these same options, most of it gRPC C-core's per connection (an 8 KB slice held for
# the pending read) and per call (a call arena). No channel arg lowered that beyond noise:
# http2.lookahead_bytes, http2.bdp_probe=0, http2.hpack_table_size.*, the
# experimental.tcp_*read_chunk_size args (reads still go into 8 KB slices),
# http2.write_buffer_size, enable_channelz=0 (-0.6 KB per connection). grpc.minimal_stack
# (-1.5 KB per call) drops the message-size filter, so the receive limit below would no
# longer be enforced: not used.
GRPC_OPTIONS = [
    # gRPC sets SO_REUSEPORT by default: a second serve on the same port would bind too and
    # the kernel would split connections between the two, silently. Refuse instead.
    ("grpc.so_reuseport", 0),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.max_send_message_length", 256 * 1024 * 1024),
]


@dataclass(frozen=True)
class ServeConfig:
    """What `controlplane serve` was asked to do."""

    etcd: tuple[str, ...] = ()
    data_dir: Path = Path(DEFAULT_DATA_DIR)
    xds_addr: str = DEFAULT_XDS_ADDR
    admin_addr: str = DEFAULT_ADMIN_ADDR
    metrics_addr: str | None = DEFAULT_METRICS_ADDR
    tls_dir: Path | None = None
    leader_ttl: int = 10
    cert_lifetime_s: float = 24 * 3600.0
    credentials_dirs: tuple[Path, ...] = ()
    """Where `valueFrom.file` may point (none: nowhere); never inside data_dir or tls_dir."""
    max_streams_per_peer: int = MAX_STREAMS_PER_PEER
    etcd_tls: EtcdTLS | None = None
    """How to reach an external etcd over TLS (the embedded one brings its own)."""
    dns_servers: tuple[tuple[str, int], ...] = ()
    """(ip, port) of the DNS servers endpoint names are resolved with; empty: the
    system's (/etc/resolv.conf, /etc/hosts)."""


@dataclass(frozen=True)
class Replica:
    """Every component of one replica, built and wired; server.py runs them.

    `watch` has yielded the state the components were primed with (`state`, `revision`);
    following it is the first thing running does."""

    config: ServeConfig
    identity: str
    telemetry: Telemetry
    etcd: EmbeddedEtcd | None
    store: Store
    stage: RenderStage
    registry: ProxyRegistry
    publisher: Publisher
    routed: RoutedClusters
    secret_sync: SecretSync
    fleet_reporter: FleetReporter
    analysis_reporter: AnalysisReporter
    engine: RolloutEngine
    resolver: NameResolver
    leased: LeasedEndpoints
    election: LeaderElection
    leader_work: LeadWork
    """What the elected leader runs: the rollout engine, the resolver, the leased keys'
    watches."""
    revoked: RevokedSerials
    server_trust: ServerTrust | None
    authenticator: TokenAuthenticator | CertificateAuthenticator
    xds_server: grpc.aio.Server
    admin_server: grpc.aio.Server
    xds_port: int
    admin_port: int
    watch: AsyncIterator[tuple[DesiredState, int]]
    state: DesiredState
    revision: int
    lock: DataDirLock


@contextlib.asynccontextmanager
async def assemble(config: ServeConfig) -> AsyncIterator[Replica]:
    """Build a replica from `config`; on exit close what building started.

    Errors:
        InvalidInputError: the data dir is in use, or an address cannot be bound.
        StoreUnavailableError: etcd did not start or cannot be reached.
    """
    # Imported here: prometheus_client adds ~0.1 s, cryptography ~90 ms to every CLI
    # command, which imports this module through server.py.
    from controlplane.secrets import SealingKey, Vault
    from controlplane.secrets.files import CredentialFiles
    from controlplane.secrets.server_trust import load_server_trust
    from controlplane.secrets.sync import SecretSync
    from controlplane.secrets.vault import SYSTEM_ACTOR
    from controlplane.telemetry import Telemetry

    async with contextlib.AsyncExitStack() as stack:
        # First: a second serve on this data dir (its etcd, its sealing key) stops here.
        lock = DataDirLock(config.data_dir)
        lock.acquire()
        stack.callback(lock.release)
        telemetry = Telemetry()  # its own registry: several replicas per process work
        stack.callback(telemetry.close)
        etcd, endpoints, etcd_tls, max_request_bytes = await _etcd(config)
        if etcd is not None:
            stack.push_async_callback(etcd.stop)
        sealing = SealingKey.load(tls_dir=config.tls_dir, data_dir=config.data_dir)
        store = await Store.connect(endpoints, max_request_bytes=max_request_bytes,
                                    sealer=sealing, tls=etcd_tls)
        stack.push_async_callback(store.close)
        store.kv.on_error = telemetry.etcd_error
        # The audit chain's HMAC key: derived from the sealing key, so etcd never holds
        # it; the anchor (outside etcd) is what shows a truncated or wiped log.
        await store.key_audit(sealing.derive(AUDIT_KEY_PURPOSE),
                              AuditAnchor(config.data_dir / ANCHOR_FILE))
        # Token records carry an HMAC under this key: one put into etcd behind the
        # API's back mints nothing. Records from before are signed once, here.
        store.token_key = sealing.derive(TOKEN_KEY_PURPOSE)
        await TokenStore(store).sign_unsigned(actor=SYSTEM_ACTOR)
        # /proc: /proc/self/environ holds CONTROLPLANE_SECRETS_KEY when it is set.
        forbidden = [("the data dir", config.data_dir), ("procfs", Path("/proc"))]
        if config.tls_dir is not None:
            forbidden.append(("the TLS dir", config.tls_dir))
        vault = Vault(store.kv, store.keys, sealing, store.commit_noted,
                      cert_lifetime_s=config.cert_lifetime_s,
                      files=CredentialFiles.of(config.credentials_dirs, forbidden=forbidden))
        await _seal_at_rest(store, vault, actor=SYSTEM_ACTOR)

        # One render of each group's snapshot per state, served by the publisher and
        # compared with the fleet's ACKs by the rollout engine; SDS versions reach etcd
        # (fleet reports) keyed, so they reveal nothing.
        stage = RenderStage(secret_key=sealing.derive(b"sds-versions"))
        registry, cache = ProxyRegistry(), SnapshotCache()
        publisher = Publisher(cache, stage=stage,
                              on_published=telemetry.published,
                              on_forgotten=telemetry.forget_groups)
        watch = store.watch_state()
        state, revision = await anext(watch)
        telemetry.observe_state(state)
        routed = RoutedClusters()
        """Group → the clusters its routes reach: whose pushed samples count."""
        routed.update(state)
        # The sync issues and rotates secrets and hands the material to the publisher
        # (and to the ports' TLS, below), primed before the first publish so TLS groups
        # are whole from their first snapshot. A CA rotation keeps the previous CA
        # trusted until the fleet ACKed the new certificates.
        on_material: list[Callable[[Material], None]] = [publisher.update_secrets]

        def hand_over(material: Material) -> None:
            for receiver in on_material:
                receiver(material)

        secret_sync = SecretSync(vault, hand_over, fleet_acked=fleet_acked_secrets(store, stage))
        await secret_sync.prime(state)
        publisher.update(state)
        publisher.publish_now()  # the first full state, before any proxy is answered

        identity = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        # Analysis: proxies push stats here; each replica reports its counts to etcd and
        # the leader judges canaries on the fleet-wide sums.
        window, health = Window(), HealthBoard()
        analysis = EtcdAnalysis(store)
        engine = RolloutEngine(
            store, EtcdFleet(store, stage), identity=identity,
            analysis=ByProvider({"envoy": analysis, "prometheus": PrometheusAnalysis()}),
            health=analysis)

        # The leader resolves endpoint names and copies leased keys (endpointsFrom), and
        # writes what it found to etcd, whence every replica renders it (model/endpoints.py).
        resolver = NameResolver(store, DnsLookup(config.dns_servers), state,
                                on_lookup=telemetry.dns_lookup,
                                on_failing=telemetry.dns_names_failing)
        leased = LeasedEndpoints(store, state)

        revoked = RevokedSerials()
        tokens = TokenAuthenticator(store)
        authenticator: TokenAuthenticator | CertificateAuthenticator = tokens
        trust: ServerTrust | None = None
        if config.tls_dir is not None:
            # Both ports require client certificates from our CA; on the admin port a
            # user certificate (or a bearer token on top) says who calls.
            trust = tls = await load_server_trust(
                config.tls_dir, vault, secret_sync.material.ca_pem,
                hosts=[_host(config.xds_addr), _host(config.admin_addr)])
            # After `cert rotate --ca`, clients come with certificates from the new CA.
            on_material.append(lambda material: tls.update(material.ca_pem))
            authenticator = CertificateAuthenticator(tokens, revoked)
            await revoked.refresh(RevocationStore(store))

        xds = grpc.aio.server(options=GRPC_OPTIONS)
        # With --tls-dir a proxy's group is the one its client certificate names.
        group_of = (refusing_revoked(peer_certificate_group, revoked)
                    if config.tls_dir else node_cluster)
        AggregatedDiscoveryServer(
            cache, registry, group_of=group_of, observer=telemetry,
            max_streams_per_peer=config.max_streams_per_peer).add_to_server(xds)
        # Envoy's stats sink: it reaches us over the xDS cluster.
        metrics_receiver(window, health, group_of=group_of, registry=registry,
                         routed=routed, revoked=revoked,
                         on_ignored=telemetry.ignored_metrics).add_to_server(xds)
        xds_port = _bind(xds, config.xds_addr, "--xds-addr",
                         trust.credentials() if trust else None)
        if trust is None and not is_loopback(_host(config.xds_addr)):
            log.warning(
                "xDS on %s in plaintext, not on loopback: anyone who reaches this port can "
                "claim any node and group, read that group's config and secrets, and push "
                "metrics that steer rollouts; use --tls-dir (mTLS) off loopback",
                bound_address(config.xds_addr, xds_port))
        admin = grpc.aio.server(options=GRPC_OPTIONS)
        service = AdminService(store, proxies=lambda: proxy_messages(registry),
                               xds_diff=xds_diff, authenticator=authenticator)
        service.attach_vault(vault)  # cert rotate / credential rotate
        if trust is not None:
            service.attach_server_ca(trust.anchor_pem.decode())  # into issued bundles
        admin_pb2_grpc.add_AdminServicer_to_server(service, admin)
        admin_port = _bind(admin, config.admin_addr, "--admin-addr",
                           trust.credentials() if trust else None)

        yield Replica(
            config=config, identity=identity, telemetry=telemetry, etcd=etcd, store=store,
            stage=stage, registry=registry, publisher=publisher, routed=routed,
            secret_sync=secret_sync,
            fleet_reporter=FleetReporter(store, registry, identity,
                                   on_error=telemetry.fleet_report_failed),
            analysis_reporter=AnalysisReporter(store, window, identity, health=health),
            engine=engine, resolver=resolver, leased=leased,
            leader_work=together(engine.lead, resolver.lead, leased.lead),
            election=LeaderElection(store, identity, ttl=config.leader_ttl),
            revoked=revoked, server_trust=trust, authenticator=authenticator,
            xds_server=xds, admin_server=admin, xds_port=xds_port, admin_port=admin_port,
            watch=watch, state=state, revision=revision, lock=lock,
        )


async def _etcd(config: ServeConfig) -> tuple[EmbeddedEtcd | None, list[str],
                                              EtcdTLS | None, int | None]:
    """The embedded etcd started (without --etcd), or the external one's endpoints; with
    the TLS to reach it and its request limit when known (an external one says its own)."""
    if config.etcd:
        warn_if_open(config.etcd, config.etcd_tls)
        return None, list(config.etcd), config.etcd_tls, None
    etcd = await EmbeddedEtcd.start(config.data_dir)
    log.info("embedded etcd %s (pid %d) under %s, client certificates only",
             etcd.endpoint, etcd.pid, config.data_dir)
    return etcd, [etcd.endpoint], etcd.tls, MAX_REQUEST_BYTES


async def _seal_at_rest(store: Store, vault: Vault, *, actor: str) -> None:
    """What versions before sealing left in etcd: inline Credential values in clear,
    credential records fingerprinted with an unsalted SHA-256. Rewritten (audited),
    then etcd's history before them compacted, so no old revision holds them."""
    sealed = await store.seal_clear_values(actor=actor)
    state, _ = await store.load()
    migrated = await vault.migrate_sources(state)
    if not sealed and not migrated:
        return
    revision = await store.compact_history()
    log.warning("sealed the inline values of Credential(s) %s and re-keyed the "
                "fingerprints of %s; etcd's history before revision %d is compacted "
                "(its WAL keeps them until etcd rotates the files: README, Sealed at rest)",
                ", ".join(sealed) or "(none)", ", ".join(migrated) or "(none)", revision)


def metrics_receiver(window: Window, health: HealthBoard, *, group_of: GroupOfNode,
                     registry: ProxyRegistry, routed: RoutedClusters,
                     revoked: Container[str], on_ignored: Callable[[str], None],
                     ) -> MetricsReceiver:
    """The MetricsService receiver. Pushes steer rollouts, so a stream is authenticated
    as an ADS stream is (`group_of`: the certificate's group under mTLS, refusing revoked
    ones), and its flushes count only while it is a connected proxy of that group
    (`registry`; under mTLS with the same certificate), for the clusters the group routes
    to (`routed`)."""
    # Imported here: envoy-data-plane adds to every CLI command, which imports this module.
    from controlplane.analysis.receiver import MetricsReceiver

    def identify(node_id: str, cluster: str,
                 context: grpc.aio.ServicerContext[Any, Any]) -> Sender:
        group = group_of(base_pb2.Node(id=node_id, cluster=cluster), context)
        return Sender(node_id=node_id, group=group, serial=peer_serial(context))

    def connected(sender: Sender) -> bool:
        return registry.is_connected(sender.group, sender.node_id, peer_serial=sender.serial)

    admission = Admission(connected=connected, clusters_of=routed,
                          revoked=revoked, on_ignored=on_ignored, clock=time.monotonic)
    return MetricsReceiver(window, health=health, identify=identify, admission=admission)


def warn_if_open(endpoints: Sequence[str], tls: EtcdTLS | None) -> None:
    """An etcd reached in plaintext, or without a client certificate, off loopback:
    whoever reaches it reads and writes everything the control plane decides on."""
    if tls is not None and tls.cert is not None:
        return
    for endpoint in endpoints:
        if not is_loopback(parse_endpoint(endpoint)[0].strip("[]")):
            log.warning("etcd %s is reached %s: anyone who can reach it can read and change "
                        "the control plane's state; give --etcd https://... with "
                        "--etcd-ca, --etcd-cert and --etcd-key (SECURITY.md, etcd)",
                        endpoint, "without TLS" if tls is None else
                        "without a client certificate")
            return


def _bind(server: grpc.aio.Server, addr: str, flag: str,
          credentials: grpc.ServerCredentials | None = None) -> int:
    try:
        if credentials is not None:
            port: int = server.add_secure_port(addr, credentials)
        else:
            port = server.add_insecure_port(addr)
    except RuntimeError:  # grpcio raises when the bind fails (older ones returned 0)
        port = 0
    if port == 0:
        raise InvalidInputError([FieldError(
            flag, f"cannot listen on {addr}: address in use (another serve?) or invalid")])
    return port


def _host(addr: str) -> str:
    """The host of HOST:PORT (`[::1]:0` → `::1`)."""
    return addr.rpartition(":")[0].strip("[]")


def is_loopback(host: str) -> bool:
    """Only an address on loopback, or `localhost`; a name could resolve anywhere."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bound_address(addr: str, port: int) -> str:
    """What a server asked to listen on `addr` really bound: its host and `port`."""
    host = addr.rpartition(":")[0] or "[::]"  # gRPC binds every address for ":PORT"
    return f"{host}:{port}"
