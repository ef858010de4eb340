"""A Pushgateway stand-in on 127.0.0.1: records every push and parses it with prometheus-client's parser.

With `user` and `password` it answers 401 to any push without that HTTP basic auth, as a Pushgateway started
with a web config's `basic_auth_users` does, and counts the refusals in `refused`.
"""

from __future__ import annotations

import base64
from http.server import BaseHTTPRequestHandler

from http_standin import LocalHTTPStandIn
from prometheus_client.parser import text_string_to_metric_families


class PushgatewayStandIn(LocalHTTPStandIn):
    """Each accepted push is kept as (method, path, body); `samples(job)` parses the bodies pushed for a job."""

    def __init__(self, user: str | None = None, password: str | None = None) -> None:
        self.pushes: list[tuple[str, str, str]] = []
        self.refused = 0
        expected = None
        if user is not None or password is not None:
            expected = "Basic " + base64.b64encode(f"{user or ''}:{password or ''}".encode()).decode()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output quiet
                return None

            def _push(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
                if expected is not None and self.headers.get("Authorization") != expected:
                    outer.refused += 1
                    self.send_response(401)
                    self.send_header("WWW-Authenticate", 'Basic realm="pushgateway"')
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
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
