"""The `controlplane` command: argument parsing and exit codes.

Exit codes: 0 ok; 1 the server refused or the operation failed; 2 bad usage or
invalid input (each invalid field printed with its reason, nothing written).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import grpc

from controlplane.cli import (
    audit_cmd,
    completion,
    endpoint_cmd,
    resources,
    rollout_cmd,
    secrets_cmd,
    token_cmd,
)
from controlplane.cli.bootstrap_cmd import add_bootstrap_parser
from controlplane.cli.client import DEFAULT_SERVER, Connection
from controlplane.cli.output import error
from controlplane.contract import ERROR_CLASS_KEY, FIELD_ERRORS_KEY
from controlplane.errors import (
    ControlPlaneError,
    InvalidInputError,
    StoreUnavailableError,
    error_class,
)

Handler = Callable[[argparse.Namespace], int]

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

_EPILOG = """examples:
  controlplane serve                                  # embedded etcd under ./.controlplane
  controlplane apply -f examples/edge.yaml
  controlplane get upstreams
  controlplane get upstream payments -o yaml
  controlplane get endpoints payments
  controlplane bootstrap --node-id edge-1 --group edge > edge.yaml && envoy -c edge.yaml
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        error(message)
        sys.exit(EXIT_USAGE)


def _client_options() -> _Parser:
    parent = _Parser(add_help=False)
    parent.add_argument(
        "--server", help=f"admin API HOST:PORT (env CONTROLPLANE_SERVER, default {DEFAULT_SERVER})"
    )
    parent.add_argument("--token", help="bearer token (env CONTROLPLANE_TOKEN)")
    parent.add_argument("--tls-dir", dest="client_tls_dir",
                        help="dir with ca.crt, client.crt/.key (env CONTROLPLANE_TLS_DIR); "
                             "the server must hold the control plane's own certificate")
    return parent


if TYPE_CHECKING:
    SubParsers = argparse._SubParsersAction[argparse.ArgumentParser]


def build_parser(serve: Callable[[SubParsers], None]) -> argparse.ArgumentParser:
    """The whole command tree; `serve` adds the server's own subcommands (serve, demo)."""
    parser = _Parser(
        prog="controlplane",
        description="An Envoy control plane for upstream upgrades.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action=_Version, help="print the version and exit")
    sub: SubParsers = parser.add_subparsers(
        dest="command", required=True, parser_class=_Parser
    )
    client = _client_options()
    serve(sub)

    p = sub.add_parser(
        "apply", parents=[client], help="create or update resources from a YAML file",
        epilog="example: controlplane apply -f examples/edge.yaml --dry-run",
    )
    p.add_argument("-f", "--filename", required=True, help="YAML file (several documents), or -")
    p.add_argument("--dry-run", action="store_true", help="validate and show the xDS diff only")
    p.set_defaults(handler=lambda a: resources.apply(_conn(a), a.filename, dry_run=a.dry_run))

    p = sub.add_parser(
        "get", parents=[client], help="list resources or show one",
        epilog="example: controlplane get upstreams payments -o yaml",
    )
    p.add_argument(
        "kind", help="upstreams|routes|listeners|rollouts|proxies|credentials|proxygroups, "
                     "or endpoints UPSTREAM (each version's addresses and their sources)"
    )
    p.add_argument("name", nargs="?")
    p.add_argument("-o", "--output", choices=["yaml", "json"])
    p.set_defaults(handler=lambda a: resources.get(_conn(a), a.kind, a.name, a.output))

    p = sub.add_parser(
        "delete", parents=[client], help="delete one resource",
        epilog="example: controlplane delete route payments",
    )
    p.add_argument("kind")
    p.add_argument("name")
    p.set_defaults(handler=lambda a: resources.delete(_conn(a), a.kind, a.name))

    add_bootstrap_parser(sub)
    rollout_cmd.add_parser(sub, client)
    audit_cmd.add_parser(sub, client)
    token_cmd.add_parser(sub, client)
    secrets_cmd.add_parser(sub, client)
    endpoint_cmd.add_parser(sub, client)
    completion.add_parser(sub, parser)
    _group_examples(parser)
    return parser


class _Version(argparse.Action):
    """`--version`, looked up only when asked: importlib.metadata costs ~70 ms, which every
    command would pay if argparse's own version action formatted it up front."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: object, option_string: str | None = None) -> None:
        from importlib.metadata import PackageNotFoundError, version

        try:
            print(f"controlplane {version('controlplane')}")
        except PackageNotFoundError:  # run from a checkout that was never installed
            print("controlplane (version unknown: not installed; pip install -e .)")
        parser.exit(EXIT_OK)


def _group_examples(parser: argparse.ArgumentParser) -> None:
    """A command group without an epilog (`rollout`, `token`, ...) lists the first
    example of each of its subcommands, so `--help` shows an example everywhere."""
    for _, node in completion.walk(parser):
        children = completion.subcommands(node)
        if not children or (node.epilog and "example" in node.epilog):
            continue
        examples = []
        for child in dict.fromkeys(children.values()):  # aliases map to the same parser
            lines = (child.epilog or "").splitlines()
            found = [line.split("example:", 1)[-1].strip() for line in lines
                     if "controlplane " in line]
            examples += found[:1]
        if examples:
            node.epilog = "examples:\n" + "".join(f"  {e}\n" for e in examples)
            node.formatter_class = argparse.RawDescriptionHelpFormatter


def _conn(args: argparse.Namespace) -> Connection:
    # getattr: an error may come from a command without the client options.
    return Connection.from_args(getattr(args, "server", None), getattr(args, "token", None),
                                getattr(args, "client_tls_dir", None))


def _server(args: argparse.Namespace) -> str:
    return _conn(args).server


def run(argv: Sequence[str], *, serve: Callable[[SubParsers], None]) -> int:
    """Parse `argv`, run the command, map every failure to its exit code."""
    args = build_parser(serve).parse_args(argv)
    handler: Handler = args.handler
    try:
        return handler(args)
    except InvalidInputError as exc:
        for field_error in exc.errors:
            error(str(field_error))
        return EXIT_USAGE
    except ControlPlaneError as exc:
        error(str(exc))
        return EXIT_FAILED
    except grpc.RpcError as exc:
        return _rpc_error(exc, args)
    except KeyboardInterrupt:
        return 130


def _rpc_error(exc: grpc.RpcError, args: argparse.Namespace) -> int:
    code: grpc.StatusCode = exc.code()
    details: str = exc.details() or ""
    refused = _refused_by(exc)
    if refused is not None:
        return _refusal(refused, exc)
    if code == grpc.StatusCode.UNIMPLEMENTED:  # --server is not the admin API?
        from controlplane.cli.diagnose import unimplemented

        cause = unimplemented(_conn(args), details)
        if isinstance(cause, InvalidInputError):
            for field_error in cause.errors:
                error(str(field_error))
            return EXIT_USAGE
        error(str(cause))
        return EXIT_FAILED
    if code == grpc.StatusCode.UNAVAILABLE and ("HTTP/2" in details or "http1" in details):
        error(f"--server: {_server(args)} is not a gRPC server (an HTTP port, such as serve "
              f"--metrics-addr?), so not the admin API (default {DEFAULT_SERVER}; "
              "serve --admin-addr)")
        return EXIT_USAGE
    if code == grpc.StatusCode.UNAVAILABLE and _conn(args).tls_dir:
        from controlplane.cli.diagnose import server_identity

        impostor = server_identity(_conn(args))
        if impostor is not None:
            error(str(impostor))
            return EXIT_FAILED
    if code == grpc.StatusCode.UNAVAILABLE:
        error(f"cannot reach the control plane at {_server(args)}: {details} (is "
              "`controlplane serve` running? set --server or CONTROLPLANE_SERVER)")
        return EXIT_FAILED
    return _refusal(ControlPlaneError, exc)


def _refused_by(exc: grpc.RpcError) -> type[ControlPlaneError] | None:
    """The error class the admin API named in its trailers: it answered and refused.
    None when the failure has no class (the call never reached our server's handler)."""
    for key, value in exc.trailing_metadata() or ():
        if key == ERROR_CLASS_KEY:
            return error_class(value) or ControlPlaneError
    if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:  # a server that names no class
        return InvalidInputError
    return None


def _refusal(refused: type[ControlPlaneError], exc: grpc.RpcError) -> int:
    """The message and exit code of a call the server refused, by the error's type."""
    details: str = exc.details() or ""
    if issubclass(refused, InvalidInputError):
        trailers = exc.trailing_metadata() or ()
        fields = [v for k, v in trailers if k == FIELD_ERRORS_KEY]
        for line in fields or [details]:
            error(line)
        return EXIT_USAGE
    if issubclass(refused, StoreUnavailableError):
        error(details)  # the server answered: its etcd is what is down
        return EXIT_FAILED
    code: grpc.StatusCode = exc.code()
    error(f"{code.name.lower().replace('_', ' ')}: {details}")
    return EXIT_FAILED
