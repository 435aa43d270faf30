"""A stand-in for Prometheus' HTTP query API (`GET /api/v1/query`), for tests of the
Prometheus analysis provider: no Prometheus server can be installed here, so this
answers each query with what the test's `answer(query)` returns and records the
queries it was asked. It speaks the real API's JSON (vector, scalar, error)."""

from __future__ import annotations

import json
import threading
import urllib.parse
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tests.support.ports import free_port

Answer = Callable[[str], "float | str | None"]
"""A query → its one sample (None: an empty vector; a str: an error of that text)."""


class PromApi:
    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.queries: list[str] = []
        self.port = free_port()
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                url = urllib.parse.urlsplit(self.path)
                query = urllib.parse.parse_qs(url.query).get("query", [""])[0]
                api.queries.append(query)
                got = api.answer(query)
                if isinstance(got, str):
                    code, doc = 400, {"status": "error", "errorType": "bad_data", "error": got}
                else:
                    result = [] if got is None else [{"metric": {}, "value": [0, str(got)]}]
                    code, doc = 200, {"status": "success",
                                      "data": {"resultType": "vector", "result": result}}
                body = json.dumps(doc).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> PromApi:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)
