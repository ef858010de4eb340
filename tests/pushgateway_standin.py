"""A Pushgateway stand-in on 127.0.0.1: records every push and parses it with prometheus-client's parser."""

from __future__ import annotations

from http.server import BaseHTTPRequestHandler

from http_standin import LocalHTTPStandIn
from prometheus_client.parser import text_string_to_metric_families


class PushgatewayStandIn(LocalHTTPStandIn):
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

        super().__init__(Handler)

    def samples(self, job: str) -> dict[str, list]:
        """Every sample pushed for `job`, by metric name, in push order."""
        out: dict[str, list] = {}
        for _, path, body in self.pushes:
            if path == f"/metrics/job/{job}":
                for family in text_string_to_metric_families(body):
                    for sample in family.samples:
                        out.setdefault(sample.name, []).append(sample)
        return out
