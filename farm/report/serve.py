"""`farm report JOB_URL --serve`: one job's report, images and metadata over HTTP on 127.0.0.1.

The server reads through the job's store, so a report in a private bucket opens in a
browser while the farm's credentials stay in this process. It is read-only and serves an
allowlist of keys; everything else in the job (parts/, job.json, …) is not reachable.
"""

from __future__ import annotations

import socketserver
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote_to_bytes

from farm.storage.store import Store, StoreError

HOST = "127.0.0.1"
INDEX = "/report/index.html"
# What a browser needs to show the report: the report itself, the images it shows and the
# metadata it may load. parts/ and job.json stay private to the farm.
PREFIXES = ("report/", "images/")
KEYS = ("metadata.parquet",)
# Text types carry a charset so that a report's non-ASCII prompts render as written. SVG is
# left out on purpose: as an image/svg+xml document it can run script.
CONTENT_TYPES = {
    "html": "text/html; charset=utf-8",
    "js": "text/javascript; charset=utf-8",
    "mjs": "text/javascript; charset=utf-8",
    "css": "text/css; charset=utf-8",
    "json": "application/json",
    "txt": "text/plain; charset=utf-8",
    "png": "image/png",
    "webp": "image/webp",
    "jpg": "image/jpeg",
    "jpeg": "image/jpeg",
    "gif": "image/gif",
    "parquet": "application/octet-stream",
}
DEFAULT_TYPE = "application/octet-stream"


def content_type(key: str) -> str:
    """The Content-Type for a key, from its extension."""
    _, dot, ext = key.rpartition("/")[2].rpartition(".")
    return CONTENT_TYPES.get(ext.lower(), DEFAULT_TYPE) if dot else DEFAULT_TYPE


def store_key(target: str) -> str | None:
    """The store key a request target names, or None when it is not one we serve.

    Names are literal: the only transformation is percent-decoding, and anything that
    could mean something other than one plain key (climbing, empty or dot segments,
    backslashes, control characters, absolute forms) is refused rather than normalised.
    """
    path = target.split("#", 1)[0].split("?", 1)[0]
    if not path.startswith("/"):
        return None  # absolute-form ("http://…") or garbage
    try:
        key = unquote_to_bytes(path[1:]).decode("utf-8")
    except UnicodeDecodeError:
        return None
    if "\\" in key or any(ord(c) < 0x20 or ord(c) == 0x7F for c in key):
        return None
    if any(part in ("", ".", "..") for part in key.split("/")):
        return None  # also catches a leading "/" (an absolute path) and a trailing one
    if key in KEYS or any(key.startswith(p) for p in PREFIXES):
        return key
    return None


class _HTTPServer(ThreadingHTTPServer):
    # Handler threads are daemons (ThreadingHTTPServer's default), so a slow store read
    # never holds up shutdown.
    def __init__(self, store: Store, port: int):
        self.store = store
        super().__init__((HOST, port), _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind looks up the host's FQDN, a reverse DNS query that can
        # stall for seconds where DNS is unreachable; the name is never used here.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = HOST, self.server_address[1]


class _Handler(BaseHTTPRequestHandler):
    server: _HTTPServer
    server_version = "farm-report"
    sys_version = ""
    timeout = 30  # a client that stops talking gives its thread back
    # The base class's own errors (malformed request lines, oversized headers) as plain text.
    error_content_type = "text/plain; charset=utf-8"
    error_message_format = "%(code)d %(message)s\n"

    def do_GET(self) -> None:
        self._serve(body=True)

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def __getattr__(self, name: str):
        # The base class answers a method with no do_<METHOD> with 501; every method but
        # GET and HEAD, known or not, is a 405 here.
        if name.startswith("do_"):
            return self._not_allowed
        raise AttributeError(name)

    def _not_allowed(self) -> None:
        self._text(HTTPStatus.METHOD_NOT_ALLOWED, "only GET and HEAD", extra={"Allow": "GET, HEAD"})

    def _serve(self, body: bool) -> None:
        if not self._host_ok():
            self._text(HTTPStatus.BAD_REQUEST, "unexpected Host header", body=body)
            return
        path = self.path.split("?", 1)[0]
        if path in ("/", "/report", "/report/"):
            self._text(HTTPStatus.FOUND, INDEX, body=body, extra={"Location": INDEX})
            return
        key = store_key(self.path)
        if key is None:
            self._text(HTTPStatus.NOT_FOUND, "not found", body=body)
            return
        try:
            data = self.server.store.get(key)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            self._text(HTTPStatus.NOT_FOUND, f"{key}: not found", body=body)
            return
        except StoreError as err:
            # StoreError messages are one line with credentials cut out.
            self._text(HTTPStatus.BAD_GATEWAY, str(err), body=body)
            return
        except OSError as err:
            self._text(HTTPStatus.BAD_GATEWAY, f"{key}: cannot read ({err.strerror})", body=body)
            return
        except Exception:
            # Anything else may carry a client library's repr; say only what failed.
            self._text(HTTPStatus.BAD_GATEWAY, f"{key}: the store could not be read", body=body)
            return
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", content_type(key))
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if body:
            self.wfile.write(data)

    def _host_ok(self) -> bool:
        # A page on another site can rebind its own name to 127.0.0.1 and then read this
        # server as same-origin; its requests carry that name in Host, so only the names
        # of this address are served. A request with no Host is not from a browser.
        host = self.headers.get("Host")
        if host is None:
            return True
        port = self.server.server_address[1]
        return host.lower() in (f"{HOST}:{port}", f"localhost:{port}")

    def _text(
        self,
        status: HTTPStatus,
        message: str,
        *,
        body: bool = True,
        extra: dict[str, str] | None = None,
    ) -> None:
        data = (" ".join(message.split()) + "\n").encode("utf-8")
        self.send_response(status)
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if body:
            self.wfile.write(data)

    def end_headers(self) -> None:
        # On every response, errors included: the report changes as a job renders, and a
        # browser must never guess a type other than the one sent.
        self.send_header("Cache-Control", "no-cache")
        self.send_header("X-Content-Type-Options", "nosniff")
        super().end_headers()

    def log_message(self, format: str, *args: object) -> None:
        """Silent: the CLI prints the URL once and per-request lines would bury it."""


class ReportServer:
    """Serves one job's files (report/, images/, metadata.parquet) from its store on
    127.0.0.1, read-only."""

    def __init__(self, store: Store, *, port: int = 0):
        self.store = store
        self._httpd = _HTTPServer(store, port)
        self.server_address: tuple[str, int] = self._httpd.server_address[:2]
        self.port = self.server_address[1]
        self.url = f"http://{HOST}:{self.port}{INDEX}"
        self._lock = threading.Lock()
        self._serving = False
        self._stopped = False

    def serve_forever(self) -> None:
        """Answer requests until shutdown() (or Ctrl-C in the calling thread); then close."""
        with self._lock:
            if self._stopped:
                return
            self._serving = True
        try:
            self._httpd.serve_forever(poll_interval=0.2)
        finally:
            with self._lock:
                self._serving = False
            self._httpd.server_close()

    def shutdown(self) -> None:
        """Stop serve_forever() and close the socket; safe from any thread, and twice."""
        with self._lock:
            self._stopped = True
            serving = self._serving
        # socketserver's shutdown() waits for a serve_forever() that is running; called
        # without one it would wait forever, so only ask a loop that was started.
        if serving:
            self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> ReportServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
