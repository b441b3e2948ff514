"""URL inputs against a local HTTP server: success, 404, byte cap, timeout, bad schemes."""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest
from PIL import Image

import ferroclip
from ferroclip.errors import ImageDecodeError, ImageFetchError
from ferroclip.fetch import fetch_url, is_url

from ._images import smooth_rgb


def _png() -> bytes:
    import io

    buf = io.BytesIO()
    Image.fromarray(smooth_rgb(np.random.default_rng(3), 50, 40)).save(buf, "PNG")
    return buf.getvalue()


PNG = _png()


class Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):  # keep test output clean
        pass

    def do_GET(self):  # noqa: N802
        if self.path == "/img.png":
            self._send(200, PNG)
        elif self.path == "/big":
            self._send(200, b"\0" * 100_000)
        elif self.path == "/big-unsized":  # no Content-Length: the cap is enforced while streaming
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"\0" * 100_000)
        elif self.path == "/slow":
            time.sleep(1.5)
            self._send(200, PNG)
        elif self.path == "/text":
            self._send(200, b"<html>not an image</html>")
        else:
            self._send(404, b"no")

    def _send(self, code: int, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):  # clients hanging up early is the point of some tests
        pass


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    httpd = Server(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_fetch_ok_and_errors(server):
    assert fetch_url(f"{server}/img.png") == PNG
    with pytest.raises(ImageFetchError, match="HTTP 404"):
        fetch_url(f"{server}/missing.png")
    with pytest.raises(ImageFetchError, match="over the cap of 1000 bytes"):
        fetch_url(f"{server}/big", max_bytes=1000)
    with pytest.raises(ImageFetchError, match="over the cap of 1000 bytes"):
        fetch_url(f"{server}/big-unsized", max_bytes=1000)
    t0 = time.perf_counter()
    with pytest.raises(ImageFetchError, match="timed out"):
        fetch_url(f"{server}/slow", timeout=0.3)
    assert time.perf_counter() - t0 < 1.4
    for url in ("ftp://example.com/a.png", "file:///etc/passwd"):
        with pytest.raises(ImageFetchError, match="only http and https"):
            fetch_url(url)
    with pytest.raises(ImageFetchError, match="cannot connect"):
        fetch_url("http://127.0.0.1:9/x.png", timeout=2)


def test_is_url():
    assert is_url("https://a.b/c.jpg") and is_url("file:///x") and is_url("s3://bucket/key")
    assert not is_url("photos/cat.jpg") and not is_url("C:\\photos\\cat.jpg") and not is_url(b"http://x")


def test_preprocess_mixes_urls_and_files_with_per_item_errors(server, tmp_path):
    local = tmp_path / "img.png"
    local.write_bytes(PNG)
    pre = ferroclip.Preprocessor(ferroclip.PreprocessConfig.clip(32), url_timeout=0.3, url_max_bytes=50_000)
    urls = [f"{server}/img.png", f"{server}/missing.png", str(local), f"{server}/slow", f"{server}/big", f"{server}/text"]
    res = pre.preprocess(urls)
    assert res.ok.tolist() == [True, False, True, False, False, False]
    np.testing.assert_array_equal(res.pixel_values[0], res.pixel_values[2])
    kinds = {e.index: e for e in res.errors}
    assert isinstance(kinds[1], ImageFetchError) and "404" in kinds[1].reason
    assert isinstance(kinds[3], ImageFetchError) and "timed out" in kinds[3].reason
    assert isinstance(kinds[4], ImageFetchError) and "cap" in kinds[4].reason
    # Downloaded but not an image: a decode error that names the URL.
    assert isinstance(kinds[5], ImageDecodeError) and kinds[5].path == urls[5]
    assert all(e.path == urls[e.index] for e in res.errors)
