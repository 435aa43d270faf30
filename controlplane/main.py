"""Entry point of the `controlplane` command: the CLI, with the server's commands added."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from controlplane.cli.main import run
from controlplane.demo import add_demo_parser
from controlplane.server import add_serve_parser

if TYPE_CHECKING:
    import argparse


def _server_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    add_serve_parser(sub)
    add_demo_parser(sub)


def main() -> None:
    sys.exit(run(sys.argv[1:], serve=_server_commands))


if __name__ == "__main__":
    main()
