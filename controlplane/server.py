"""`controlplane serve`: its flags, and running one replica that wiring.py built.

    ControlPlane.running(config)  build (wiring.assemble), start every component, and
                                  on exit stop them: servers, then tasks, then this
                                  replica's reports in etcd (bounded: etcd may be gone),
                                  then what building started
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Sequence
from pathlib import Path

from controlplane.discovery.lookup import parse_servers
from controlplane.errors import (
    ControlPlaneError,
    FieldError,
    InvalidInputError,
    StoreUnavailableError,
)
from controlplane.logformat import FORMATS
from controlplane.logformat import configure as configure_logging
from controlplane.model.duration import parse_duration
from controlplane.store import EmbeddedEtcd, EtcdTLS
from controlplane.store.revocations import REFRESH_S as REVOKE_REFRESH_S
from controlplane.store.revocations import RevocationStore
from controlplane.wiring import (
    DEFAULT_ADMIN_ADDR,
    DEFAULT_DATA_DIR,
    DEFAULT_METRICS_ADDR,
    DEFAULT_XDS_ADDR,
    Replica,
    ServeConfig,
    assemble,
    bound_address,
)
from controlplane.xds.peers import MAX_STREAMS_PER_PEER

log = logging.getLogger("controlplane")

STOP_STEP_S = 3.0
"""At shutdown, how long a clean-up step that needs etcd (they run at once) may take."""

__all__ = ["ControlPlane", "ServeConfig", "add_serve_parser"]


class ControlPlane:
    """One running replica: `async with ControlPlane.running(config) as cp:`."""

    def __init__(self, replica: Replica) -> None:
        self.replica = replica
        self.metrics_port = 0
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def etcd(self) -> EmbeddedEtcd | None:
        return self.replica.etcd

    @property
    def xds_port(self) -> int:
        return self.replica.xds_port

    @property
    def admin_port(self) -> int:
        return self.replica.admin_port

    async def auth_mode(self) -> str:
        """How admin callers are authenticated, for the ready line."""
        return await self.replica.authenticator.mode()

    @classmethod
    @contextlib.asynccontextmanager
    async def running(cls, config: ServeConfig) -> AsyncIterator[ControlPlane]:
        async with assemble(config) as replica:
            cp = cls(replica)
            try:
                await cp.start()
                yield cp
            finally:
                await cp.stop()

    async def start(self) -> None:
        r = self.replica
        self._spawn(self._follow(), "store-watch")
        self._spawn(r.secret_sync.run(), "secrets")
        self._spawn(r.fleet_reporter.run(), "fleet-report")
        self._spawn(r.analysis_reporter.run(), "analysis-report")
        self._spawn(r.election.run(r.leader_work), "rollout-leader")
        if r.server_trust is not None:
            r.revoked.listen(self._end_revoked)
            self._spawn(self._follow_revocations(), "revocations")
        for server in (r.xds_server, r.admin_server):
            await server.start()
        config = r.config
        if config.metrics_addr:
            try:
                self.metrics_port = r.telemetry.serve(config.metrics_addr)
            except (OSError, ValueError) as exc:
                raise InvalidInputError([FieldError(
                    "--metrics-addr", f"cannot listen on {config.metrics_addr}: {exc}")]
                ) from exc
        bound = {"xds": _bound(config.xds_addr, r.xds_port),
                 "admin": _bound(config.admin_addr, r.admin_port)}
        if config.metrics_addr:
            bound["metrics"] = _bound(config.metrics_addr, self.metrics_port)
        r.lock.describe(**bound)  # for the error a second serve on this data dir prints
        log.info("state at etcd revision %d: %d resources; groups %s", r.revision,
                 len(r.state.resources()), ", ".join(r.state.groups()) or "(none)")

    def _spawn(self, work: Awaitable[None], name: str) -> None:
        self._tasks.append(asyncio.ensure_future(work))
        self._tasks[-1].set_name(name)

    async def _follow(self) -> None:
        r = self.replica
        async for state, revision in r.watch:
            log.debug("etcd revision %d", revision)
            r.publisher.update(state)
            r.telemetry.observe_state(state)
            r.routed.update(state)
            r.secret_sync.update(state)
            r.engine.poke()
            r.resolver.update(state)
            r.leased.update(state)

    async def _follow_revocations(self) -> None:
        """Other replicas' `cert revoke`s, within `REVOKE_REFRESH_S`."""
        revocations = RevocationStore(self.replica.store)
        while True:
            await asyncio.sleep(REVOKE_REFRESH_S)
            try:
                await self.replica.revoked.refresh(revocations)
            except StoreUnavailableError as exc:
                log.warning("revoked certificates: %s", exc)

    def _end_revoked(self, serials: frozenset[str]) -> None:
        ended = self.replica.registry.end_streams(
            lambda h: h.peer_serial in serials, "the stream's client certificate was revoked")
        if ended:
            log.warning("ended %d xDS streams whose client certificate was revoked (%s)",
                        ended, ", ".join(sorted(serials)))

    async def stop(self) -> None:
        """Stop serving and the tasks. The clean-up in etcd (this replica's reports, the
        leader's resignation) runs at once and is bounded: etcd may be gone, and then
        what this replica left there goes when its leases expire."""
        r = self.replica
        for server in (r.xds_server, r.admin_server):
            await server.stop(grace=0.5)
        for task in self._tasks:
            task.cancel()  # the reporters stop writing; the leader resigns as it ends
        await asyncio.gather(
            self._end_tasks(),
            _bounded(r.fleet_reporter.close(), "delete this replica's fleet report"),
            _bounded(r.analysis_reporter.close(), "delete this replica's analysis report"))
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


def _bound(addr: str, port: int) -> str:
    """`addr` with the port it got (`127.0.0.1:0` → `127.0.0.1:41234`)."""
    return f"{addr.rpartition(':')[0]}:{port}"


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
    p.add_argument("--leader-ttl", type=_lease_seconds, default=10, metavar="DURATION",
                   help="the rollout leader's etcd lease (whole seconds, e.g. 10s, 1m; "
                        "default 10s): a dead leader is replaced within about 1.2x this")
    p.add_argument("--max-streams-per-peer", type=_positive, default=MAX_STREAMS_PER_PEER,
                   help="xDS streams one client (its certificate, or its address without "
                        "TLS; plaintext loopback is not capped) may hold open at once "
                        f"(default {MAX_STREAMS_PER_PEER})")
    p.add_argument("--dns-server", metavar="HOST:PORT[,HOST:PORT]",
                   help="DNS servers that resolve endpoint names (IP:PORT, tried in turn); "
                        "default: the system's (/etc/resolv.conf, /etc/hosts first)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument("--log-format", default="text", choices=list(FORMATS),
                   help="json: one JSON object per line (ts, level, logger, msg, fields)")
    p.set_defaults(handler=serve_command)


# The cyclic GC's young generation, for a process serving thousands of streams. A config
# change keeps ~15 GC-tracked objects per stream alive at once (coroutine frames, futures:
# not garbage, they die by reference count a moment later); with CPython's default
# threshold of 700 they set off ~20 young collections per change at 1,000 proxies, which
# promote them, and so a full collection of the whole heap every few changes.
# benchmarks/gc_threshold.py prints both thresholds side by side (benchmarks/README.md,
# gc_threshold.py). Real cyclic garbage waits a little longer (at most this many objects).
GC_YOUNG_THRESHOLD = 50_000


def _lease_seconds(text: str) -> int:
    """argparse type: a duration of whole seconds, 1 s to 1 h (etcd leases are seconds)."""
    try:
        seconds = parse_duration(text)
    except ValueError:
        seconds = 0.0
    if not 1 <= seconds <= 3600 or seconds != int(seconds):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a whole number of seconds from 1s to 1h (e.g. 10s)")
    return int(seconds)


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


def serve_command(args: argparse.Namespace) -> int:
    configure_logging(args.log_level, args.log_format)
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])
    endpoints = tuple(u for u in (args.etcd or "").split(",") if u)
    try:
        etcd_tls = _etcd_tls(args, endpoints)
        dns_servers = parse_servers(args.dns_server) if args.dns_server is not None else ()
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
        leader_ttl=args.leader_ttl,
        dns_servers=dns_servers,
    )
    return asyncio.run(_serve(config, json_logs=args.log_format == "json"))


async def _serve(config: ServeConfig, *, json_logs: bool = False) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        async with ControlPlane.running(config) as cp:
            ready = (f"serving xDS on {bound_address(config.xds_addr, cp.xds_port)} and the "
                     f"admin API on {bound_address(config.admin_addr, cp.admin_port)} "
                     f"({await cp.auth_mode()})")
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

