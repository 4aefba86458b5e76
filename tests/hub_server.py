"""A local HTTP server for the named-weights tests (127.0.0.1, a thread): serves files with Range support, and on
request an HTML page, a dropped connection, an error status or a slow answer. Counts what it was asked."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Route:
    """What the server does for one file name. ``body``: the bytes; ``status``: an error status instead;
    ``drop_after``: close the connection after that many bytes (once: then serve normally); ``delay``: seconds
    before answering; ``chunk_delay``: seconds between 64 KiB chunks; ``ranges``: honour Range headers."""

    body: bytes = b""
    status: int = 200
    content_type: str = "application/octet-stream"
    drop_after: int | None = None
    delay: float = 0.0
    chunk_delay: float = 0.0
    ranges: bool = True


@dataclass
class Log:
    requests: list[tuple[str, str | None]] = field(default_factory=list)  # (path, Range header)
    full_bodies: dict[str, int] = field(default_factory=dict)  # path -> complete 200 answers sent

    def count(self, name: str) -> int:
        return sum(1 for p, _ in self.requests if p == "/" + name)


class _Handler(BaseHTTPRequestHandler):
    routes: dict[str, Route]
    log: Log
    lock: threading.Lock

    def log_message(self, *args) -> None:  # quiet
        pass

    def do_GET(self) -> None:  # noqa: N802
        rng = self.headers.get("Range")
        with self.lock:
            self.log.requests.append((self.path, rng))
        route = self.routes.get(self.path.lstrip("/"))
        if route is None:
            self.send_error(404)
            return
        time.sleep(route.delay)
        if route.status != 200:
            self.send_response(route.status)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body, start, code = route.body, 0, 200
        if rng and route.ranges and rng.startswith("bytes="):
            start = int(rng[6:].split("-")[0])
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            code = 206
        self.send_response(code)
        self.send_header("Content-Type", route.content_type)
        self.send_header("Content-Length", str(len(body) - start))
        if code == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        self.end_headers()
        part = body[start:]
        if route.drop_after is not None:
            cut, route.drop_after = route.drop_after, None
            self.wfile.write(part[:cut])
            self.wfile.flush()
            self.close_connection = True
            return
        for i in range(0, len(part), 1 << 16):
            self.wfile.write(part[i:i + (1 << 16)])
            time.sleep(route.chunk_delay)
        if code == 200:
            with self.lock:
                self.log.full_bodies[self.path] = self.log.full_bodies.get(self.path, 0) + 1


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:  # a client that hung up (timeout tests): expected
        pass


class WeightsServer:
    """``with WeightsServer({"file.pth": Route(body=...)}) as srv``: ``srv.url`` is the AVSEG_MIRROR value."""

    def __init__(self, routes: dict[str, Route]) -> None:
        self.routes, self.log = routes, Log()
        handler = type("H", (_Handler,), {"routes": routes, "log": self.log, "lock": threading.Lock()})
        self.httpd = _Server(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> "WeightsServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
