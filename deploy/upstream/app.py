"""A sample upstream for the compose demo: says which version it is; can be made to fail."""

from __future__ import annotations

import json
import os
import random
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

VERSION = os.environ.get("VERSION", "v1")
FAIL_RATE = float(os.environ.get("FAIL_RATE", "0"))


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        status = 200 if self.path == "/healthz" or random.random() >= FAIL_RATE else 500
        body = json.dumps({"version": VERSION, "path": self.path}).encode()
        head = (f"HTTP/1.1 {status} {'OK' if status == 200 else 'Internal Server Error'}\r\n"
                f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n")
        self.wfile.write(head.encode() + body)  # one write: no Nagle + delayed-ACK stall

    def log_message(self, format: str, *args: object) -> None:
        pass


if __name__ == "__main__":
    ThreadingHTTPServer(("0.0.0.0", 8080), Handler).serve_forever()
