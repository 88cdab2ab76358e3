"""Network helpers for the tests that start real servers: a free loopback port, a proxy that breaks a
request on purpose, and a webhook that keeps what is posted to it."""

import http.client
import json
import os
import queue
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def mlflow_server(root: Path):
    """`mlflow server` on a free loopback port, its store a SQLite file under ``root``; yields its URL."""
    port = free_port()
    log = root / "mlflow-server.log"
    with open(log, "w") as out:
        server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                                   "--workers", "1", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}"],
                                  cwd=root, env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
                                  stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 180
    while True:
        try:
            urllib.request.urlopen(f"{url}/health", timeout=2)
            break
        except OSError:
            assert server.poll() is None and time.time() < deadline, log.read_text()[-2000:]
            time.sleep(0.5)
    try:
        yield url
    finally:
        os.killpg(server.pid, 15)
        server.wait(30)


class CuttingProxy:
    """A loopback HTTP proxy in front of the server at ``upstream`` (a port). ``cut(path_part, before)`` arms
    it: the next request whose path contains ``path_part`` reaches the server, then ``before()`` runs (e.g.
    killing the server), and the client gets the answer's status line and headers with half of its body
    before the connection closes: a request interrupted mid-answer, after the server acted on it. While the
    server is down, requests get their connection closed without an answer."""

    def __init__(self, upstream: int):
        self.upstream, self.port = upstream, free_port()
        self.armed: list[tuple[str, Callable[[], None]]] = []
        self.cut_paths: list[str] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cut(self, path_part: str, before: Callable[[], None] = lambda: None) -> None:
        with self._lock:
            self.armed.append((path_part, before))

    def _take(self, path: str) -> Callable[[], None] | None:
        with self._lock:
            for i, (part, before) in enumerate(self.armed):
                if part in path:
                    del self.armed[i]
                    self.cut_paths.append(path)
                    return before
        return None

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handler(self):
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _forward(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                upstream = http.client.HTTPConnection("127.0.0.1", proxy.upstream, timeout=120)
                try:
                    upstream.request(self.command, self.path, body, headers)
                    answer = upstream.getresponse()
                    data = answer.read()
                except OSError:  # the server is down: close without an answer
                    self.close_connection = True
                    return
                finally:
                    upstream.close()
                before = proxy._take(self.path)
                if before is not None:
                    before()
                self.send_response(answer.status, answer.reason)
                for k, v in answer.getheaders():
                    if k.lower() not in ("content-length", "transfer-encoding", "connection", "date", "server"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if before is None:
                    self.wfile.write(data)
                    return
                self.wfile.write(data[: len(data) // 2])
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _forward

        return Handler


class Webhook:
    """A local webhook: an HTTP server on a free loopback port that answers 204 to every POST and keeps the
    JSON bodies posted to it, in order, with the path each was posted to."""

    def __init__(self):
        self.port, self.posts = free_port(), queue.Queue()
        received = self.posts

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                received.put((self.path, self.headers.get("Content-Type"), json.loads(body)))
                self.send_response(204)
                self.end_headers()

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/nights"

    def next(self, timeout: float) -> tuple[str, str, dict]:
        """The next post (path, content type, body); fails after ``timeout`` seconds without one."""
        try:
            return self.posts.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"nothing was posted to {self.url} in {timeout:.0f} s") from None

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
