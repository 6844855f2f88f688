"""A stand-in for a pathway service, used to test the process handling of `pathway_cli.stack`.

It reads the same settings as a real service (`<NAME>_HTTP__PORT`, ...) and answers
/healthz, /readyz (200 when the broker and store accept connections), /metrics and /docs.
Run it with `python -m tests.integration.fake_service`.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType
from urllib.parse import urlparse


def _setting(suffix: str) -> str:
    for key, value in os.environ.items():
        if key.endswith(suffix) and not key.startswith("PATHWAY_"):
            return value
    raise SystemExit(f"missing setting *{suffix}")


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def main() -> None:
    port = int(_setting("_HTTP__PORT"))
    host = _setting("_HTTP__HOST")
    broker_host, broker_port = _setting("_KAFKA__BOOTSTRAP_SERVERS").split(",")[0].split(":")
    mongo = urlparse(_setting("_MONGO__URL"))

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/readyz":
                ok = _reachable(broker_host, int(broker_port)) and _reachable(
                    mongo.hostname or "127.0.0.1", mongo.port or 27017
                )
                self._answer(200 if ok else 503, b"ready" if ok else b"not ready")
            elif self.path in ("/healthz", "/metrics", "/docs"):
                self._answer(200, b"ok")
            else:
                self._answer(404, b"not found")

        def _answer(self, code: int, body: bytes) -> None:
            self.send_response(code)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            return

    server = ThreadingHTTPServer((host, port), Handler)

    def on_term(signum: int, frame: FrameType | None) -> None:
        print("fake service stopping", flush=True)
        sys.exit(0)

    signal.signal(signal.SIGTERM, on_term)
    print(f"fake service listening on {host}:{port}", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
