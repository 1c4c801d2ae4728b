"""Just-in-time build of the CUDA plugins behind `torch_utils.ops`, and a record of which path
(CUDA kernel or PyTorch reference) each op took.

`get_plugin()` compiles a plugin with `torch.utils.cpp_extension.load` + ninja. The sources are
copied into `<torch extensions dir>/gan_refine/<plugin>/<content hash>/` and built there, so an
edited source (or another torch / CUDA / architecture) gets a fresh directory and a rebuild,
while an unchanged one reuses the compiled module. A file lock around copy + build makes two
processes that build at once take turns; the second one finds the finished build.

Environment:
    GAN_REFINE_OPS=ref        every op takes its reference path (nothing is built)
    GAN_REFINE_OPS_VERBOSE=1  print the compiler commands while building
    TORCH_EXTENSIONS_DIR      where builds are cached (torch's default: ~/.cache/torch_extensions)
    CUDA_HOME                 toolkit to build with (default: the nvcc on PATH, else torch's guess)
    TORCH_CUDA_ARCH_LIST      target architectures (default: the current GPU's, else 9.0)
"""

import hashlib
import os
import shutil
import threading

import torch

_lock = threading.Lock()
_plugins = {}  # module name -> loaded module
_paths = {}    # op name -> description of the path it took last

OPS = ("bias_act", "upfirdn2d", "filtered_lrelu")


# ----------------------------------------------------------------------------------------------
# Which path each op used.

def record_path(op, path):
    """Remember the path `op` took on its latest call ('cuda', 'ref', 'ref (reason)')."""
    _paths[op] = path


def report():
    """{op: 'cuda' | 'ref' | 'ref (<why>)' | 'unused'} for the latest call of each op."""
    out = {op: "unused" for op in OPS}
    out.update(_paths)
    return out


def forced_ref():
    v = os.environ.get("GAN_REFINE_OPS")  # read per call so that tests and users may toggle it
    return v is not None and v.strip().lower() == "ref"


# ----------------------------------------------------------------------------------------------
# Toolchain discovery.

def _is_toolkit(home):
    return bool(home) and os.path.isfile(os.path.join(home, "bin", "nvcc")) and \
        os.path.isfile(os.path.join(home, "include", "cuda_runtime_api.h"))


def find_cuda_home():
    """The CUDA toolkit to build with, or None. The nvcc on PATH may be a wrapper script outside
    the toolkit (e.g. /usr/local/bin/nvcc), so every candidate must hold nvcc and the headers."""
    from torch.utils import cpp_extension
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")]
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    candidates += [cpp_extension.CUDA_HOME, "/usr/local/cuda"]
    return next((os.path.realpath(c) for c in candidates if _is_toolkit(c)), None)


def default_arch_list():
    """TORCH_CUDA_ARCH_LIST to build for: the user's setting, else the current GPU, else 9.0
    (H100; a compile-only build on a machine without a GPU)."""
    env = os.environ.get("TORCH_CUDA_ARCH_LIST")
    if env:
        return env
    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability()
        return f"{major}.{minor}"
    return "9.0"


def toolchain_problem():
    """A sentence saying why nothing can be built here, or None when a build can be attempted."""
    from torch.utils import cpp_extension
    if torch.version.cuda is None:
        return f"this PyTorch build ({torch.__version__}) has no CUDA support"
    if find_cuda_home() is None:
        return "no CUDA toolkit found (nvcc not on PATH and CUDA_HOME not set)"
    if not cpp_extension.is_ninja_available():
        return "ninja is not installed (pip install ninja)"
    if shutil.which(os.environ.get("CXX", "c++")) is None:
        return "no C++ compiler found (c++ / $CXX)"
    return None


# ----------------------------------------------------------------------------------------------
# Building.

def source_digest(files, extra=()):
    """Hash of the files' names and contents plus anything else that changes the binary."""
    h = hashlib.sha256()
    for path in sorted(files, key=os.path.basename):
        h.update(os.path.basename(path).encode() + b"\0")
        with open(path, "rb") as fh:
            h.update(fh.read())
        h.update(b"\0")
    for item in extra:
        h.update(repr(item).encode() + b"\0")
    return h.hexdigest()[:20]


def build_root():
    from torch.utils import cpp_extension
    root = os.environ.get("TORCH_EXTENSIONS_DIR") or cpp_extension.get_default_build_root()
    return os.path.join(root, "gan_refine")


def build_dir(module_name, sources, headers=(), extra_cuda_cflags=()):
    """Where this exact combination of sources and toolchain is (or will be) built."""
    extra = (torch.__version__, torch.version.cuda, default_arch_list(), tuple(extra_cuda_cflags))
    return os.path.join(build_root(), module_name, source_digest(list(sources) + list(headers), extra))


def _tail(text, lines=40):
    rows = [r for r in str(text).splitlines() if r.strip()]
    return "\n".join(rows[-lines:])


def get_plugin(module_name, sources, headers=(), extra_cuda_cflags=(), verbose=None):
    """Build (or reuse) and import a plugin; raises RuntimeError with the build log's tail.

    sources: absolute paths of the .cpp/.cu files; headers: files they include (hashed and
    copied alongside, not compiled).
    """
    with _lock:
        if module_name in _plugins:
            return _plugins[module_name]
        problem = toolchain_problem()
        if problem:
            raise RuntimeError(f"cannot build CUDA plugin '{module_name}': {problem}")
        if verbose is None:
            verbose = os.environ.get("GAN_REFINE_OPS_VERBOSE", "") not in ("", "0")

        from torch.utils import cpp_extension
        cuda_home = find_cuda_home()
        # torch.utils.cpp_extension guessed CUDA_HOME when it was imported, possibly from a
        # wrapper script; make it and any child process use the toolkit found above.
        if not _is_toolkit(os.environ.get("CUDA_HOME")):
            os.environ["CUDA_HOME"] = cuda_home
        if not _is_toolkit(cpp_extension.CUDA_HOME):
            cpp_extension.CUDA_HOME = cuda_home
        arch_was_set = "TORCH_CUDA_ARCH_LIST" in os.environ
        os.environ["TORCH_CUDA_ARCH_LIST"] = default_arch_list()

        dest = build_dir(module_name, sources, headers, extra_cuda_cflags)
        try:
            module = _build_locked(module_name, sources, headers, extra_cuda_cflags, dest, verbose)
        except Exception as err:
            raise RuntimeError(f"building CUDA plugin '{module_name}' failed (build directory: {dest}; "
                               f"set GAN_REFINE_OPS_VERBOSE=1 for the full log):\n{_tail(err)}") from err
        finally:
            if not arch_was_set:
                os.environ.pop("TORCH_CUDA_ARCH_LIST", None)
        _plugins[module_name] = module
        return module


def _build_locked(module_name, sources, headers, extra_cuda_cflags, dest, verbose):
    from filelock import FileLock  # a torch dependency
    from torch.utils import cpp_extension
    os.makedirs(dest, exist_ok=True)
    with FileLock(dest + ".lock"):
        # Copy atomically so a reader never sees half a file.
        for path in list(sources) + list(headers):
            target = os.path.join(dest, os.path.basename(path))
            if not os.path.isfile(target):
                tmp = f"{target}.tmp{os.getpid()}"
                shutil.copyfile(path, tmp)
                os.replace(tmp, target)
        # torch's own lock file survives a killed build and would make every later build wait
        # forever; we hold the real (kernel-released) lock, so any such file is stale.
        stale = os.path.join(dest, "lock")
        if os.path.exists(stale):
            os.remove(stale)
        return cpp_extension.load(
            name=module_name,
            sources=[os.path.join(dest, os.path.basename(s)) for s in sources],
            build_directory=dest,
            extra_cflags=["-O3"],
            extra_cuda_cflags=["-O3", *extra_cuda_cflags],
            with_cuda=True,
            verbose=verbose,
        )
