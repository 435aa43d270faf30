"""`controlplane bootstrap`: print the Envoy bootstrap YAML for one proxy."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import yaml

from controlplane.translate.bootstrap import bootstrap

DEFAULT_XDS_ADDR = "127.0.0.1:18000"


def split_addr(text: str, flag: str) -> tuple[str, int]:
    """`HOST:PORT` → (host, port).

    Errors:
        InvalidInputError: not HOST:PORT.
    """
    from controlplane.errors import FieldError, InvalidInputError

    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InvalidInputError([FieldError(flag, f"{text!r} is not HOST:PORT")])
    return host.strip("[]"), int(port)


def add_bootstrap_parser(sub: Any) -> None:
    p = sub.add_parser(
        "bootstrap",
        help="print an Envoy bootstrap that connects a proxy to this control plane",
        epilog="example: controlplane bootstrap --node-id edge-1 --group edge --admin-port 9901",
    )
    p.add_argument("--node-id", required=True)
    p.add_argument("--group", required=True, help="proxy group (Envoy node.cluster)")
    kind = p.add_mutually_exclusive_group()
    kind.add_argument("--edge", action="store_true", help="edge proxy defaults")
    kind.add_argument("--sidecar", action="store_true", help="sidecar proxy defaults (default)")
    p.add_argument("--admin-port", type=int, default=9901)
    p.add_argument("--xds-addr", default=DEFAULT_XDS_ADDR, help=f"default {DEFAULT_XDS_ADDR}")
    p.add_argument("--delta", action="store_true", help="use incremental (Delta) xDS")
    p.add_argument("--tls-dir", dest="proxy_tls_dir",
                   help="mTLS to the control plane with ca.crt, proxy.crt and proxy.key "
                        "from this directory (see `controlplane cert issue`); Envoy accepts "
                        "only a server certificate naming spiffe://controlplane/server")
    p.set_defaults(handler=run_bootstrap)


def run_bootstrap(args: argparse.Namespace) -> int:
    host, port = split_addr(args.xds_addr, "--xds-addr")
    config: dict[str, Any] = bootstrap(
        node_id=args.node_id,
        group=args.group,
        xds_host=host,
        xds_port=port,
        admin_port=args.admin_port,
        edge=args.edge,
        delta=args.delta,
        tls_dir=str(Path(args.proxy_tls_dir).resolve()) if args.proxy_tls_dir else None,
    )
    print(yaml.dump(config, Dumper=_QuotingDumper, sort_keys=False).rstrip())
    return 0


class _QuotingDumper(yaml.SafeDumper):
    """Quotes strings that YAML 1.1 readers (Envoy's) take for booleans, like `y` or `on`."""


_YAML11_BOOLS = {"y", "n", "yes", "no", "on", "off", "true", "false", "null", "~"}


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = '"' if value.lower() in _YAML11_BOOLS else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_QuotingDumper.add_representer(str, _str)
