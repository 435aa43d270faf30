"""Wiring: store watch → publish (translate → cache) → xDS server, plus the admin API.

`controlplane serve` lands here. Nothing below this module knows about the others'
construction; every collaborator is built here and passed in.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import ipaddress
import logging
import os
import signal
import socket
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Container, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
from envoy.config.core.v3 import base_pb2

from controlplane.admin import AdminService
from controlplane.admin.auth import CertificateAuthenticator, TokenAuthenticator
from controlplane.analysis import Window
from controlplane.analysis.admission import Admission, RoutedClusters, Sender
from controlplane.analysis.health import HealthBoard
from controlplane.analysis.prometheus import PrometheusAnalysis
from controlplane.api import admin_pb2, admin_pb2_grpc
from controlplane.errors import (
    ControlPlaneError,
    FieldError,
    InvalidInputError,
    StoreUnavailableError,
)
from controlplane.fleet import EtcdFleet, FleetReporter, secrets_progress
from controlplane.logformat import FORMATS
from controlplane.logformat import configure as configure_logging
from controlplane.publish import Publisher, secret_material, xds_diff
from controlplane.rollout.analysis_reports import AnalysisReporter, ByProvider, EtcdAnalysis
from controlplane.rollout.engine import RolloutEngine
from controlplane.stage import RenderStage
from controlplane.store import AuditRecord, EmbeddedEtcd, EtcdTLS, Store
from controlplane.store.audit_anchor import ANCHOR_FILE, AUDIT_KEY_PURPOSE, AuditAnchor
from controlplane.store.datadir import DataDirLock
from controlplane.store.embedded import MAX_REQUEST_BYTES
from controlplane.store.kv import parse_endpoint
from controlplane.store.leader import LeaderElection
from controlplane.store.revocations import REFRESH_S as REVOKE_REFRESH_S
from controlplane.store.revocations import RevocationStore, RevokedSerials
from controlplane.store.tokens import TOKEN_KEY_PURPOSE, TokenStore
from controlplane.translate.trace import trace_nack
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
    from controlplane.model import DesiredState
    from controlplane.secrets import Material, Vault
    from controlplane.secrets.server_trust import ServerTrust
    from controlplane.secrets.sync import SecretSync
    from controlplane.secrets.vault import AuditNote
    from controlplane.telemetry import Telemetry

log = logging.getLogger("controlplane")

DEFAULT_XDS_ADDR = "127.0.0.1:18000"
DEFAULT_ADMIN_ADDR = "127.0.0.1:18001"
DEFAULT_METRICS_ADDR = "127.0.0.1:18002"
DEFAULT_DATA_DIR = ".controlplane"
STOP_STEP_S = 3.0
"""At shutdown, how long a clean-up step that needs etcd (they run at once) may take."""


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


class ControlPlane:
    """One running replica. Use `async with ControlPlane.running(config) as cp:`."""

    def __init__(self, config: ServeConfig) -> None:
        # Imported here: prometheus_client adds ~0.1 s to every CLI command.
        from controlplane.telemetry import Telemetry

        self.config = config
        self.telemetry: Telemetry = Telemetry()  # its own registry: several per process work
        self.cache = SnapshotCache()
        self.registry = ProxyRegistry()
        # One render of each group's snapshot per state, served by the publisher and
        # compared with the fleet's ACKs by the rollout engine.
        self.stage = RenderStage()
        self.publisher = Publisher(self.cache, stage=self.stage,
                                   on_published=self.telemetry.published,
                                   on_forgotten=self.telemetry.forget_groups)
        self.etcd: EmbeddedEtcd | None = None
        self.store: Store | None = None
        self.xds_port = 0
        self.admin_port = 0
        self.metrics_port = 0
        self.identity = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.engine: RolloutEngine | None = None
        self.reporter: FleetReporter | None = None
        self.window = Window()
        self.health = HealthBoard()
        self.routed = RoutedClusters()
        """Group → the clusters its routes reach: whose pushed samples count."""
        self.metrics_reporter: AnalysisReporter | None = None
        self.election: LeaderElection | None = None
        self.secret_sync: SecretSync | None = None
        self.server_trust: ServerTrust | None = None
        self.revoked = RevokedSerials()
        self._vault_ca_pem = ""
        self._tasks: list[asyncio.Task[None]] = []
        self._servers: list[grpc.aio.Server] = []
        self.lock = DataDirLock(config.data_dir)

    @classmethod
    @contextlib.asynccontextmanager
    async def running(cls, config: ServeConfig) -> AsyncIterator[ControlPlane]:
        cp = cls(config)
        try:
            await cp.start()
            yield cp
        finally:
            await cp.stop()

    async def start(self) -> None:
        # First: a second serve on this data dir (its etcd, its sealing key) stops here.
        self.lock.acquire()
        endpoints = list(self.config.etcd)
        etcd_tls = self.config.etcd_tls
        max_request_bytes = None  # an external etcd's limit is its own: it says so
        if not endpoints:
            self.etcd = await EmbeddedEtcd.start(self.config.data_dir)
            endpoints, etcd_tls = [self.etcd.endpoint], self.etcd.tls
            max_request_bytes = MAX_REQUEST_BYTES
            log.info("embedded etcd %s (pid %d) under %s, client certificates only",
                     self.etcd.endpoint, self.etcd.pid, self.config.data_dir)
        else:
            _warn_if_open(endpoints, etcd_tls)
        # Secrets: sealed CA, group certificates and credential values in etcd (inline
        # Credential values too: the store seals them). Imported here: cryptography adds
        # ~90 ms to every CLI command, which imports this module.
        from controlplane.secrets import SealingKey, Vault
        from controlplane.secrets.files import CredentialFiles
        from controlplane.secrets.sync import SecretSync
        from controlplane.secrets.vault import SYSTEM_ACTOR

        sealing = SealingKey.load(tls_dir=self.config.tls_dir, data_dir=self.config.data_dir)
        # SDS versions reach etcd (fleet reports): keyed, so they reveal nothing.
        self.stage.attach_secret_key(sealing.derive(b"sds-versions"))
        self.store = await Store.connect(endpoints, max_request_bytes=max_request_bytes,
                                         sealer=sealing, tls=etcd_tls)
        self.store.kv.on_error = self.telemetry.etcd_error
        # The audit chain's HMAC key: derived from the sealing key, so etcd never holds
        # it; the anchor (outside etcd) is what shows a truncated or wiped log.
        await self.store.key_audit(sealing.derive(AUDIT_KEY_PURPOSE),
                                   AuditAnchor(self.config.data_dir / ANCHOR_FILE))
        # Token records carry an HMAC under this key: one put into etcd behind the
        # API's back mints nothing. Records from before are signed once, here.
        self.store.token_key = sealing.derive(TOKEN_KEY_PURPOSE)
        await TokenStore(self.store).sign_unsigned(actor=SYSTEM_ACTOR)
        # /proc: /proc/self/environ holds CONTROLPLANE_SECRETS_KEY when it is set.
        forbidden = [("the data dir", self.config.data_dir), ("procfs", Path("/proc"))]
        if self.config.tls_dir is not None:
            forbidden.append(("the TLS dir", self.config.tls_dir))
        vault = Vault(self.store.kv, self.store.keys, sealing, self._commit_secrets,
                      cert_lifetime_s=self.config.cert_lifetime_s,
                      files=CredentialFiles.of(self.config.credentials_dirs,
                                               forbidden=forbidden))
        await self._seal_at_rest(vault, actor=SYSTEM_ACTOR)
        watch = self.store.watch_state()
        state, revision = await anext(watch)
        self.telemetry.observe_state(state)
        self.routed.update(state)
        # The sync issues and rotates secrets and hands the material to the publisher,
        # primed before the first publish so TLS groups are whole from their first snapshot.
        # A CA rotation keeps the previous CA trusted until the fleet ACKed the new certs.
        self.secret_sync = SecretSync(vault, self._on_material,
                                      fleet_acked=self._fleet_acked_secrets)
        await self.secret_sync.prime(state)
        self._tasks.append(asyncio.create_task(self.secret_sync.run(), name="secrets"))
        self.publisher.update(state)
        self.publisher.publish_now()  # the first full state, before any proxy is answered
        self._tasks.append(asyncio.create_task(self._follow(watch), name="store-watch"))
        self.reporter = FleetReporter(self.store, self.registry, self.identity,
                                      on_error=self.telemetry.fleet_report_failed)
        self._tasks.append(asyncio.create_task(self.reporter.run(), name="fleet-report"))
        # Analysis: proxies push stats here; each replica reports its counts to etcd and
        # the leader judges canaries on the fleet-wide sums.
        self.metrics_reporter = AnalysisReporter(self.store, self.window, self.identity,
                                                 health=self.health)
        self._tasks.append(asyncio.create_task(self.metrics_reporter.run(),
                                               name="metrics-report"))
        analysis = EtcdAnalysis(self.store)
        providers = ByProvider({"envoy": analysis, "prometheus": PrometheusAnalysis()})
        self.engine = RolloutEngine(self.store, EtcdFleet(self.store, self.stage),
                                    identity=self.identity, analysis=providers,
                                    health=analysis)
        self.election = LeaderElection(self.store, self.identity,
                                       ttl=self.config.leader_ttl)
        self._tasks.append(asyncio.create_task(self.election.run(self.engine.lead),
                                               name="rollout-leader"))

        xds = grpc.aio.server(options=_GRPC_OPTIONS)
        # With --tls-dir a proxy's group is the one its client certificate names.
        group_of = (refusing_revoked(peer_certificate_group, self.revoked)
                    if self.config.tls_dir else node_cluster)
        AggregatedDiscoveryServer(
            self.cache, self.registry, group_of=group_of, observer=self.telemetry,
            max_streams_per_peer=self.config.max_streams_per_peer).add_to_server(xds)
        # Envoy's stats sink: it reaches us over the xDS cluster.
        metrics_receiver(self.window, self.health, group_of=group_of, registry=self.registry,
                         routed=self.routed, revoked=self.revoked,
                         on_ignored=self.telemetry.ignored_metrics).add_to_server(xds)
        self.authenticator: TokenAuthenticator | CertificateAuthenticator = (
            TokenAuthenticator(self.store))
        if self.config.tls_dir is not None:
            # Both ports require client certificates from our CA; on the admin port a
            # user certificate (or a bearer token on top) says who calls.
            self.server_trust = await _server_trust(
                self.config.tls_dir, vault, self._vault_ca_pem,
                hosts=[_host(self.config.xds_addr), _host(self.config.admin_addr)])
            self.authenticator = CertificateAuthenticator(self.authenticator, self.revoked)
            self.revoked.listen(self._end_revoked)
            await self.revoked.refresh(RevocationStore(self.store))
            self._tasks.append(asyncio.create_task(self._follow_revocations(),
                                                   name="revocations"))
        trust = self.server_trust
        self.xds_port = _bind(xds, self.config.xds_addr, "--xds-addr",
                              trust.credentials() if trust else None)
        if trust is None and not _is_loopback(_host(self.config.xds_addr)):
            log.warning(
                "xDS on %s in plaintext, not on loopback: anyone who reaches this port can "
                "claim any node and group, read that group's config and secrets, and push "
                "metrics that steer rollouts; use --tls-dir (mTLS) off loopback",
                _address(self.config.xds_addr, self.xds_port))
        admin = grpc.aio.server(options=_GRPC_OPTIONS)
        service = AdminService(self.store, proxies=self._proxies, xds_diff=xds_diff,
                               authenticator=self.authenticator)
        service.attach_vault(vault)  # cert rotate / credential rotate
        if trust is not None:
            service.attach_server_ca(trust.anchor_pem.decode())  # into issued bundles
        admin_pb2_grpc.add_AdminServicer_to_server(service, admin)
        self.admin_port = _bind(admin, self.config.admin_addr, "--admin-addr",
                                trust.credentials() if trust else None)
        for server in (xds, admin):
            await server.start()
            self._servers.append(server)
        if self.config.metrics_addr:
            try:
                self.metrics_port = self.telemetry.serve(self.config.metrics_addr)
            except (OSError, ValueError) as exc:
                raise InvalidInputError([FieldError(
                    "--metrics-addr", f"cannot listen on {self.config.metrics_addr}: {exc}")]
                ) from exc
        bound = {"xds": _bound(self.config.xds_addr, self.xds_port),
                 "admin": _bound(self.config.admin_addr, self.admin_port)}
        if self.config.metrics_addr:
            bound["metrics"] = _bound(self.config.metrics_addr, self.metrics_port)
        self.lock.describe(**bound)  # for the error a second serve on this data dir prints
        log.info("state at etcd revision %d: %d resources; groups %s",
                 revision, len(state.resources()), ", ".join(state.groups()) or "(none)")

    async def _seal_at_rest(self, vault: Vault, *, actor: str) -> None:
        """What versions before sealing left in etcd: inline Credential values in clear,
        credential records fingerprinted with an unsalted SHA-256. Rewritten (audited),
        then etcd's history before them compacted, so no old revision holds them."""
        assert self.store is not None
        sealed = await self.store.seal_clear_values(actor=actor)
        state, _ = await self.store.load()
        migrated = await vault.migrate_sources(state)
        if not sealed and not migrated:
            return
        revision = await self.store.compact_history()
        log.warning("sealed the inline values of Credential(s) %s and re-keyed the "
                    "fingerprints of %s; etcd's history before revision %d is compacted "
                    "(its WAL keeps them until etcd rotates the files: README, Sealed at rest)",
                    ", ".join(sealed) or "(none)", ", ".join(migrated) or "(none)", revision)

    async def _follow(self, watch: AsyncIterator[tuple[object, int]]) -> None:
        async for state, revision in watch:
            log.debug("etcd revision %d", revision)
            self.publisher.update(state)  # type: ignore[arg-type]
            self.telemetry.observe_state(state)  # type: ignore[arg-type]
            self.routed.update(state)  # type: ignore[arg-type]
            if self.secret_sync is not None:
                self.secret_sync.update(state)  # type: ignore[arg-type]
            if self.engine is not None:
                self.engine.poke()

    async def _follow_revocations(self) -> None:
        """Other replicas' `cert revoke`s, within `REVOKE_REFRESH_S`."""
        assert self.store is not None
        revocations = RevocationStore(self.store)
        while True:
            await asyncio.sleep(REVOKE_REFRESH_S)
            try:
                await self.revoked.refresh(revocations)
            except StoreUnavailableError as exc:
                log.warning("revoked certificates: %s", exc)

    def _end_revoked(self, serials: frozenset[str]) -> None:
        ended = self.registry.end_streams(lambda h: h.peer_serial in serials,
                                          "the stream's client certificate was revoked")
        if ended:
            log.warning("ended %d xDS streams whose client certificate was revoked (%s)",
                        ended, ", ".join(sorted(serials)))

    def _on_material(self, material: Material) -> None:
        """New secrets (certificates, credentials, the CAs trusted): to the proxies, and
        the CAs to the ports' TLS (after `cert rotate --ca` clients come from the new CA)."""
        self.publisher.update_secrets(material)
        self._vault_ca_pem = material.ca_pem
        if self.server_trust is not None:
            self.server_trust.update(material.ca_pem)

    async def _fleet_acked_secrets(self, state: DesiredState, material: Material) -> bool:
        """Whether every connected proxy (every replica's report) ACKed the secrets
        `material` gives its group: what a CA rotation waits for before retiring a CA."""
        assert self.store is not None
        acked, total = secrets_progress(state, secret_material(material),
                                        await EtcdFleet(self.store).reports(), self.stage)
        log.debug("CA rotation: %d of %d proxies ACKed the new certificates", acked, total)
        return acked == total

    async def _commit_secrets(
        self, puts: Mapping[bytes, bytes], expect: Mapping[bytes, int],
        deletes: Sequence[bytes], notes: Sequence[AuditNote],
    ) -> bool:
        """The vault's writes: one compare-and-swap transaction with its audit entries."""
        assert self.store is not None
        records = [AuditRecord(actor=n.actor, action=n.action, kind=n.kind, name=n.name,
                               reason=n.reason, after=n.after) for n in notes]
        revision = await self.store.commit(puts=puts, expect=expect, deletes=deletes,
                                           audit=records)
        return revision is not None

    def _proxies(self) -> list[admin_pb2.Proxy]:
        return [
            admin_pb2.Proxy(
                node_id=p.node_id,
                group=p.group,
                protocol=p.protocol,
                peer=p.peer,
                connected_at=p.connected_at,
                types=[
                    admin_pb2.TypeState(
                        type_url=t.type_url,
                        acked_version=t.acked_version or "",
                        sent_version=t.sent_version or "",
                        last_nack=trace_nack(t.last_nack or ""),
                        last_nack_version=t.last_nack_version or "",
                    )
                    for t in p.types
                ],
            )
            for p in self.registry.list()
        ]

    async def stop(self) -> None:
        """Stop serving and clean up. The clean-up in etcd (this replica's reports, the
        leader's resignation) runs at once and is bounded: etcd may be gone, and then
        what this replica left there goes when its leases expire."""
        self.telemetry.close()
        for server in self._servers:
            await server.stop(grace=0.5)
        for task in self._tasks:
            task.cancel()  # the reporters stop writing; the leader resigns as it ends
        steps = [self._end_tasks()]
        if self.reporter is not None:
            steps.append(_bounded(self.reporter.close(), "delete this replica's fleet report"))
        if self.metrics_reporter is not None:
            steps.append(_bounded(self.metrics_reporter.close(),
                                  "delete this replica's metrics report"))
        await asyncio.gather(*steps)
        if self.store is not None:
            await _bounded(self.store.close(), "close the etcd connection")
        if self.etcd is not None:
            await self.etcd.stop()
        self.lock.release()
        for task in self._tasks:  # one that failed before it was cancelled: say so
            if task.done() and not task.cancelled() and (exc := task.exception()) is not None:
                raise exc

    async def _end_tasks(self) -> None:
        """Wait for the cancelled tasks, `STOP_STEP_S` at most (the leader's resignation
        is bounded too: see LeaderElection)."""
        if not self._tasks:
            return
        _, pending = await asyncio.wait(self._tasks, timeout=STOP_STEP_S)
        for task in pending:
            log.warning("stopping: task %s did not end within %gs; leaving it",
                        task.get_name(), STOP_STEP_S)


async def _bounded(step: Awaitable[None], what: str) -> None:
    """Run a step of stopping that needs etcd for `STOP_STEP_S` at most; log if it fails."""
    try:
        async with asyncio.timeout(STOP_STEP_S):
            await step
    except TimeoutError:
        log.warning("stopping: could not %s within %gs (etcd unreachable?)", what, STOP_STEP_S)
    except StoreUnavailableError as exc:
        log.warning("stopping: could not %s: %s", what, exc)


# Memory per idle proxy (benchmarks/memory.py, grpcio 1.85): ~54 KB, ~36 KB of it gRPC
# C-core: ~18.5 KB per connection (an 8 KB slice held for the pending read) and ~17.5 KB per
# call (an 8.7 KB call arena). No channel arg lowers that beyond noise (±0.5 KB):
# http2.lookahead_bytes, http2.bdp_probe=0, http2.hpack_table_size.*, the
# experimental.tcp_*read_chunk_size args (reads still go into 8 KB slices),
# http2.write_buffer_size, enable_channelz=0 (-0.6 KB per connection). grpc.minimal_stack
# (-1.5 KB per call) drops the message-size filter, so the receive limit below would no
# longer be enforced: not used.
_GRPC_OPTIONS = [
    # gRPC sets SO_REUSEPORT by default: a second serve on the same port would bind too and
    # the kernel would split connections between the two, silently. Refuse instead.
    ("grpc.so_reuseport", 0),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.max_send_message_length", 256 * 1024 * 1024),
]


def _bound(addr: str, port: int) -> str:
    """`addr` with the port it got (`127.0.0.1:0` → `127.0.0.1:41234`)."""
    return f"{addr.rpartition(':')[0]}:{port}"


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


def _host(addr: str) -> str:
    """The host of HOST:PORT (`[::1]:0` → `::1`)."""
    return addr.rpartition(":")[0].strip("[]")


def _is_loopback(host: str) -> bool:
    """Only an address on loopback, or `localhost`; a name could resolve anywhere."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _address(addr: str, port: int) -> str:
    """What a server asked to listen on `addr` really bound: its host and `port`."""
    host = addr.rpartition(":")[0] or "[::]"  # gRPC binds every address for ":PORT"
    return f"{host}:{port}"


async def _server_trust(tls_dir: Path, vault: Vault, vault_ca_pem: str, *,
                        hosts: list[str]) -> ServerTrust:
    """mTLS for the xDS and admin ports: ca.crt, server.crt and server.key from `tls_dir`,
    issued by our CA (and written there) when absent, naming the server's SPIFFE ID and
    `hosts` (those of --xds-addr and --admin-addr). Clients must present a certificate
    from it or from a CA the vault trusts (`vault_ca_pem`; see `ServerTrust`). Also
    writes client.crt/client.key, an `admin` user's certificate, so that
    `controlplane --tls-dir DIR ...` works on this host from the start (like kubeadm's
    admin.conf): keep the directory as private as the CA."""
    from controlplane.secrets.server_trust import ServerTrust, pem_bundle, server_certificate
    from controlplane.spiffe import SERVER_ID, user_id

    paths = {name: tls_dir / name for name in ("ca.crt", "server.crt", "server.key")}
    present = all(p.exists() for p in paths.values())
    found = (server_certificate(paths["server.crt"].read_bytes(), vault_ca_pem)
             if present else "pinned")
    if found == "foreign":
        log.warning("%s names no %s and our CA did not sign it: Envoy bootstraps and the "
                    "CLI refuse it; add that URI SAN, or remove server.crt and server.key "
                    "for serve to issue one", paths["server.crt"], SERVER_ID)
    # One we issued before identities were pinned: replace it (never someone else's).
    stale = found == "unpinned"
    if not present or stale:
        ca_pem, issued = await vault.server_identity(hosts=hosts, actor="controlplane")
        tls_dir.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - once, at start-up
        # Clients holding the old ca.crt keep verifying the server after a re-issue.
        paths["ca.crt"].write_bytes(
            pem_bundle(paths["ca.crt"].read_bytes(), ca_pem) if stale else ca_pem.encode())
        _write_pair(tls_dir, "server", issued.cert_pem, issued.key_pem.get_secret_value())
        log.info("issued the server certificate (%s) into %s%s", SERVER_ID, tls_dir,
                 ": the one there named no server identity" if stale else "")
    if not (tls_dir / "client.crt").exists():
        _, user = await vault.identity("admin", actor="controlplane",
                                       uri=user_id("admin", "admin"))
        _write_pair(tls_dir, "client", user.cert_pem, user.key_pem.get_secret_value())
        log.info("issued an admin user certificate into %s (client.crt, client.key)", tls_dir)
    return ServerTrust(paths["server.key"].read_bytes(), paths["server.crt"].read_bytes(),
                       paths["ca.crt"].read_bytes(), vault_ca_pem)


def _write_pair(directory: Path, name: str, cert_pem: str, key_pem: bytes) -> None:
    (directory / f"{name}.crt").write_text(cert_pem)
    key = directory / f"{name}.key"
    key.touch(mode=0o600)
    key.write_bytes(key_pem)


def add_serve_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "serve",
        help="run the control plane (embedded etcd unless --etcd)",
        epilog="example: controlplane serve --data-dir /var/lib/controlplane",
    )
    p.add_argument("--etcd", help="etcd endpoints URL[,URL...]; default: embedded etcd "
                   "(TLS with client certificates under the data dir)")
    p.add_argument("--etcd-ca", metavar="FILE",
                   help="with --etcd: the CA (PEM) that signed etcd's serving certificate; "
                        "implies TLS")
    p.add_argument("--etcd-cert", metavar="FILE",
                   help="with --etcd: this replica's client certificate (PEM) for etcd's "
                        "--client-cert-auth; with --etcd-key")
    p.add_argument("--etcd-key", metavar="FILE", help="with --etcd: its private key (PEM)")
    p.add_argument("--data-dir", default=DEFAULT_DATA_DIR, help="embedded etcd data")
    p.add_argument("--xds-addr", default=DEFAULT_XDS_ADDR)
    p.add_argument("--admin-addr", default=DEFAULT_ADMIN_ADDR)
    p.add_argument("--metrics-addr", default=DEFAULT_METRICS_ADDR)
    p.add_argument("--tls-dir", help="CA and server certificates: xDS and admin require mTLS")
    p.add_argument("--credentials-dir", action="append", default=[], metavar="DIR",
                   help="a directory Credentials' valueFrom.file may name (repeatable or "
                        "DIR,DIR); default none: valueFrom.file is refused. Never the data "
                        "dir or the TLS dir")
    p.add_argument("--max-streams-per-peer", type=_positive, default=MAX_STREAMS_PER_PEER,
                   help="xDS streams one client (its certificate, or its address without "
                        "TLS; plaintext loopback is not capped) may hold open at once "
                        f"(default {MAX_STREAMS_PER_PEER})")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument("--log-format", default="text", choices=list(FORMATS),
                   help="json: one JSON object per line (ts, level, logger, msg, fields)")
    p.set_defaults(handler=serve_command)


# The cyclic GC's young generation, for a process serving thousands of streams. A config
# change keeps ~15 GC-tracked objects per stream alive at once (coroutine frames, futures:
# not garbage, they die by reference count a moment later); with CPython's default
# threshold of 700 they set off ~20 young collections per change at 1,000 proxies, which
# promote them, and so a full collection of the whole heap (~70 ms) every few changes.
# Measured with benchmarks/convergence.py (README, "GC"): CPU per change -13% at 1,000
# proxies and -30% at 5,000, p99 -25% and -35%. Real cyclic garbage waits a little longer
# (at most this many objects).
GC_YOUNG_THRESHOLD = 50_000


def _positive(text: str) -> int:
    """argparse type: an integer of at least 1 (argparse exits 2 naming the flag)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return value


def _etcd_tls(args: argparse.Namespace, endpoints: Sequence[str]) -> EtcdTLS | None:
    """--etcd-ca/--etcd-cert/--etcd-key checked: with --etcd only, cert and key together,
    each a readable PEM file. None: plaintext (or https:// with the system's CAs).

    Errors:
        InvalidInputError: every flag that is wrong, and why.
    """
    given = {"--etcd-ca": args.etcd_ca, "--etcd-cert": args.etcd_cert,
             "--etcd-key": args.etcd_key}
    if not any(given.values()):
        return None
    errors: list[FieldError] = []
    if not endpoints:
        errors.append(FieldError(next(f for f, v in given.items() if v),
                                 "only with --etcd: the embedded etcd makes its own "
                                 "certificates under the data dir"))
    if bool(args.etcd_cert) != bool(args.etcd_key):
        missing = "--etcd-key" if args.etcd_cert else "--etcd-cert"
        errors.append(FieldError(missing, "give --etcd-cert and --etcd-key together"))
    for flag, value in given.items():
        if value:
            try:
                head = Path(value).read_bytes()[:4096]
            except OSError as exc:
                errors.append(FieldError(flag, f"cannot read {value}: {exc.strerror}"))
                continue
            if b"-----BEGIN " not in head:
                errors.append(FieldError(flag, f"{value} is not a PEM file"))
    if errors:
        raise InvalidInputError(errors)
    return EtcdTLS(*(Path(v) if v else None for v in given.values()))


def _warn_if_open(endpoints: Sequence[str], tls: EtcdTLS | None) -> None:
    """An etcd reached in plaintext, or without a client certificate, off loopback:
    whoever reaches it reads and writes everything the control plane decides on."""
    if tls is not None and tls.cert is not None:
        return
    for endpoint in endpoints:
        if not _is_loopback(parse_endpoint(endpoint)[0].strip("[]")):
            log.warning("etcd %s is reached %s: anyone who can reach it can read and change "
                        "the control plane's state; give --etcd https://... with "
                        "--etcd-ca, --etcd-cert and --etcd-key (README, External etcd)",
                        endpoint, "without TLS" if tls is None else
                        "without a client certificate")
            return


def serve_command(args: argparse.Namespace) -> int:
    configure_logging(args.log_level, args.log_format)
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])
    endpoints = tuple(u for u in (args.etcd or "").split(",") if u)
    try:
        etcd_tls = _etcd_tls(args, endpoints)
    except InvalidInputError as exc:
        log.error("%s", exc)
        return 2
    config = ServeConfig(
        etcd=endpoints,
        etcd_tls=etcd_tls,
        data_dir=Path(args.data_dir),
        xds_addr=args.xds_addr,
        admin_addr=args.admin_addr,
        metrics_addr=args.metrics_addr or None,
        tls_dir=Path(args.tls_dir) if args.tls_dir else None,
        credentials_dirs=tuple(Path(d) for arg in args.credentials_dir
                               for d in arg.split(",") if d),
        max_streams_per_peer=args.max_streams_per_peer,
    )
    return asyncio.run(_serve(config, json_logs=args.log_format == "json"))


async def _serve(config: ServeConfig, *, json_logs: bool = False) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        async with ControlPlane.running(config) as cp:
            ready = (f"serving xDS on {_address(config.xds_addr, cp.xds_port)} and the "
                     f"admin API on {_address(config.admin_addr, cp.admin_port)} "
                     f"({await cp.authenticator.mode()})")
            if json_logs:  # every line of stderr stays JSON
                log.info("%s", ready, extra={"xds_port": cp.xds_port,
                                             "admin_port": cp.admin_port,
                                             "metrics_port": cp.metrics_port})
            else:  # whatever --log-level says
                print(ready, file=sys.stderr, flush=True)
            await stop.wait()
            log.info("stopping")
    except ControlPlaneError as exc:
        log.error("%s", exc)
        return 2 if isinstance(exc, InvalidInputError) else 1
    return 0

