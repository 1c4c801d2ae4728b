"""`torch_utils.persistence`: pickles that carry the source code of their classes.

A class decorated with `persistent_class` remembers the full source text of the module it was
defined in. Pickling an instance writes `_reconstruct_persistent_obj(meta)` where `meta` holds
that source, the class name and the instance state; unpickling executes the source (once per
distinct text) in a fresh module and rebuilds the object from it. So a network pickle loads
without the code that trained it -- and loading one runs whatever code it carries: only load
pickles you trust.

This is the format-version-6 layout used by StyleGAN2-ADA, StyleGAN3 and EDM network pickles;
streams written here load with their loaders and vice versa.
"""

import copy
import inspect
import io
import pickle
import sys
import types
import uuid

import dnnlib

_version = 6                    # format version written into every pickle; loads must match
_decorators = set()             # every Decorator class made by persistent_class
_import_hooks = []              # callables meta -> meta, run before reconstruction
_module_to_src_dict = dict()    # module object -> its source text
_src_to_module_dict = dict()    # source text -> the module executed from it


def persistent_class(orig_class):
    """Class decorator: instances pickle together with the source of the defining module.

    The constructor's positional and keyword arguments are recorded (`init_args`,
    `init_kwargs`) so that a network can be rebuilt with the same configuration, unless the
    constructor sets `self._record_init_args = False`.
    """
    if not isinstance(orig_class, type):
        raise TypeError("persistent_class() expects a class")
    if is_persistent(orig_class):
        return orig_class
    if orig_class.__module__ not in sys.modules:
        raise RuntimeError(f"module {orig_class.__module__!r} of class {orig_class.__name__} is not imported")
    orig_module = sys.modules[orig_class.__module__]
    orig_module_src = _module_to_src(orig_module)
    class_name = orig_class.__name__

    class Decorator(orig_class):
        _orig_module_src = orig_module_src
        _orig_class_name = class_name

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            # Attribute names are part of the format: pickles store them in the state. A class
            # may opt out by setting `self._record_init_args = False` in its constructor (EDM's
            # convention); both are then stored as None.
            record = getattr(self, "_record_init_args", True)
            self._init_args = copy.deepcopy(args) if record else None
            self._init_kwargs = copy.deepcopy(kwargs) if record else None
            if class_name not in orig_module.__dict__:
                raise RuntimeError(f"persistent class {class_name} must be defined at the top level of its module")
            _check_pickleable(self.__reduce__())

        @property
        def init_args(self):
            assert self._init_args is not None, "this object was built with _record_init_args = False"
            return copy.deepcopy(self._init_args)

        @property
        def init_kwargs(self):
            assert self._init_kwargs is not None, "this object was built with _record_init_args = False"
            return dnnlib.EasyDict(copy.deepcopy(self._init_kwargs))

        def __reduce__(self):
            fields = list(super().__reduce__())
            fields += [None] * max(3 - len(fields), 0)
            if fields[0] is not _reconstruct_persistent_obj:
                meta = dict(type="class", version=_version, module_src=self._orig_module_src,
                            class_name=self._orig_class_name, state=fields[2])
                fields[0] = _reconstruct_persistent_obj
                fields[1] = (meta,)
                fields[2] = None
            return tuple(fields)

    Decorator.__name__ = class_name
    Decorator.__qualname__ = getattr(orig_class, "__qualname__", class_name)
    Decorator.__module__ = orig_class.__module__
    Decorator.__doc__ = orig_class.__doc__
    _decorators.add(Decorator)
    return Decorator


def is_persistent(obj):
    """True for a persistent class or an instance of one."""
    try:
        if obj in _decorators:
            return True
    except TypeError:
        pass  # unhashable instances
    return type(obj) in _decorators


def import_hook(hook):
    """Register `hook(meta) -> meta`, run on every persistent object before it is rebuilt.

    Hooks may patch `meta.module_src` (e.g. to fix an import an old pickle relies on) or
    `meta.state`; they must return the (possibly modified) meta.
    """
    if not callable(hook):
        raise TypeError("import_hook() expects a callable")
    _import_hooks.append(hook)


def _reconstruct_persistent_obj(meta):
    """Rebuild a persistent object from the `meta` dict stored in a pickle."""
    meta = dnnlib.EasyDict(meta)
    meta.state = dnnlib.EasyDict(meta.state)
    for hook in _import_hooks:
        meta = hook(meta)
        if meta is None:
            raise RuntimeError("a persistence import hook returned None; hooks must return meta")
    if meta.version != _version:
        raise RuntimeError(f"persistent object has format version {meta.version}; this loader reads version {_version}")
    if meta.type != "class":
        raise RuntimeError(f"unknown persistent object type {meta.type!r}")
    module = _src_to_module(meta.module_src)
    if meta.class_name not in module.__dict__:
        raise RuntimeError(f"class {meta.class_name!r} is not defined by the source stored in the pickle")
    decorator_class = persistent_class(module.__dict__[meta.class_name])
    obj = decorator_class.__new__(decorator_class)
    setstate = getattr(obj, "__setstate__", None)
    if callable(setstate):
        setstate(meta.state)  # nn.Module's fills hook dicts that older pickles lack
    else:
        obj.__dict__.update(meta.state)
    return obj


# Pickles name this function by its upstream location, however this module was imported.
_reconstruct_persistent_obj.__module__ = "torch_utils.persistence"


def _module_to_src(module):
    src = _module_to_src_dict.get(module, None)
    if src is None:
        try:
            src = inspect.getsource(module)
        except (OSError, TypeError) as err:
            raise RuntimeError(f"cannot read the source of module {module.__name__!r} "
                               "(persistent classes must live in a .py file)") from err
        _module_to_src_dict[module] = src
        _src_to_module_dict[src] = module
    return src


def _src_to_module(src):
    module = _src_to_module_dict.get(src, None)
    if module is None:
        module_name = "_imported_module_" + uuid.uuid4().hex
        module = types.ModuleType(module_name)
        # Registered before exec: decorators inside the source look their module up by name.
        sys.modules[module_name] = module
        _module_to_src_dict[module] = src
        _src_to_module_dict[src] = module
        exec(src, module.__dict__)  # noqa: S102 -- this is what loading a network pickle means
    return module


def _check_pickleable(obj):
    """Raise early if constructor arguments could not be pickled later.

    Tensors, arrays and persistent objects are skipped (known to pickle, and expensive to copy).
    """
    def walk(value):
        if isinstance(value, (list, tuple, set)):
            return [walk(x) for x in value]
        if isinstance(value, dict):
            return [[walk(k), walk(v)] for k, v in value.items()]
        if isinstance(value, (str, int, float, bool, complex, bytes, bytearray, type(None))):
            return None
        if f"{type(value).__module__}.{type(value).__name__}" in (
                "numpy.ndarray", "torch.Tensor", "torch.nn.parameter.Parameter"):
            return None
        if is_persistent(value):
            return None
        return value
    with io.BytesIO() as f:
        pickle.dump(walk(obj), f)
