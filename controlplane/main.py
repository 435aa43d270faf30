"""Entry point of the `controlplane` command: the CLI, with the server's commands added."""

from __future__ import annotations

import sys

from controlplane.cli.main import run
from controlplane.server import add_serve_parser


def main() -> None:
    sys.exit(run(sys.argv[1:], serve=add_serve_parser))


if __name__ == "__main__":
    main()
