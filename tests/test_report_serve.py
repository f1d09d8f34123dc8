"""`farm report --serve`: a real server over a real store, fetched over HTTP."""

from __future__ import annotations

import http.client
import io
import socket
import threading
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

from farm.report.serve import ReportServer, content_type, store_key
from farm.storage import open_store
from farm.storage.store import LocalStore

SECRET = b"not-for-the-browser"
INDEX_HTML = "<!doctype html><title>sweep — ünïcode</title>".encode()
INDEX_JS = b"window.REPORT = {items: 3};\n"


def png_bytes() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (4, 4), (200, 30, 90)).save(buf, format="PNG")
    return buf.getvalue()


def job_files() -> dict[str, bytes]:
    return {
        "report/index.html": INDEX_HTML,
        "report/data/index.js": INDEX_JS,
        "images/a.png": png_bytes(),
        "metadata.parquet": b"PAR1 any bytes PAR1",
        "job.json": b'{"status": "done"}',
        "parts/x.parquet": b"PAR1 part PAR1",
    }


class Running:
    """A ReportServer serving in a thread, with raw HTTP helpers."""

    def __init__(self, server: ReportServer):
        self.server = server
        self.thread = threading.Thread(target=server.serve_forever, daemon=True)
        self.thread.start()

    def request(self, method: str, path: str, headers: dict | None = None):
        """(status, headers, body) for a request target sent exactly as written."""
        conn = http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=10)
        try:
            conn.request(method, path, headers=headers or {})
            resp = conn.getresponse()
            return resp.status, dict(resp.getheaders()), resp.read()
        finally:
            conn.close()

    def stop(self) -> None:
        self.server.shutdown()
        self.thread.join(timeout=10)


@pytest.fixture
def job(tmp_path) -> Path:
    # The secret sits beside the job folder, where a climbing path would land.
    (tmp_path / "secret").write_bytes(SECRET)
    (tmp_path / "job.json").write_bytes(SECRET)
    folder = tmp_path / "out" / "job1"
    for key, data in job_files().items():
        path = folder / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    (tmp_path / "out" / "secret").write_bytes(SECRET)
    return folder


@pytest.fixture
def served(job):
    running = Running(ReportServer(LocalStore(job)))
    yield running
    running.stop()


def test_serves_report_images_and_metadata(served):
    files = job_files()
    expected = {
        "/report/index.html": "text/html; charset=utf-8",
        "/report/data/index.js": "text/javascript; charset=utf-8",
        "/images/a.png": "image/png",
        "/metadata.parquet": "application/octet-stream",
    }
    for path, ctype in expected.items():
        with urllib.request.urlopen(f"http://127.0.0.1:{served.server.port}{path}") as resp:
            body = resp.read()
            assert resp.status == 200
            assert resp.headers["Content-Type"] == ctype
            assert resp.headers["Content-Length"] == str(len(body))
            assert resp.headers["Cache-Control"] == "no-cache"
            assert resp.headers["X-Content-Type-Options"] == "nosniff"
        assert body == files[path[1:]]
    Image.open(io.BytesIO(files["images/a.png"])).verify()


def test_serves_every_file_of_a_chunked_gallery(tmp_path):
    """A gallery big enough to load one prompt at a time: its entry pages, detail files
    and index are all served, as scripts, byte for byte."""
    from farm.report.gallery import Chunking, gallery_files

    axes = [{"name": "prompt", "kind": "prompt", "values": ["a", "b"]},
            {"name": "neon", "kind": "strength", "values": ["0", "1"]}]  # fmt: skip
    entries = ({"id": f"{p}{n}", "axes": {"prompt": p, "neon": str(n % 2)}}
               for p in "ab" for n in range(30))  # fmt: skip
    chunking = Chunking(big_from=10, key_limit=30, page=8)
    files = gallery_files(entries, title="t", axes=axes, detail_chunk=16, chunking=chunking)
    assert {"data/entries-0007.js", "data/detail-0003.js"} <= set(files)
    store = LocalStore(tmp_path)
    for name, data in files.items():
        store.put(f"report/{name}", data)
    running = Running(ReportServer(store))
    try:
        for name, data in files.items():
            status, headers, body = running.request("GET", f"/report/{name}")
            assert (status, body) == (200, data), name
            assert headers["Content-Type"] == content_type(name)
            if name.endswith(".js"):
                assert headers["Content-Type"] == "text/javascript; charset=utf-8"
    finally:
        running.stop()


def test_url_opens_the_index(served):
    assert served.server.url == f"http://127.0.0.1:{served.server.port}/report/index.html"
    with urllib.request.urlopen(served.server.url) as resp:
        assert resp.read() == INDEX_HTML


def test_root_redirects_to_the_index(served):
    for path in ("/", "/report", "/report/"):
        status, headers, _ = served.request("GET", path)
        assert status == 302
        assert headers["Location"] == "/report/index.html"
    # urllib follows it to the index.
    with urllib.request.urlopen(f"http://127.0.0.1:{served.server.port}/") as resp:
        assert resp.read() == INDEX_HTML


def test_head_sends_headers_only(served):
    status, headers, body = served.request("HEAD", "/images/a.png")
    assert status == 200
    assert body == b""
    assert headers["Content-Type"] == "image/png"
    assert headers["Content-Length"] == str(len(png_bytes()))
    status, _, body = served.request("HEAD", "/report/missing.html")
    assert (status, body) == (404, b"")


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS", "BREW"])
def test_other_methods_are_not_allowed(served, method):
    status, headers, _ = served.request(method, "/report/index.html")
    assert status == 405
    assert headers["Allow"] == "GET, HEAD"
    assert (served.server.store.root / "report" / "index.html").read_bytes() == INDEX_HTML


@pytest.mark.parametrize(
    "path",
    [
        "/../secret",
        "/../../secret",
        "/report/../../secret",
        "/report/%2e%2e/%2e%2e/secret",
        "/report/%2E%2E/%2E%2E/job.json",
        "/report/..%2f..%2fsecret",
        "/report/..%2fjob.json",
        "/report/..%5c..%5csecret",
        "/report\\..\\..\\secret",
        "/report//x",
        "//secret",
        "/%2fetc/passwd",
        "/report/./index.html",
        "/report/index.html%00.png",
        "/report/%0aindex.html",
        "/report/%ff.html",
        "/report/*",
        "/images/*.png",
        "/parts/x.parquet",
        "/job.json",
        "/secret",
        "/images/",
        "http://127.0.0.1/job.json",
    ],
)
def test_nothing_outside_the_allowlist_comes_back(served, path):
    status, _, body = served.request("GET", path)
    assert 400 <= status < 500
    assert SECRET not in body
    for key, data in job_files().items():
        if not key.startswith(("report/", "images/")):
            assert data not in body


def test_missing_key_is_404(served):
    status, headers, body = served.request("GET", "/images/nope.png")
    assert status == 404
    assert headers["Content-Type"].startswith("text/plain")
    assert b"not found" in body
    assert served.request("GET", "/images")[0] == 404  # a folder is not a key


def test_foreign_host_header_is_refused(served):
    # DNS rebinding: a page on evil.example that resolves to 127.0.0.1.
    status, _, body = served.request("GET", "/images/a.png", {"Host": "evil.example"})
    assert status == 400
    assert body != png_bytes()
    status, _, _ = served.request(
        "GET", "/images/a.png", {"Host": f"localhost:{served.server.port}"}
    )
    assert status == 200


def test_binds_loopback_only(job):
    server = ReportServer(LocalStore(job))
    try:
        assert server.server_address[0] == "127.0.0.1"
        assert server.url.startswith("http://127.0.0.1:")
    finally:
        server.shutdown()


def test_shutdown_stops_it_and_closes_the_port(job):
    running = Running(ReportServer(LocalStore(job)))
    port = running.server.port
    assert running.request("GET", "/report/index.html")[0] == 200
    running.server.shutdown()
    running.thread.join(timeout=10)
    assert not running.thread.is_alive()
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port)):
        pass
    running.server.shutdown()  # a second shutdown is harmless


def test_shutdown_before_serving_returns(job):
    server = ReportServer(LocalStore(job))
    done = threading.Event()
    threading.Thread(target=lambda: (server.shutdown(), done.set()), daemon=True).start()
    assert done.wait(timeout=10)
    server.serve_forever()  # returns at once: it was stopped


def test_store_keys_and_types():
    assert store_key("/report/index.html?v=2") == "report/index.html"
    assert store_key("/images/a%20b.png") == "images/a b.png"
    assert store_key("/images/a+b.png") == "images/a+b.png"
    assert store_key("/metadata.parquet") == "metadata.parquet"
    assert store_key("/metadata.parquet/x") is None
    assert store_key("/reportx/index.html") is None
    assert content_type("report/sheets/a.JPG") == "image/jpeg"
    assert content_type("images/a.webp") == "image/webp"
    assert content_type("report/logo.svg") == "application/octet-stream"
    assert content_type("report/README") == "application/octet-stream"


def test_serves_a_private_bucket(s3):
    files = job_files()
    store = open_store(s3.url("serve-test/job"))
    for key, data in files.items():
        store.put(key, data)
    running = Running(ReportServer(store))
    try:
        responses = [
            running.request("GET", "/images/a.png"),
            running.request("GET", "/report/index.html"),
            running.request("GET", "/report/data/index.js"),
            running.request("GET", "/images/missing.png"),
            running.request("GET", "/job.json"),
            running.request("HEAD", "/metadata.parquet"),
        ]
    finally:
        running.stop()
    assert responses[0][0] == 200 and responses[0][2] == files["images/a.png"]
    assert responses[0][1]["Content-Type"] == "image/png"
    assert responses[1][0] == 200 and responses[1][2] == INDEX_HTML
    assert responses[2][0] == 200 and responses[2][2] == INDEX_JS
    assert responses[3][0] == 404
    assert responses[4][0] == 404
    assert responses[5][0] == 200
    assert responses[5][1]["Content-Length"] == str(len(files["metadata.parquet"]))
    for _, headers, body in responses:
        text = body + repr(headers).encode()
        assert s3.access_key.encode() not in text
        assert s3.secret.encode() not in text


def test_store_errors_are_502_without_credentials(s3):
    # A bucket that does not exist: the store refuses, and the browser gets one line.
    store = open_store(f"s3://farm-missing-{s3.bucket}/job")
    running = Running(ReportServer(store))
    try:
        status, headers, body = running.request("GET", "/report/index.html")
    finally:
        running.stop()
    assert status == 502
    assert body.count(b"\n") == 1
    assert b"Traceback" not in body and b"botocore" not in body
    text = body + repr(headers).encode()
    assert s3.access_key.encode() not in text
    assert s3.secret.encode() not in text
