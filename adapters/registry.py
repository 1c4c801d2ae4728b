"""Which adapter wraps which network: families, detection, entry-point plug-ins.

A family is (name, detect, factory, priority). `as_generator` / `as_teacher` try the
registered families from the highest priority down and wrap the object with the first whose
`detect(obj)` is true. Third parties add families without editing gan_refine, either by
calling `register_generator` / `register_teacher`, or by declaring an entry point in the
`gan_refine.adapters` group whose object is a callable taking no arguments that performs the
registration, e.g. in their pyproject.toml:

    [project.entry-points."gan_refine.adapters"]
    mygan = "mygan.gan_refine_plugin:register"

Entry points are loaded once, the first time a family is looked up.
"""

import importlib.metadata
import os
import warnings
from dataclasses import dataclass
from typing import Any, Callable

from torch import nn

from .base import GeneratorAdapter, IncompatibleModelsError, TeacherAdapter
from .edm import EDMTeacherAdapter, is_edm_denoiser
from .generic import GenericGeneratorAdapter, GenericTeacherAdapter
from .stylegan import StyleGANGeneratorAdapter, is_stylegan_generator

__all__ = [
    "ENTRY_POINT_GROUP",
    "Family",
    "register_generator",
    "register_teacher",
    "unregister",
    "generator_families",
    "teacher_families",
    "discover_entry_points",
    "as_generator",
    "as_teacher",
    "check_compatible",
]

ENTRY_POINT_GROUP = "gan_refine.adapters"
_GAN_KEYS = ("G_ema", "G")


@dataclass
class Family:
    name: str
    kind: str  # 'generator' | 'teacher'
    detect: Callable[[Any], bool]
    factory: Callable[..., Any]
    priority: int = 0
    origin: str = "gan_refine"


_families = {"generator": {}, "teacher": {}}
_discovered = False


def _register(kind, name, detect, factory, priority, origin):
    if not callable(detect) or not callable(factory):
        raise TypeError(f"register_{kind}({name!r}): detect and factory must be callables")
    # Re-registering a name replaces it, so plug-ins may be reloaded safely.
    _families[kind][str(name)] = Family(str(name), kind, detect, factory, int(priority), origin)


def register_generator(name, detect, factory, priority=0, origin="user"):
    """Add a generator family: `detect(obj) -> bool`, `factory(obj, **kw) -> GeneratorAdapter`."""
    _register("generator", name, detect, factory, priority, origin)


def register_teacher(name, detect, factory, priority=0, origin="user"):
    """Add a teacher family: `detect(obj) -> bool`, `factory(obj, **kw) -> TeacherAdapter`."""
    _register("teacher", name, detect, factory, priority, origin)


def unregister(name, kind=None):
    """Remove a family by name (from both kinds unless `kind` is given)."""
    for k in ([kind] if kind else list(_families)):
        _families[k].pop(name, None)


def _entry_points():
    eps = importlib.metadata.entry_points
    try:
        return list(eps(group=ENTRY_POINT_GROUP))
    except TypeError:  # Python < 3.10 returns a dict of groups
        return list(eps().get(ENTRY_POINT_GROUP, []))


def discover_entry_points(force=False):
    """Load the `gan_refine.adapters` entry points (once unless `force`); returns their names.

    A plug-in that fails to load is skipped with a warning rather than breaking every run.
    """
    global _discovered
    if _discovered and not force:
        return []
    _discovered = True
    loaded = []
    for ep in _entry_points():
        try:
            obj = ep.load()
            hook = obj if callable(obj) else getattr(obj, "register", None)
            if not callable(hook):
                raise TypeError("the entry point is neither callable nor has a register()")
            hook()
            loaded.append(ep.name)
        except Exception as e:  # noqa: BLE001 - a broken plug-in must not stop the run
            warnings.warn(f"gan_refine: adapter plug-in {ep.name!r} ({ep.value}) was skipped: "
                          f"{type(e).__name__}: {e}", RuntimeWarning, stacklevel=2)
    return loaded


def _sorted(kind):
    discover_entry_points()
    fams = list(_families[kind].values())
    # Stable sort keeps registration order among equal priorities.
    return sorted(fams, key=lambda f: -f.priority)


def generator_families():
    return _sorted("generator")


def teacher_families():
    return _sorted("teacher")


def _pick(kind, obj, family):
    if family is not None:
        fams = {f.name: f for f in _sorted(kind)}
        if family not in fams:
            raise ValueError(f"unknown {kind} family {family!r}; known: {', '.join(fams)}")
        return fams[family]
    for fam in _sorted(kind):
        try:
            if fam.detect(obj):
                return fam
        except Exception:  # noqa: BLE001 - a detector that chokes on a foreign object says no
            continue
    return None


def _load_pickle(path):
    from gan_refine.pickles import load_network_pkl
    return load_network_pkl(os.fspath(path))


def _describe(obj):
    if isinstance(obj, dict):
        return f"a dict with keys {sorted(map(str, obj))}"
    return f"a {type(obj).__module__}.{type(obj).__qualname__}"


def _check_no_options(obj, kw):
    if kw:
        raise TypeError(f"{type(obj).__name__} is already an adapter; options "
                        f"{sorted(kw)} apply only when wrapping a raw network")
    return obj


def as_generator(obj, which="G_ema", family=None, **kw):
    """Wrap `obj` as a GeneratorAdapter.

    obj: a GeneratorAdapter (returned as is); a network-pickle dict (StyleGAN layouts; the
    `which` entry, 'G_ema' by default or 'G'); a path/URL/name of such a pickle; or an
    nn.Module. `family` forces a registered family by name ('stylegan', 'generic', ...);
    remaining keywords go to the adapter (e.g. noise_mode=, or z_dim= for generic modules).
    """
    if isinstance(obj, GeneratorAdapter):
        return _check_no_options(obj, kw)
    if isinstance(obj, TeacherAdapter):
        raise TypeError("got a teacher adapter where a generator was expected")
    if isinstance(obj, (str, os.PathLike)):
        obj = _load_pickle(obj)
    if isinstance(obj, dict):
        if which not in obj:
            if "ema" in obj:
                raise ValueError("this is an EDM diffusion pickle (key 'ema'), not a GAN: pass it "
                                 "as the teacher, and a StyleGAN pickle as the generator")
            raise ValueError(f"the pickle has no {which!r} entry (keys: {sorted(map(str, obj))}); "
                             f"a StyleGAN pickle holds 'G_ema' and 'G'")
        obj = obj[which]
    if isinstance(obj, tuple) and len(obj) == 3:
        raise ValueError("a 3-tuple looks like a TensorFlow-era StyleGAN pickle: convert it with "
                         "stylegan2-ada-pytorch's legacy.py first and pass the converted file")
    # Families come first: a plug-in may wrap objects that are not nn.Modules at all.
    fam = _pick("generator", obj, family)
    if fam is not None:
        return fam.factory(obj, **kw)
    if not isinstance(obj, nn.Module):
        raise TypeError(f"cannot use {_describe(obj)} as a generator: pass a StyleGAN network "
                        f"pickle, or an nn.Module mapping (z, c) to images with z_dim= given")
    if is_edm_denoiser(obj):
        raise TypeError(f"{type(obj).__name__} is a diffusion denoiser, not a generator: pass it "
                        f"as the teacher")
    if "z_dim" in kw:
        return GenericGeneratorAdapter(obj, **kw)
    raise TypeError(f"cannot tell how to drive {_describe(obj)} as a generator: pass z_dim= "
                    f"(and c_dim=, img_resolution=, img_channels=) to wrap it generically, or "
                    f"register a family with gan_refine.adapters.register_generator")


def as_teacher(obj, family=None, **kw):
    """Wrap `obj` as a TeacherAdapter.

    obj: a TeacherAdapter (returned as is); an EDM network-pickle dict (its 'ema' entry); a
    path/URL/name of such a pickle; an nn.Module or any callable `(x, sigma, c) -> x0`
    (keywords img_resolution=, img_channels=, label_dim=, ... describe a generic one).
    """
    if isinstance(obj, TeacherAdapter):
        return _check_no_options(obj, kw)
    if isinstance(obj, GeneratorAdapter):
        raise TypeError("got a generator adapter where a teacher was expected")
    if isinstance(obj, (str, os.PathLike)):
        obj = _load_pickle(obj)
    if isinstance(obj, dict):
        if "ema" in obj:
            obj = obj["ema"]
        elif any(k in obj for k in _GAN_KEYS):
            raise ValueError("this is a GAN pickle (keys 'G_ema'/'G'), not a diffusion model: "
                             "pass it as the generator, and an EDM pickle (or --teacher edm) as "
                             "the teacher")
        else:
            raise ValueError(f"the pickle has no 'ema' entry (keys: {sorted(map(str, obj))}); "
                             f"an EDM pickle holds the denoiser under 'ema'")
    fam = _pick("teacher", obj, family)
    if fam is not None:
        return fam.factory(obj, **kw)
    if not callable(obj):
        raise TypeError(f"cannot use {_describe(obj)} as a teacher: pass an EDM network pickle "
                        f"or a callable denoiser (x, sigma, c) -> x0")
    if is_stylegan_generator(obj):
        raise TypeError(f"{type(obj).__name__} is a GAN generator, not a denoiser: pass it as "
                        f"the generator")
    return GenericTeacherAdapter(obj, **kw)


def check_compatible(gen, teacher):
    """Raise IncompatibleModelsError unless generator and teacher agree on image size,
    channels and labels; returns (generator adapter, teacher adapter)."""
    gen = as_generator(gen)
    teacher = as_teacher(teacher)
    problems = []
    g, t = gen.img_resolution, teacher.img_resolution
    if g != t:
        problems.append(f"the generator makes {g}x{g} images but the teacher denoises {t}x{t} "
                        f"images: use a teacher trained at {g}x{g} (--teacher edm picks one) or "
                        f"a generator at {t}x{t}")
    g, t = gen.img_channels, teacher.img_channels
    if g != t:
        problems.append(f"the generator makes {g}-channel images but the teacher expects {t} "
                        f"channels: use a teacher trained on {g}-channel data")
    g, t = gen.c_dim, teacher.label_dim
    if g != t:
        if t == 0:
            fix = f"the teacher is unconditional: pick a teacher with {g} labels"
        elif g == 0:
            fix = (f"the teacher is class-conditional with {t} labels: pick an unconditional "
                   f"teacher (label_dim 0)")
        else:
            fix = f"the teacher has {t}: pick a teacher with {g} labels"
        what = "unconditional" if g == 0 else f"class-conditional with {g} labels"
        problems.append(f"the generator is {what} but {fix}")
    if problems:
        raise IncompatibleModelsError("incompatible generator and teacher: " + "; ".join(problems))
    return gen, teacher


register_generator("stylegan", is_stylegan_generator, StyleGANGeneratorAdapter, priority=100,
                   origin="gan_refine")
register_generator("generic", lambda obj: isinstance(obj, nn.Module) and hasattr(obj, "z_dim"),
                   GenericGeneratorAdapter, priority=-1000, origin="gan_refine")
register_teacher("edm", is_edm_denoiser, EDMTeacherAdapter, priority=100, origin="gan_refine")
register_teacher("generic", lambda obj: False, GenericTeacherAdapter, priority=-1000,
                 origin="gan_refine")
