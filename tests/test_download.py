"""dnnlib.util.open_url against a real HTTP server on loopback: cache, checksum, broken transfers."""

import hashlib
import http.server
import os

import pytest

import gan_refine  # noqa: F401  (installs the dnnlib alias)
from dnnlib import util

PAYLOAD = os.urandom(200_000)


class _Handler(http.server.BaseHTTPRequestHandler):
    hits = {}

    def log_message(self, *args):
        pass

    def do_GET(self):
        _Handler.hits[self.path] = _Handler.hits.get(self.path, 0) + 1
        if self.path == "/good.bin":
            self.send_response(200)
            self.send_header("Content-Length", str(len(PAYLOAD)))
            self.end_headers()
            self.wfile.write(PAYLOAD)
        elif self.path == "/cut.bin":
            # Promise the whole file, send a third, then hang up.
            self.send_response(200)
            self.send_header("Content-Length", str(len(PAYLOAD)))
            self.end_headers()
            self.wfile.write(PAYLOAD[: len(PAYLOAD) // 3])
            self.wfile.flush()
            self.close_connection = True
        else:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()


@pytest.fixture(scope="module")
def server(serve_http):
    return serve_http(_Handler)


def test_download_cached_once_and_checked(server, tmp_path):
    url = server + "/good.bin"
    sha = hashlib.sha256(PAYLOAD).hexdigest()
    before = _Handler.hits.get("/good.bin", 0)
    with util.open_url(url, cache_dir=str(tmp_path), sha256=sha, verbose=False) as f:
        assert f.read() == PAYLOAD
    path = util.open_url(url, cache_dir=str(tmp_path), return_filename=True, verbose=False)
    with open(path, "rb") as f:
        assert f.read() == PAYLOAD
    assert _Handler.hits["/good.bin"] - before == 1  # second open served from the cache
    assert not [n for n in os.listdir(tmp_path) if n.startswith("tmp_")]


def test_env_cache_dir(server, tmp_path, monkeypatch):
    monkeypatch.setenv("DNNLIB_CACHE_DIR", str(tmp_path / "envcache"))
    path = util.open_url(server + "/good.bin", return_filename=True, verbose=False)
    assert path.startswith(str(tmp_path / "envcache"))


def test_wrong_checksum_is_not_cached(server, tmp_path):
    with pytest.raises(util.DownloadError, match="checksum mismatch"):
        util.open_url(server + "/good.bin", cache_dir=str(tmp_path), sha256="0" * 64, verbose=False)
    assert os.listdir(tmp_path) == []


def test_interrupted_transfer_leaves_nothing(server, tmp_path):
    with pytest.raises(util.DownloadError, match="could not download"):
        util.open_url(server + "/cut.bin", cache_dir=str(tmp_path), num_attempts=2, verbose=False)
    assert os.listdir(tmp_path) == []


def test_404_fails_fast(server, tmp_path):
    before = _Handler.hits.get("/missing.bin", 0)
    with pytest.raises(util.DownloadError, match="404"):
        util.open_url(server + "/missing.bin", cache_dir=str(tmp_path), num_attempts=5, verbose=False)
    assert _Handler.hits["/missing.bin"] - before == 1


def test_local_paths_and_file_urls(tmp_path):
    p = tmp_path / "a b.bin"
    p.write_bytes(b"xyz")
    with util.open_url(str(p)) as f:
        assert f.read() == b"xyz"
    with util.open_url(p.as_uri()) as f:
        assert f.read() == b"xyz"
    assert util.open_url(p.as_uri(), return_filename=True) == str(p)


def test_names_to_objects():
    assert util.get_obj_by_name("os.path.join") is os.path.join
    assert util.construct_class_by_name(a=1, class_name="dnnlib.util.EasyDict").a == 1
    assert util.call_func_by_name(3, func_name="math.sqrt") == pytest.approx(3 ** 0.5)
    with pytest.raises(ImportError):
        util.get_obj_by_name("no_such_module_xyz.thing")
    assert util.make_cache_dir_path("a").endswith(os.path.join("dnnlib", "a")) or "DNNLIB_CACHE_DIR" in os.environ
