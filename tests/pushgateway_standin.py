"""A Pushgateway stand-in on 127.0.0.1: records every push and parses it with prometheus-client's parser."""
from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client.parser import text_string_to_metric_families


class PushgatewayStandIn:
    """Each push is kept as (method, path, body); `samples(job)` parses the bodies pushed for a job."""

    def __init__(self) -> None:
        self.pushes: list[tuple[str, str, str]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output quiet
                return None

            def _push(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
                outer.pushes.append((self.command, self.path, body))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_POST = do_PUT = _push

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> "PushgatewayStandIn":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def samples(self, job: str) -> dict[str, list]:
        """Every sample pushed for `job`, by metric name, in push order."""
        out: dict[str, list] = {}
        for _, path, body in self.pushes:
            if path == f"/metrics/job/{job}":
                for family in text_string_to_metric_families(body):
                    for sample in family.samples:
                        out.setdefault(sample.name, []).append(sample)
        return out
