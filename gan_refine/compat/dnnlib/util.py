"""`dnnlib.util`: the helpers StyleGAN/EDM code and pickles expect, written for gan_refine.

Pickles reference `dnnlib.util.EasyDict` by name; training and metric scripts call `open_url`
to fetch network pickles and detectors. Downloads go through `requests` into a cache folder
(`$DNNLIB_CACHE_DIR`, else `~/.cache/dnnlib`), written atomically so an interrupted transfer
never leaves a file that looks complete. Given a sha256, `open_url` checks local files as well as
downloads, hashing each file once until it changes (`verify_sha256`).
"""

import ctypes
import fnmatch
import glob
import hashlib
import importlib
import io
import json
import os
import pickle
import re
import shutil
import sys
import tempfile
import time
import urllib.parse
import uuid
from typing import Any, List, Tuple, Union


class EasyDict(dict):
    """A dict whose keys can also be read and written as attributes."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name)

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value

    def __delattr__(self, name: str) -> None:
        del self[name]


# Pickled EasyDicts must name `dnnlib.util`, whichever way this module was imported.
EasyDict.__module__ = "dnnlib.util"


class Logger:
    """Tee stdout (and stderr, merged into it) to an optional log file, flushing as it goes.

    Training scripts create one at start-up; `close()` (or leaving a `with` block) restores
    the original streams if they still point here.
    """

    def __init__(self, file_name: str = None, file_mode: str = "w", should_flush: bool = True):
        self.file = open(file_name, file_mode) if file_name is not None else None
        self.should_flush = should_flush
        self.stdout = sys.stdout
        self.stderr = sys.stderr
        sys.stdout = self
        sys.stderr = self

    def __enter__(self) -> "Logger":
        return self

    def __exit__(self, exc_type: Any, exc_value: Any, traceback: Any) -> None:
        self.close()

    def write(self, text: Union[str, bytes]) -> None:
        if isinstance(text, bytes):
            text = text.decode()
        if not text:
            return  # some debuggers crash on an empty write followed by a flush
        if self.file is not None:
            self.file.write(text)
        self.stdout.write(text)
        if self.should_flush:
            self.flush()

    def flush(self) -> None:
        if self.file is not None:
            self.file.flush()
        self.stdout.flush()

    def close(self) -> None:
        self.flush()
        if sys.stdout is self:
            sys.stdout = self.stdout
        if sys.stderr is self:
            sys.stderr = self.stderr
        if self.file is not None:
            self.file.close()
            self.file = None


# ----------------------------------------------------------------------------
# Cache folder.

_dnnlib_cache_dir = None


def set_cache_dir(path: str) -> None:
    global _dnnlib_cache_dir
    _dnnlib_cache_dir = path


def make_cache_dir_path(*paths: str) -> str:
    """A path inside the dnnlib cache folder (first existing rule wins)."""
    if _dnnlib_cache_dir is not None:
        return os.path.join(_dnnlib_cache_dir, *paths)
    if "DNNLIB_CACHE_DIR" in os.environ:
        return os.path.join(os.environ["DNNLIB_CACHE_DIR"], *paths)
    if "HOME" in os.environ:
        return os.path.join(os.environ["HOME"], ".cache", "dnnlib", *paths)
    if "USERPROFILE" in os.environ:
        return os.path.join(os.environ["USERPROFILE"], ".cache", "dnnlib", *paths)
    return os.path.join(tempfile.gettempdir(), ".cache", "dnnlib", *paths)


# ----------------------------------------------------------------------------
# Names -> objects.

def get_module_from_obj_name(obj_name: str):
    """Split 'a.b.c.d' into the longest importable module and the attribute path inside it."""
    obj_name = re.sub(r"^np\.", "numpy.", obj_name)
    obj_name = re.sub(r"^tf\.", "tensorflow.", obj_name)
    parts = obj_name.split(".")
    for i in range(len(parts), 0, -1):
        module_name = ".".join(parts[:i])
        try:
            module = importlib.import_module(module_name)
        except ImportError as err:
            # Only swallow "this prefix is not a module"; a real import error inside it must surface.
            missing = getattr(err, "name", None)
            if missing is not None and (module_name == missing or module_name.startswith(missing + ".")):
                continue
            raise
        local = ".".join(parts[i:])
        try:
            get_obj_from_module(module, local)
        except AttributeError:
            continue
        return module, local
    raise ImportError(f"cannot resolve {obj_name!r}: no importable module prefix holds it")


def get_obj_from_module(module, obj_name: str) -> Any:
    if obj_name == "":
        return module
    obj = module
    for part in obj_name.split("."):
        obj = getattr(obj, part)
    return obj


def get_obj_by_name(name: str) -> Any:
    module, local = get_module_from_obj_name(name)
    return get_obj_from_module(module, local)


def call_func_by_name(*args, func_name: str = None, **kwargs) -> Any:
    assert func_name is not None
    func = get_obj_by_name(func_name)
    if not callable(func):
        raise TypeError(f"{func_name} is not callable")
    return func(*args, **kwargs)


def construct_class_by_name(*args, class_name: str = None, **kwargs) -> Any:
    return call_func_by_name(*args, func_name=class_name, **kwargs)


def get_module_dir_by_obj_name(obj_name: str) -> str:
    module, _ = get_module_from_obj_name(obj_name)
    return os.path.dirname(os.path.abspath(module.__file__))


def is_top_level_function(obj: Any) -> bool:
    return callable(obj) and getattr(sys.modules.get(obj.__module__), obj.__name__, None) is obj


def get_top_level_function_name(obj: Any) -> str:
    assert is_top_level_function(obj)
    module = obj.__module__
    if module == "__main__":
        module = os.path.splitext(os.path.basename(sys.modules[module].__file__))[0]
    return module + "." + obj.__name__


# ----------------------------------------------------------------------------
# Small formatting helpers that training scripts call.

def format_time(seconds) -> str:
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h {(s // 60) % 60:02d}m {s % 60:02d}s"
    return f"{s // 86400}d {(s // 3600) % 24:02d}h {(s // 60) % 60:02d}m"


def format_time_brief(seconds) -> str:
    """Like format_time() with the smallest unit dropped above one hour."""
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h {(s // 60) % 60:02d}m"
    return f"{s // 86400}d {(s // 3600) % 24:02d}h"


_YES = ("y", "yes", "t", "true", "on", "1")
_NO = ("n", "no", "f", "false", "off", "0")


def ask_yes_no(question: str) -> bool:
    while True:
        print(f"{question} [y/n]")
        answer = input().strip().lower()
        if answer in _YES:
            return True
        if answer in _NO:
            return False


def tuple_product(t: Tuple) -> Any:
    result = 1
    for v in t:
        result *= v
    return result


_str_to_ctype = {
    "uint8": ctypes.c_ubyte, "uint16": ctypes.c_uint16, "uint32": ctypes.c_uint32, "uint64": ctypes.c_uint64,
    "int8": ctypes.c_byte, "int16": ctypes.c_int16, "int32": ctypes.c_int32, "int64": ctypes.c_int64,
    "float32": ctypes.c_float, "float64": ctypes.c_double,
}


def get_dtype_and_ctype(type_obj: Any):
    """(numpy dtype, ctypes type) of equal size for a type name, or an object with a name."""
    import numpy as np  # lazily: dnnlib itself must import without numpy
    if isinstance(type_obj, str):
        type_str = type_obj
    elif hasattr(type_obj, "__name__"):
        type_str = type_obj.__name__
    elif hasattr(type_obj, "name"):
        type_str = type_obj.name
    else:
        raise RuntimeError("Cannot infer type name from input")
    assert type_str in _str_to_ctype
    dtype, ctype = np.dtype(type_str), _str_to_ctype[type_str]
    assert dtype.itemsize == ctypes.sizeof(ctype)
    return dtype, ctype


def is_pickleable(obj: Any) -> bool:
    try:
        with io.BytesIO() as stream:
            pickle.dump(obj, stream)
        return True
    except Exception:  # pylint: disable=broad-except
        return False


# ----------------------------------------------------------------------------
# File system helpers that training scripts use to snapshot their sources.

def list_dir_recursively_with_ignore(dir_path: str, ignores: List[str] = None,
                                     add_base_to_relative: bool = False) -> List[Tuple[str, str]]:
    """[(absolute path, path relative to dir_path)] of every file below dir_path, skipping
    files and folders whose names match any fnmatch pattern in `ignores`."""
    assert os.path.isdir(dir_path)
    base_name = os.path.basename(os.path.normpath(dir_path))
    ignores = ignores or []
    result = []
    for root, dirs, files in os.walk(dir_path, topdown=True):
        dirs[:] = [d for d in dirs if not any(fnmatch.fnmatch(d, pat) for pat in ignores)]
        files = [f for f in files if not any(fnmatch.fnmatch(f, pat) for pat in ignores)]
        for name in files:
            absolute = os.path.join(root, name)
            relative = os.path.relpath(absolute, dir_path)
            if add_base_to_relative:
                relative = os.path.join(base_name, relative)
            result.append((absolute, relative))
    return result


def copy_files_and_create_dirs(files: List[Tuple[str, str]]) -> None:
    """Copy each (src, dst) pair, creating the destination folders as needed."""
    for src, dst in files:
        target_dir = os.path.dirname(dst)
        if target_dir and not os.path.exists(target_dir):
            os.makedirs(target_dir)
        shutil.copyfile(src, dst)


# ----------------------------------------------------------------------------
# URLs and the download cache.

def is_url(obj: Any, allow_file_urls: bool = False) -> bool:
    if not isinstance(obj, str) or "://" not in obj:
        return False
    if allow_file_urls and obj.startswith("file://"):
        return True
    parsed = urllib.parse.urlparse(obj)
    return parsed.scheme in ("http", "https") and bool(parsed.netloc)


def _file_url_to_path(url: str) -> str:
    parsed = urllib.parse.urlparse(url)
    path = urllib.parse.unquote(parsed.path)
    # file:///C:/x on Windows parses with a leading slash before the drive letter.
    if re.match(r"^/[A-Za-z]:", path):
        path = path[1:]
    return path


def _safe_cache_name(name: str) -> str:
    return re.sub(r"[^0-9A-Za-z._-]", "_", name)


def _find_cached(cache_dir: str, url_md5: str):
    """The cached file for a URL: `<md5 of the URL>_<anything>`, the layout upstream's
    open_url() writes and reads, so both share one cache. Ambiguous = not cached."""
    matches = glob.glob(os.path.join(glob.escape(cache_dir), url_md5 + "_*"))
    return matches[0] if len(matches) == 1 else None


class DownloadError(IOError):
    """A URL could not be fetched (after retries) or its contents failed the checksum."""


class ChecksumError(DownloadError):
    """A file's sha256 differs from the published one: it is damaged or a different file."""

    def __str__(self):
        return self.args[0] if self.args else ""


# ----------------------------------------------------------------------------
# sha256 verification, once per file.
#
# Network pickles reach gigabytes; hashing one on every start would cost seconds. A file that
# passed keeps its entry in a small JSON file in the cache folder, keyed by what changes when
# the file does: real path, size, mtime_ns and ctime_ns (the last cannot be set back by
# `cp -p` or `touch -d`, so a replaced file with a restored mtime is hashed again).

VERIFIED_CACHE_NAME = "sha256-verified.json"


def _verified_cache_path() -> str:
    return make_cache_dir_path(VERIFIED_CACHE_NAME)


def _file_key(path: str) -> Tuple[str, dict]:
    st = os.stat(path)
    return os.path.realpath(path), {"size": st.st_size, "mtime_ns": st.st_mtime_ns,
                                    "ctime_ns": st.st_ctime_ns}


def _read_verified() -> dict:
    try:
        with open(_verified_cache_path(), encoding="utf-8") as f:
            data = json.load(f)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}  # no cache or a damaged one: hashing again is always safe


def _remember_verified(real: str, stamp: dict, sha256: str) -> None:
    cache_path = _verified_cache_path()
    data = _read_verified()
    data[real] = dict(stamp, sha256=sha256)
    tmp = f"{cache_path}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        os.makedirs(os.path.dirname(cache_path), exist_ok=True)
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=0, sort_keys=True)
        os.replace(tmp, cache_path)  # concurrent writers: the last one wins, others rehash later
    except OSError:
        pass  # a read-only cache folder only costs a rehash next time
    finally:
        if os.path.exists(tmp):
            try:
                os.remove(tmp)
            except OSError:
                pass


def is_verified(path: str, sha256: str) -> bool:
    """True if `path`, unchanged since, was already found to have this sha256."""
    real, stamp = _file_key(path)
    entry = _read_verified().get(real)
    return entry == dict(stamp, sha256=sha256.lower())


def verify_sha256(path: str, sha256: str, hint: str = None) -> str:
    """Check that the file at `path` has the given sha256, hashing it only if it changed.

    Raises ChecksumError with a one-line message naming the file; `hint` replaces the default
    advice on what to do. Returns `path`.
    """
    sha256 = sha256.lower()
    if is_verified(path, sha256):
        return path
    real, stamp = _file_key(path)
    got = sha256_of_file(path)
    if got != sha256:
        hint = hint or ("delete it and download it again, or reinstall the package it came with")
        raise ChecksumError(f"{path} is damaged or a different file than expected: its sha256 is "
                            f"{got[:16]}..., expected {sha256[:16]}...; {hint}")
    _remember_verified(real, stamp, sha256)
    return path


def open_url(url: str, cache_dir: str = None, num_attempts: int = 10, verbose: bool = True,
             return_filename: bool = False, cache: bool = True, sha256: str = None,
             timeout: float = 60.0) -> Any:
    """Open a local path, file:// URL or http(s) URL as a binary file object.

    http(s) downloads are cached (once per URL) in `cache_dir`, `$DNNLIB_CACHE_DIR` or
    `~/.cache/dnnlib/downloads`; the file appears there only once complete (and, if `sha256`
    is given, only once it matches). `return_filename=True` gives the local path instead.
    """
    assert num_attempts >= 1
    assert not (return_filename and not cache)

    if not re.match(r"^[a-z][a-z0-9+.-]*://", url) or url.startswith("file://"):
        path = _file_url_to_path(url) if url.startswith("file://") else url
        if sha256 is not None:
            verify_sha256(path, sha256)  # local copies are checked as strictly as downloads
        return path if return_filename else open(path, "rb")
    if not is_url(url):
        raise DownloadError(f"not a supported URL: {url!r} (use http(s)://, file:// or a local path)")

    if cache_dir is None:
        cache_dir = make_cache_dir_path("downloads")
    url_md5 = hashlib.md5(url.encode("utf-8")).hexdigest()
    cached = _find_cached(cache_dir, url_md5) if cache else None
    if cached is not None:
        try:
            if sha256 is not None:
                verify_sha256(cached, sha256)
            return cached if return_filename else open(cached, "rb")
        except ChecksumError:
            os.remove(cached)  # a stale or tampered cache entry: fetch again

    data, url_name = _download(url, num_attempts=num_attempts, verbose=verbose, timeout=timeout)
    cache_path = os.path.join(cache_dir, url_md5 + "_" + _safe_cache_name(url_name))
    if sha256 is not None:
        got = hashlib.sha256(data).hexdigest()
        if got != sha256.lower():
            raise ChecksumError(
                f"checksum mismatch for {url}: expected sha256 {sha256.lower()}, got {got}; "
                "the file may be corrupt or replaced upstream - do not use it")

    if cache:
        os.makedirs(cache_dir, exist_ok=True)
        tmp_path = os.path.join(cache_dir, f"tmp_{uuid.uuid4().hex}_{os.path.basename(cache_path)}")
        try:
            with open(tmp_path, "wb") as f:
                f.write(data)
            os.replace(tmp_path, cache_path)
        finally:
            if os.path.exists(tmp_path):
                os.remove(tmp_path)
        if sha256 is not None:  # hashed in memory above; the next open need not hash again
            _remember_verified(*_file_key(cache_path), sha256.lower())
        if return_filename:
            return cache_path
    return io.BytesIO(data)


def sha256_of_file(path: str) -> str:
    """Hex sha256 of a file's contents, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _download(url: str, num_attempts: int, verbose: bool, timeout: float) -> bytes:
    import requests  # imported lazily: loading local pickles must not need it

    last_error = None
    with requests.Session() as session:
        for attempt in range(num_attempts):
            if verbose and attempt == 0:
                print(f"Downloading {url} ...", end="", file=sys.stderr, flush=True)
            try:
                with session.get(url, timeout=timeout, stream=True) as res:
                    res.raise_for_status()
                    expected = res.headers.get("Content-Length")
                    chunks = []
                    for chunk in res.iter_content(chunk_size=1 << 20):
                        chunks.append(chunk)
                    data = b"".join(chunks)
                    if expected is not None and len(data) != int(expected):
                        raise DownloadError(f"transfer interrupted: got {len(data)} of {expected} bytes")
                    if len(data) == 0:
                        raise DownloadError("empty response")
                    # Cache entries are named after the server's file name, else the whole URL.
                    match = re.search(r'filename="([^"]*)"', res.headers.get("Content-Disposition", ""))
                    url_name = match[1] if match else url
                if verbose:
                    print(" done", file=sys.stderr, flush=True)
                return data, url_name
            except requests.HTTPError as err:
                last_error = err
                if err.response is not None and 400 <= err.response.status_code < 500:
                    break  # 404 and friends will not fix themselves
            except (requests.RequestException, DownloadError) as err:
                last_error = err
            if attempt + 1 < num_attempts:
                time.sleep(min(2 ** attempt * 0.25, 5.0))
    if verbose:
        print(" failed", file=sys.stderr, flush=True)
    raise DownloadError(f"could not download {url} after {num_attempts} attempt(s): {last_error}; "
                        "check the URL and your network, or download the file yourself and pass its path")
