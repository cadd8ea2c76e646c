"""read_bounded over real HTTP: the cap counts decompressed bytes, the deadline is wall
clock, and robots.txt's truncation keeps the first bytes."""

from __future__ import annotations

import gzip
import time
from http.server import BaseHTTPRequestHandler

import httpx
import pytest

from pipeline.fetch_limits import BodyCut, read_bounded
from tests.conftest import serve_handler

BOMB = gzip.compress(b"a" * 5_000_000)  # about 5 KB on the wire, 5 MB inflated


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802
        self.send_response(200)
        if self.path == "/bomb":
            self.send_header("Content-Encoding", "gzip")
            self.send_header("Content-Length", str(len(BOMB)))
            self.end_headers()
            self.wfile.write(BOMB)
        elif self.path == "/drip":
            self.end_headers()
            for _ in range(30):  # a byte every 0.1 s: no single read ever times out
                self.wfile.write(b"x")
                self.wfile.flush()
                time.sleep(0.1)
        else:
            self.send_header("Content-Length", "11")
            self.end_headers()
            self.wfile.write(b"hello world")

    def log_message(self, format: str, *args: object) -> None:
        pass


def read(url: str, max_bytes: int, seconds: float, truncate: bool = False) -> bytes:
    with httpx.Client(timeout=5) as client, client.stream("GET", url) as response:
        return read_bounded(response, max_bytes, time.monotonic() + seconds, truncate)


def test_caps_deadline_and_truncation_on_real_answers():
    with serve_handler(Handler) as url:
        assert read(f"{url}/plain", 100, 5) == b"hello world"
        assert BOMB.__len__() < 10_000
        with pytest.raises(BodyCut) as cut:
            read(f"{url}/bomb", 1_000_000, 5)
        assert cut.value.kind == "too_large"
        assert read(f"{url}/bomb", 1_000, 5, truncate=True) == b"a" * 1_000
        started = time.monotonic()
        with pytest.raises(BodyCut) as cut:
            read(f"{url}/drip", 1_000, 0.5)
        assert cut.value.kind == "timeout"
        assert time.monotonic() - started < 2.5  # cut near the deadline, not after 3 s
