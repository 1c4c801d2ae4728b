"""pretrained_urls.json schema and the name look-ups built on it."""

import hashlib
import json
import os
import re
import warnings
from pathlib import Path

import pytest

from gan_refine import pretrained
from gan_refine.adapters import EDM_PRECOND_CLASSES

ROOT = Path(__file__).resolve().parents[1]
TABLE = ROOT / "pretrained_urls.json"
FAMILIES = {"stylegan2-ada", "stylegan3", "edm", "inception", "digits-cnn"}


def _raw_model_names():
    """Model names in file order with duplicates kept (json.load would silently drop them)."""
    names = []

    def hook(pairs):
        # Called innermost first: the 'models' object is the one whose values are all entries.
        if pairs and all(isinstance(v, dict) and "url" in v for _, v in pairs):
            names.extend(k for k, _ in pairs)
        return dict(pairs)

    with open(TABLE, encoding="utf-8") as f:
        json.load(f, object_pairs_hook=hook)
    return names


def test_table_file_is_shipped_with_the_package():
    packaged = Path(pretrained.__file__).with_name("pretrained_urls.json")
    assert json.loads(packaged.read_text()) == json.loads(TABLE.read_text())


def test_schema_of_every_entry():
    raw = json.loads(TABLE.read_text())
    assert raw["format_version"] == 1 and "sha256" in raw["about"]
    names = _raw_model_names()
    assert len(names) == len(set(names)) == len(raw["models"]) >= 40
    urls = [e["url"] for e in raw["models"].values()]
    assert len(urls) == len(set(urls))
    for name, e in raw["models"].items():
        assert re.fullmatch(r"[a-z0-9][a-z0-9.\-]*", name), name
        for field in pretrained.REQUIRED_FIELDS:
            assert field in e, (name, field)
        shipped = e["url"].startswith(pretrained.PACKAGE_PREFIX)
        assert (e["url"].startswith("https://") or shipped) and " " not in e["url"], name
        if shipped:
            # A model file inside the package: it must exist and match its recorded checksum.
            path = pretrained.package_path(e["url"])
            assert os.path.isfile(path), name
            assert hashlib.sha256(open(path, "rb").read()).hexdigest() == e["sha256"], name
        for alt in e.get("alt_urls", []):
            assert alt.startswith("https://"), name
        assert e["sha256"] is None or re.fullmatch(r"[0-9a-f]{64}", e["sha256"]), name
        assert e["family"] in FAMILIES and e["role"] in pretrained.ROLES, name
        assert isinstance(e["resolution"], int) and e["resolution"] > 0, name
        assert e["channels"] in (1, 3), name
        assert isinstance(e["label_dim"], int) and e["label_dim"] >= 0, name
        assert e["conditional"] is (e["label_dim"] > 0), name
        assert isinstance(e["dataset"], str) and e["dataset"], name
        assert isinstance(e["notes"], str) and len(e["notes"]) > 10, name
        if e["role"] == "teacher":
            assert e["family"] == "edm" and e["precond"] in EDM_PRECOND_CLASSES, name
        if e["role"] == "teacher" and not shipped:
            # EDM file names spell out the resolution and the conditioning.
            r = e["resolution"]
            assert f"-{r}x{r}-" in name and ("-cond-" in name) == e["conditional"], name
        if e["family"] in ("edm", "stylegan3") and e["role"] in ("teacher", "generator") and not shipped:
            assert e["url"].endswith("/" + name + ".pkl"), name


def test_required_models_are_present():
    t = pretrained.load_table()
    assert t["stylegan2-ada-cifar10"]["label_dim"] == 10  # upstream's cifar10.pkl is conditional
    assert t["stylegan2-ada-cifar10"]["url"].endswith("/stylegan2-ada-pytorch/pretrained/cifar10.pkl")
    assert t["stylegan2-ada-cifar10u"]["label_dim"] == 0
    for n in ("ffhq", "metfaces", "afhqcat", "afhqdog", "afhqwild"):
        assert t[f"stylegan2-ada-{n}"]["family"] == "stylegan2-ada"
    for cfg in "tr":
        for stem in ("ffhq-1024x1024", "ffhqu-256x256", "metfaces-1024x1024", "afhqv2-512x512"):
            e = t[f"stylegan3-{cfg}-{stem}"]
            assert e["family"] == "stylegan3" and e["resolution"] == int(stem.split("x")[-1])
    for cond in ("cond", "uncond"):
        for var in ("vp", "ve"):
            e = t[f"edm-cifar10-32x32-{cond}-{var}"]
            assert (e["resolution"], e["label_dim"]) == (32, 10 if cond == "cond" else 0)
    for ds in ("ffhq", "afhqv2"):
        assert t[f"edm-{ds}-64x64-uncond-vp"]["resolution"] == 64
    assert t["edm-imagenet-64x64-cond-adm"]["label_dim"] == 1000
    assert t["inception-2015-12-05"]["role"] == "detector"
    assert t["fid-ref-cifar10-32x32"]["url"].endswith("/edm/fid-refs/cifar10-32x32.npz")
    assert set(pretrained.names("fid-ref")) >= {"fid-ref-cifar10-32x32", "fid-ref-ffhq-64x64"}
    assert all(t[n]["role"] == "generator" for n in pretrained.names("generator"))
    with pytest.raises(ValueError, match="unknown role"):
        pretrained.names("gan")


def test_lookup_and_resolve(tmp_path, monkeypatch):
    url = pretrained.load_table()["edm-cifar10-32x32-cond-vp"]["url"]
    assert pretrained.lookup("edm-cifar10-32x32-cond-vp")["url"] == url
    assert pretrained.lookup("EDM-CIFAR10-32x32-Cond-VP")["name"] == "edm-cifar10-32x32-cond-vp"
    assert pretrained.lookup("nothing-like-it") is None
    assert pretrained.resolve("edm-cifar10-32x32-cond-vp") == url
    assert pretrained.resolve("https://example.org/x.pkl") == "https://example.org/x.pkl"
    f = tmp_path / "my.pkl"
    f.write_bytes(b"x")
    assert pretrained.resolve(f) == str(f)
    # A file named like a table entry wins over the entry.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "stylegan2-ada-cifar10").write_bytes(b"x")
    assert pretrained.resolve("stylegan2-ada-cifar10") == "stylegan2-ada-cifar10"
    # Missing files that look like paths pass through, so the opener names the missing file.
    for p in ("missing.pkl", "runs/missing", "./x", "~/x.pkl"):
        assert pretrained.resolve(p) == p
    with pytest.raises(pretrained.UnknownModelError) as info:
        pretrained.resolve("edm-cifar10-cond-vp")
    msg = str(info.value)
    assert "edm-cifar10-32x32-cond-vp" in msg and "\n" not in msg
    assert isinstance(info.value, ValueError)
    with pytest.raises(pretrained.UnknownModelError, match="known names include"):
        pretrained.resolve("qqqqqqqq")


def test_find_teacher_matches_generator():
    assert pretrained.find_teacher("edm", 32, 3, 10) == "edm-cifar10-32x32-cond-vp"
    assert pretrained.find_teacher("edm", 32, 3, 0) == "edm-cifar10-32x32-uncond-vp"
    assert pretrained.find_teacher("EDM", 32, 3, 0, prefer="ve") == "edm-cifar10-32x32-uncond-ve"
    assert pretrained.find_teacher("edm", 64, 3, 0) in ("edm-afhqv2-64x64-uncond-vp",
                                                        "edm-ffhq-64x64-uncond-vp")
    assert pretrained.find_teacher("edm", 64, 3, 1000) == "edm-imagenet-64x64-cond-adm"
    for args, expected in [((32, 3, 5), "with 5 labels"), ((32, 1, 0), "1-channel"),
                           ((128, 3, 0), "128x128")]:
        with pytest.raises(pretrained.NoMatchingTeacherError) as info:
            pretrained.find_teacher("edm", *args)
        msg = str(info.value)
        assert expected in msg and "edm-cifar10-32x32-cond-vp (32x32, 3ch, 10 labels)" in msg
        assert "\n" not in msg and isinstance(info.value, ValueError)
    with pytest.raises(pretrained.NoMatchingTeacherError, match="known: edm"):
        pretrained.find_teacher("ddpm", 32, 3, 0)


def test_expected_sha256(monkeypatch):
    assert pretrained.expected_sha256("edm-cifar10-32x32-cond-vp") is None  # unknown upstream
    assert pretrained.expected_sha256("https://example.org/unlisted.pkl") is None
    assert pretrained.expected_sha256("no-such-model") is None
    digest = "ab" * 32
    fake = {"m": dict(url="https://h.example/m.pkl", alt_urls=["https://mirror.example/m.pkl"],
                      sha256=digest, family="edm", role="teacher", resolution=8, channels=3,
                      label_dim=0, conditional=False, dataset="toy", notes="a test entry")}
    monkeypatch.setattr(pretrained, "_models", lambda: fake)
    assert pretrained.expected_sha256("m") == digest
    assert pretrained.expected_sha256("https://h.example/m.pkl") == digest
    assert pretrained.expected_sha256("https://mirror.example/m.pkl") == digest
    assert pretrained.lookup_url("https://mirror.example/m.pkl")["name"] == "m"
    assert pretrained.find_teacher("edm", 8, 3, 0) == "m"


def test_malformed_table_is_reported():
    with pytest.raises(ValueError, match="lacks sha256"):
        pretrained._validate({"models": {"x": {"url": "https://a"}}})
    with pytest.raises(ValueError, match="top-level 'models'"):
        pretrained._validate({"x": 1})


def test_shipped_digits_models_resolve_and_pick():
    path = pretrained.resolve("digits")
    assert os.path.isfile(path) and path.endswith("digits-gan.pkl")
    assert pretrained.expected_sha256(path) == pretrained.lookup("digits")["sha256"]
    assert pretrained.find_teacher("digits", 16, 1, 10) == "digits-edm-cond"
    assert pretrained.find_teacher("digits", 16, 1, 0) == "digits-edm"
    assert "digits" in pretrained.teacher_selectors() and "edm" in pretrained.teacher_selectors()
    with pytest.raises(pretrained.NoMatchingTeacherError):
        pretrained.find_teacher("digits", 32, 3, 0)


def test_find_fid_ref_and_entry_for():
    assert pretrained.find_fid_ref("digits", 16) == "fid-ref-digits-16x16"
    assert pretrained.find_fid_ref("CIFAR10", 32) == "fid-ref-cifar10-32x32"
    assert pretrained.find_fid_ref("imagenet", 64) == "fid-ref-imagenet-64x64"  # not the baseline one
    assert pretrained.find_fid_ref("digits", 32) is None
    assert pretrained.find_fid_ref("no-such-set", 16) is None
    shipped = pretrained.entry_for(pretrained.resolve("digits-cond"))  # by the shipped file's path
    assert shipped["name"] == "digits-cond" and shipped["dataset"] == "digits"
    assert pretrained.entry_for("stylegan2-ada-cifar10")["dataset"] == "cifar10"
    assert pretrained.entry_for(pretrained.lookup("edm-cifar10-32x32-uncond-vp")["url"])["role"] == "teacher"
    assert pretrained.entry_for("/nowhere/else.pkl") is None


def test_shipped_digits_fid_reference_matches_the_training_split():
    """The shipped statistics are the float64 mean/covariance of the shipped detector's features
    of the uint8-quantised training images, recomputed here with numpy alone."""
    pytest.importorskip("sklearn")
    import numpy as np
    import torch
    from gan_refine.zoo.digits_data import load_digits_split
    entry = pretrained.lookup("fid-ref-digits-16x16")
    assert entry["role"] == "fid-ref" and entry["detector"] == "digits" and entry["eval_num"] == 2000
    with np.load(pretrained.resolve("fid-ref-digits-16x16")) as data:
        mu, sigma = data["mu"], data["sigma"]
        assert str(data["detector"]) == "digits" and int(data["num"]) == 1437
    x = load_digits_split(16)[0]
    u8 = (x * 127.5 + 128).clamp(0, 255).to(torch.uint8)   # the StyleGAN/EDM quantisation
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)   # TorchScript's deprecation notice
        det = torch.jit.load(pretrained.resolve("digits-detector")).eval()
    with torch.no_grad():
        feats = det(u8, return_features=True).double().numpy()
    assert mu.dtype == np.float64 and sigma.shape == (64, 64)
    np.testing.assert_allclose(mu, feats.mean(0), atol=1e-5)
    np.testing.assert_allclose(sigma, np.cov(feats, rowvar=False), atol=1e-5)


# ----------------------------------------------------------------------------
# sha256 of table entries: every entry that has one, local and shipped files included, hashed
# once per change of the file.

def _table_with(monkeypatch, **entries):
    base = dict(sha256=None, family="edm", role="teacher", resolution=8, channels=3, label_dim=0,
                conditional=False, dataset="toy", notes="a test entry")
    table = {n: dict(base, **e) for n, e in entries.items()}
    monkeypatch.setattr(pretrained, "_models", lambda: table)


@pytest.fixture
def hashes(tmp_path, monkeypatch):
    """Count whole-file hashing; verified-hash records go to a throwaway cache folder."""
    from gan_refine.compat.dnnlib import util as dl
    monkeypatch.setenv("DNNLIB_CACHE_DIR", str(tmp_path / "cache"))
    calls = []
    real = dl.sha256_of_file

    def counting(path):
        calls.append(path)
        return real(path)
    monkeypatch.setattr(dl, "sha256_of_file", counting)
    return calls


def _bump_mtime(path, seconds=5):
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + seconds * 10 ** 9))


def test_local_entry_is_verified_once_per_change(tmp_path, monkeypatch, hashes):
    from gan_refine.compat.dnnlib import util as dl
    path = tmp_path / "net.bin"
    path.write_bytes(b"weights" * 1000)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    _table_with(monkeypatch, toy=dict(url=str(path), sha256=digest))
    assert pretrained.verify_local("toy") == digest
    assert pretrained.verify_local(str(path)) == digest  # by path: the same entry, not hashed again
    assert pretrained.verify_local(path.as_uri()) == digest
    assert len(hashes) == 1
    record = json.loads((tmp_path / "cache" / dl.VERIFIED_CACHE_NAME).read_text())
    assert record[os.path.realpath(path)]["sha256"] == digest
    _bump_mtime(path)                       # touched: hashed again, and still fine
    pretrained.verify_local("toy")
    assert len(hashes) == 2
    pretrained.verify_local("toy")
    assert len(hashes) == 2


def test_wrong_sha256_of_a_local_entry_fails_every_time(tmp_path, monkeypatch, hashes):
    from gan_refine.compat.dnnlib import util as dl
    path = tmp_path / "net.bin"
    path.write_bytes(b"x" * 10)
    _table_with(monkeypatch, toy=dict(url=str(path), sha256="ab" * 32))
    for _ in range(2):  # a failure is never remembered as a pass
        with pytest.raises(dl.ChecksumError, match="damaged or a different file") as info:
            pretrained.verify_local("toy")
        assert str(path) in str(info.value) and "\n" not in str(info.value)
    assert len(hashes) == 2


def test_same_size_replacement_with_restored_mtime_is_caught(tmp_path, monkeypatch, hashes):
    """cp -p / touch -d can restore mtime; ctime moves anyway, so the file is hashed again."""
    import time
    from gan_refine.compat.dnnlib import util as dl
    path = tmp_path / "net.bin"
    path.write_bytes(b"A" * 64)
    _table_with(monkeypatch, toy=dict(url=str(path), sha256=hashlib.sha256(b"A" * 64).hexdigest()))
    pretrained.verify_local("toy")
    old = os.stat(path)
    deadline = time.time() + 5
    while True:  # ctime has the file system's clock granularity: wait until it moved
        path.write_bytes(b"B" * 64)
        os.utime(path, ns=(old.st_atime_ns, old.st_mtime_ns))
        if os.stat(path).st_ctime_ns != old.st_ctime_ns or time.time() > deadline:
            break
        time.sleep(0.02)
    with pytest.raises(dl.ChecksumError):
        pretrained.verify_local("toy")


def test_load_network_pkl_checks_local_entries(tmp_path, monkeypatch, hashes):
    import torch
    from gan_refine.compat.dnnlib import util as dl
    from gan_refine.pickles import load_network_pkl, save_network_pkl
    path = tmp_path / "net.pkl"
    save_network_pkl({"ema": torch.nn.Identity()}, path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    _table_with(monkeypatch, toy=dict(url=str(path), sha256=digest))
    assert "ema" in load_network_pkl("toy") and "ema" in load_network_pkl(str(path))
    assert len(hashes) == 1
    _table_with(monkeypatch, toy=dict(url=str(path), sha256="0" * 64))
    with pytest.raises(dl.ChecksumError, match="fetch 'toy' again"):
        load_network_pkl(str(path))


def test_shipped_files_match_their_table_entries(hashes):
    shipped = [n for n in pretrained.names()
               if pretrained.lookup(n)["url"].startswith(pretrained.PACKAGE_PREFIX)]
    assert shipped
    for name in shipped:
        assert pretrained.verify_local(name) == pretrained.lookup(name)["sha256"]
    assert len(hashes) == len(shipped)


def test_shipped_entry_with_wrong_sha256_says_reinstall(monkeypatch, hashes):
    from gan_refine.compat.dnnlib import util as dl
    entry = pretrained.lookup("digits")
    _table_with(monkeypatch, digits=dict(entry, sha256="f" * 64))
    with pytest.raises(dl.ChecksumError, match="reinstall gan_refine"):
        pretrained.verify_local("digits")


def test_entries_without_sha256_and_urls_are_not_hashed_here(tmp_path, monkeypatch, hashes):
    path = tmp_path / "n.bin"
    path.write_bytes(b"1")
    _table_with(monkeypatch, plain=dict(url=str(path)), remote=dict(url="https://h.example/r.pkl",
                                                                     sha256="c" * 64))
    assert pretrained.verify_local("plain") is None
    assert pretrained.verify_local("https://h.example/r.pkl") == "c" * 64  # open_url checks it
    assert pretrained.verify_local(str(tmp_path / "unlisted.pkl")) is None
    assert hashes == []


def test_existing_file_named_like_a_model_is_not_checked_against_it(tmp_path, monkeypatch, hashes):
    # resolve() lets an existing file win over a table name; so must verification.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "digits").write_bytes(b"my own file")
    assert pretrained.verify_local("digits") is None and hashes == []


def test_damaged_or_unwritable_verified_cache_only_costs_a_rehash(tmp_path, monkeypatch, hashes):
    from gan_refine.compat.dnnlib import util as dl
    path = tmp_path / "n.bin"
    path.write_bytes(b"data")
    _table_with(monkeypatch, toy=dict(url=str(path), sha256=hashlib.sha256(b"data").hexdigest()))
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / dl.VERIFIED_CACHE_NAME).write_text('{"torn": ')
    pretrained.verify_local("toy")
    pretrained.verify_local("toy")
    assert len(hashes) == 1                       # rewritten whole
    (tmp_path / "blocker").write_text("a file where the cache folder should be")
    monkeypatch.setenv("DNNLIB_CACHE_DIR", str(tmp_path / "blocker" / "cache"))
    pretrained.verify_local("toy")
    pretrained.verify_local("toy")
    assert len(hashes) == 3                       # nothing cached, nothing broken
    assert not [n for n in os.listdir(tmp_path / "cache") if ".tmp-" in n]


class _OneFile(__import__("http.server").server.BaseHTTPRequestHandler):
    body = b"downloaded weights" * 100

    def log_message(self, *args):
        pass

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)


def test_download_is_not_hashed_again_from_the_cache(tmp_path, serve_http, hashes):
    from gan_refine.compat.dnnlib import util as dl
    url = serve_http(_OneFile) + "/w.pkl"
    digest = hashlib.sha256(_OneFile.body).hexdigest()
    first = dl.open_url(url, cache_dir=str(tmp_path / "dl"), return_filename=True, sha256=digest,
                        verbose=False)
    second = dl.open_url(url, cache_dir=str(tmp_path / "dl"), return_filename=True, sha256=digest,
                         verbose=False)
    assert first == second and hashes == []       # hashed in memory once, recorded as verified
    with open(first, "r+b") as f:                  # damaged in the cache: fetched again
        f.write(b"X")
    third = dl.open_url(url, cache_dir=str(tmp_path / "dl"), return_filename=True, sha256=digest,
                        verbose=False)
    with open(third, "rb") as f:
        assert f.read() == _OneFile.body
