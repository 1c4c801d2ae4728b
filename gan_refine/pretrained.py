"""Named pretrained models (pretrained_urls.json): look-up, name resolution, teacher choice.

Every entry has: url, sha256 (null where no published hash is known; such files are not
verified), family ('stylegan2-ada' | 'stylegan3' | 'edm' | 'inception'), role ('generator' |
'teacher' | 'detector' | 'fid-ref'), resolution, channels, label_dim, conditional, dataset,
notes; optionally source, format, variant, config, precond, alt_urls.

A sha256 is checked wherever the file comes from: downloads, local paths and files shipped
with the package (`package:` urls), each hashed once until it changes (`verify_local`).
"""

import copy
import difflib
import functools
import json
import os
from pathlib import Path

__all__ = [
    "UnknownModelError",
    "NoMatchingTeacherError",
    "REQUIRED_FIELDS",
    "ROLES",
    "load_table",
    "lookup",
    "lookup_url",
    "names",
    "is_url",
    "resolve",
    "find_teacher",
    "find_fid_ref",
    "entry_for",
    "expected_sha256",
    "verify_local",
]

REQUIRED_FIELDS = ("url", "sha256", "family", "role", "resolution", "channels", "label_dim",
                   "conditional", "dataset", "notes")
ROLES = ("generator", "teacher", "detector", "fid-ref")
_TABLE_PATH = Path(__file__).with_name("pretrained_urls.json")
# Suffixes that mark a string as a file the user meant, even when it does not exist (so the
# opener reports "no such file" instead of "unknown model name").
_FILE_SUFFIXES = (".pkl", ".pt", ".pth", ".npz", ".zip", ".json", ".ckpt", ".safetensors")


class UnknownModelError(ValueError):
    """A bare name that is neither an existing file, a URL, nor a model in the table."""


class NoMatchingTeacherError(ValueError):
    """No teacher in the table matches the generator's resolution, channels and labels."""


def _validate(table):
    models = table.get("models")
    if not isinstance(models, dict):
        raise ValueError(f"{_TABLE_PATH.name}: expected a top-level 'models' mapping")
    for name, entry in models.items():
        missing = [f for f in REQUIRED_FIELDS if f not in entry]
        if missing:
            raise ValueError(f"{_TABLE_PATH.name}: entry {name!r} lacks {', '.join(missing)}")
        if entry["role"] not in ROLES:
            raise ValueError(f"{_TABLE_PATH.name}: entry {name!r} has role {entry['role']!r}; "
                             f"expected one of {', '.join(ROLES)}")
    return models


@functools.lru_cache(maxsize=None)
def _models():
    with open(_TABLE_PATH, encoding="utf-8") as f:
        return _validate(json.load(f))


def load_table():
    """All entries as {name: entry} (a copy; edit freely)."""
    return copy.deepcopy(_models())


def lookup(name):
    """The entry for `name` (exact, then case-insensitive) with its 'name' added, else None."""
    models = _models()
    key = name if name in models else next((k for k in models if k.lower() == str(name).lower()),
                                           None)
    if key is None:
        return None
    return dict(copy.deepcopy(models[key]), name=key)


def lookup_url(url):
    """The entry whose url (or one of its alt_urls) is `url`, else None."""
    url = str(url).strip()
    for name, entry in _models().items():
        if url == entry["url"] or url in entry.get("alt_urls", ()):
            return dict(copy.deepcopy(entry), name=name)
    return None


def names(role=None):
    """Sorted model names, optionally only those with the given role."""
    if role is not None and role not in ROLES:
        raise ValueError(f"unknown role {role!r}; expected one of {', '.join(ROLES)}")
    return sorted(n for n, e in _models().items() if role is None or e["role"] == role)


def is_url(s):
    return isinstance(s, str) and "://" in s


def _looks_like_path(s):
    seps = {"/", os.sep} | ({os.altsep} if os.altsep else set())
    return (any(sep in s for sep in seps) or s.startswith(("~", "."))
            or s.lower().endswith(_FILE_SUFFIXES))


PACKAGE_PREFIX = "package:"   # url of a model shipped inside gan_refine: package:<path below gan_refine/>


def package_path(url):
    """Local path of a `package:` url (a model file shipped with gan_refine)."""
    rel = url[len(PACKAGE_PREFIX):].lstrip("/")
    return str(Path(__file__).parent.joinpath(*rel.split("/")))


def resolve(name_or_path_or_url):
    """Turn a model name into its URL (or local path, for shipped models); return paths and
    URLs unchanged.

    An existing file always wins over a table name. A string that looks like a path (has a
    directory separator or a file suffix) is returned unchanged even if missing, so the opener
    can say which file is missing. Anything else must be a table name.
    """
    s = os.fspath(name_or_path_or_url)
    if is_url(s) or os.path.exists(s):
        return s
    entry = lookup(s)
    if entry is not None:
        if entry["url"].startswith(PACKAGE_PREFIX):
            return package_path(entry["url"])
        return entry["url"]
    if _looks_like_path(s):
        return s
    close = difflib.get_close_matches(s, names(), n=5, cutoff=0.5)
    hint = (f"did you mean {', '.join(close)}?" if close else
            f"known names include {', '.join(names('generator')[:2] + names('teacher')[:2])}")
    raise UnknownModelError(f"{s!r} is not a file, a URL or a model name in "
                            f"{_TABLE_PATH.name}: {hint}")


def _brief(name, entry):
    r, lab = entry["resolution"], entry["label_dim"]
    return f"{name} ({r}x{r}, {entry['channels']}ch, {lab or 'no'} labels)"


def teacher_selectors():
    """Words `--teacher` accepts for an automatic pick: teacher families and data sets."""
    teachers = [e for e in _models().values() if e["role"] == "teacher"]
    return sorted({e["family"].lower() for e in teachers} | {e["dataset"].lower() for e in teachers})


def find_teacher(family, img_resolution, img_channels, label_dim, prefer="vp"):
    """Name of the teacher of `family` (or of that data set) that matches the generator exactly.

    Among matches, EDM's config F models ('edm-*') come before the config A baselines, and
    `prefer` ('vp' by default) before other variants; ties by name.
    """
    family = str(family).lower()
    pool = {n: e for n, e in _models().items()
            if e["role"] == "teacher" and family in (e["family"].lower(), e["dataset"].lower())}
    if not pool:
        fams = sorted({e["family"] for e in _models().values() if e["role"] == "teacher"})
        raise NoMatchingTeacherError(f"no teacher family {family!r} in {_TABLE_PATH.name}; "
                                     f"known: {', '.join(fams)}")
    matches = [n for n, e in pool.items()
               if e["resolution"] == int(img_resolution) and e["channels"] == int(img_channels)
               and e["label_dim"] == int(label_dim)]
    if not matches:
        what = f"with {label_dim} labels" if label_dim else "(unconditional)"
        # Baselines duplicate the config F sizes; listing them would only lengthen the line.
        shown = sorted(n for n in pool if pool[n].get("config", "F") == "F") or sorted(pool)
        have = "; ".join(_brief(n, pool[n]) for n in shown)
        raise NoMatchingTeacherError(
            f"no {family} teacher in {_TABLE_PATH.name} fits a {img_resolution}x{img_resolution} "
            f"{img_channels}-channel generator {what}; available: {have}. Pass a teacher "
            f"pickle path instead")
    matches.sort(key=lambda n: (pool[n].get("config", "F") != "F",
                                pool[n].get("variant") != prefer, n))
    return matches[0]


def _entry_local_path(url):
    """The local file a table url names (package:, file:// or a plain path), else None."""
    if url.startswith(PACKAGE_PREFIX):
        return package_path(url)
    if url.startswith("file://"):
        from urllib.parse import unquote, urlparse
        return unquote(urlparse(url).path)
    return None if is_url(url) else os.path.expanduser(url)


def _entry_for_file(path):
    """The entry whose url names this local file (package:, file:// or a plain path), else None."""
    target = os.path.abspath(os.path.expanduser(path))
    for name, entry in _models().items():
        local = _entry_local_path(entry["url"])
        if local is not None and os.path.abspath(local) == target:
            return dict(copy.deepcopy(entry), name=name)
    return None


def entry_for(source):
    """The table entry of a model given by name, URL or the path of a local or shipped file;
    else None."""
    s = os.fspath(source)
    entry = lookup_url(s) if is_url(s) else lookup(s)
    if entry is None and not is_url(s):
        entry = _entry_for_file(s)
    return entry


def expected_sha256(url_or_name):
    """Published sha256 of a model given by name or URL; None when unknown or not in the table."""
    entry = entry_for(url_or_name)
    return None if entry is None else entry["sha256"]


def _local_target(s):
    """(local path, table entry) for a path, file:// URL or name; (None, entry) for other URLs.

    An existing file is matched by its path only, as `resolve` lets an existing file win over a
    table name: it must not be checked against the hash of a model of the same name.
    """
    if is_url(s) and not s.startswith("file://"):
        return None, lookup_url(s)
    local = _entry_local_path(s) if s.startswith("file://") else os.path.expanduser(s)
    if os.path.exists(local):
        return local, (_entry_for_file(local) or (lookup_url(s) if is_url(s) else None))
    entry = lookup(s)
    return (None if entry is None else _entry_local_path(entry["url"])), entry


def verify_local(path_or_url):
    """Check a local or shipped file against its table entry's sha256, hashing it only when the
    file changed since it last passed (the result is cached in the dnnlib cache folder).

    Accepts a path, file:// URL or table name. Returns the expected sha256 (None when the table
    has none) so a caller can hand it to `open_url`, which verifies downloads. Raises
    dnnlib.util.ChecksumError (an OSError) with a one-line message on a mismatch.
    """
    from .compat.dnnlib import util as dl
    local, entry = _local_target(os.fspath(path_or_url))
    if entry is None or not entry["sha256"]:
        return None
    if local is not None and os.path.isfile(local):
        if entry["url"].startswith(PACKAGE_PREFIX):
            hint = ("it ships with gan_refine, so reinstall gan_refine to restore it "
                    "(pip install --force-reinstall --no-deps gan_refine)")
        else:
            hint = f"delete it and fetch {entry['name']!r} again"
        dl.verify_sha256(local, entry["sha256"], hint=hint)
    return entry["sha256"]


def find_fid_ref(dataset, img_resolution):
    """Name of the 'fid-ref' entry (reference statistics) of `dataset` at `img_resolution`,
    or None when the table has none."""
    matches = sorted(n for n, e in _models().items()
                     if e["role"] == "fid-ref" and e["dataset"].lower() == str(dataset).lower()
                     and e["resolution"] == int(img_resolution) and "baseline" not in n)
    return matches[0] if matches else None
