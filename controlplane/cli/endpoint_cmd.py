"""`controlplane endpoint register --upstream U --version V --address IP:PORT [--ttl 10s]`:
hold an endpoint in a version for as long as this command runs.

For processes without an etcd client: the admin API holds an etcd lease for this command
(one bidirectional stream), refreshed by a keepalive every TTL/3. SIGTERM or SIGINT ends
the stream, which deregisters at once, and the command exits 0; if it dies without a
word, its connection drops and the server deregisters; if the server dies, the lease
expires within the TTL.
"""

from __future__ import annotations

import argparse
import signal
import threading
from collections.abc import Iterator
from typing import Any

from controlplane.api import admin_pb2
from controlplane.cli.client import Connection
from controlplane.errors import FieldError, InvalidInputError
from controlplane.model.duration import parse_duration

_EPILOG = """The version must say endpointsFrom: {registered: true} (else exit 2): no one can add
endpoints to a version that did not ask for them. Operator role. Prints one line once
registered, then holds the registration until SIGTERM or SIGINT (exit 0). The address
shows in `get endpoints UPSTREAM` as registered:PRINCIPAL. Deregister before stopping
the instance, and no request is lost.

example:
  controlplane endpoint register --upstream payments --version v2 --address 10.0.0.7:8080
"""


def add_parser(sub: Any, client: argparse.ArgumentParser) -> None:
    """Register `endpoint register` on `sub`; `client` carries --server/--token/--tls-dir."""
    p = sub.add_parser("endpoint", help="endpoints held by a running process")
    verbs = p.add_subparsers(dest="endpoint_command", required=True, parser_class=type(p))
    r = verbs.add_parser("register", parents=[client],
                         help="hold an endpoint in a version until SIGTERM/SIGINT",
                         epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    r.add_argument("--upstream", required=True)
    r.add_argument("--version", dest="endpoint_version", metavar="VERSION", required=True)
    r.add_argument("--address", required=True, help="IP:PORT of this instance")
    r.add_argument("--ttl", default="10s",
                   help="the lease: the endpoint goes this long after a crash (default 10s)")
    r.set_defaults(handler=register)


def register(args: argparse.Namespace) -> int:
    try:
        ttl = parse_duration(args.ttl)
    except ValueError as exc:
        raise InvalidInputError([FieldError("--ttl", str(exc))]) from None
    conn = Connection.from_args(args.server, args.token, args.client_tls_dir)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    first = admin_pb2.RegisterEndpointRequest(
        upstream=args.upstream, version=args.endpoint_version, address=args.address,
        ttl_seconds=ttl)

    def requests() -> Iterator[admin_pb2.RegisterEndpointRequest]:
        yield first
        while not stop.wait(max(ttl / 3, 0.1)):
            yield admin_pb2.RegisterEndpointRequest()  # keepalive
        # Returning half-closes the stream: the server revokes the lease and ends it.

    try:
        responses = conn.stub().RegisterEndpoint(requests(), metadata=conn.metadata())
        done = next(responses)
        print(f"registered {done.address} in {done.upstream}/{done.version} as "
              f"registered:{done.principal} (lease {done.ttl_seconds:g}s); SIGTERM or "
              "SIGINT deregisters", flush=True)
        for _ in responses:  # until the server ends the stream, after our half-close
            pass
    finally:
        stop.set()
    return 0
