# Top-level `dnnlib` name used by network pickles; see gan_refine/compat/__init__.py.
from . import util
from .util import EasyDict, make_cache_dir_path
