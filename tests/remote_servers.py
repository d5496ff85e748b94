"""Servers on 127.0.0.1 for the remote-reading tests and benchmarks, started and stopped by them.

`RangeHTTPServer` serves a directory over HTTP with `Range` support (or without it, or refusing
with 403/404/500), counting requests and body bytes; `latency` adds a delay per request, as a
far-away object store has. As a hostile server it also serves directory listings of its own
making (`listings`: the HTML index fsspec's HTTP backend parses, with whatever links a test
wants, `..` and absolute ones included) and answers any other missing path with `fallback`
bytes, so that a client following a link out of the listed directory gets something to write.
`moto_s3` runs moto's S3 API server in a thread.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator


class RangeHTTPServer:
    def __init__(self, root: Path, latency: float = 0.0):
        self.root = Path(root)
        self.latency = latency
        self.mode = "range"  # "range", "no-range", "403", "404", "500"
        # URL path ("/savedmodel/") -> the links of its HTML index page, served as they are.
        self.listings: dict[str, list[str]] = {}
        # The body of any missing file outside the listed directories (None: 404 as usual).
        self.fallback: bytes | None = None
        self.requests = 0
        self.bytes_served = 0
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet test output
                pass

            def do_HEAD(self) -> None:
                self._answer(body=False)

            def do_GET(self) -> None:
                self._answer(body=True)

            def _answer(self, body: bool) -> None:
                if server.latency:
                    time.sleep(server.latency)
                with server._lock:
                    server.requests += 1
                if server.mode in ("403", "404", "500"):
                    self.send_response(int(server.mode))
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                url_path = self.path.split("?")[0]
                listing = server.listings.get(url_path) or server.listings.get(url_path + "/")
                if listing is not None:
                    self._send_listing(listing, body)
                    return
                path = server.root / url_path.lstrip("/")
                if not path.is_file() and server.fallback is not None and not any(
                        url_path.startswith(directory) for directory in server.listings):
                    self._send_bytes(server.fallback, body)
                    return
                if not path.is_file():
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                size = path.stat().st_size
                start, end = 0, size
                ranged = server.mode == "range" and self.headers.get("Range", "").startswith("bytes=")
                if ranged:
                    first, _, last = self.headers["Range"][6:].partition("-")
                    start = int(first) if first else max(size - int(last), 0)
                    end = min(int(last) + 1, size) if first and last else size
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{end - 1}/{size}")
                else:
                    self.send_response(200)
                if server.mode == "range":
                    self.send_header("Accept-Ranges", "bytes")
                self.send_header("Content-Length", str(end - start))
                self.send_header("Content-Type", "application/octet-stream")
                self.end_headers()
                if not body:
                    return
                with open(path, "rb") as handle:
                    handle.seek(start)
                    remaining = end - start
                    try:
                        while remaining:
                            chunk = handle.read(min(remaining, 1 << 20))
                            self.wfile.write(chunk)
                            with server._lock:
                                server.bytes_served += len(chunk)
                            remaining -= len(chunk)
                    except (BrokenPipeError, ConnectionResetError):
                        pass  # the client read what it needed and closed

            def _send_listing(self, links: list[str], body: bool) -> None:
                page = "".join(f'<a href="{link}">{link}</a>\n' for link in links)
                self._send_bytes(f"<html><body>\n{page}</body></html>\n".encode(), body, "text/html")

            def _send_bytes(self, data: bytes, body: bool, content_type: str = "application/octet-stream") -> None:
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Content-Type", content_type)
                self.end_headers()
                if body:
                    self.wfile.write(data)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def reset_counts(self) -> None:
        with self._lock:
            self.requests = 0
            self.bytes_served = 0

    def __enter__(self) -> "RangeHTTPServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


S3_ENVIRONMENT = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                  "AWS_DEFAULT_REGION": "us-east-1"}


@contextmanager
def moto_s3() -> Iterator[str]:
    """A moto S3 server on 127.0.0.1; yields its endpoint URL."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


def make_bucket(endpoint: str, bucket: str) -> None:
    import boto3

    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing",
                 aws_secret_access_key="testing").create_bucket(Bucket=bucket)


def s3_filesystem(endpoint: str):
    import s3fs

    return s3fs.S3FileSystem(key="testing", secret="testing", endpoint_url=endpoint,
                             client_kwargs={"region_name": "us-east-1"}, skip_instance_cache=True)


def s3_environment(endpoint: str) -> dict[str, str]:
    return {**os.environ, **S3_ENVIRONMENT, "AWS_ENDPOINT_URL": endpoint}
