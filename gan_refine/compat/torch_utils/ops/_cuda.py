# Seam between the reference ops and the CUDA plugins (owned by the CUDA-ops work).
# Placeholder until the plugins land: every op takes its reference path.


def use_cuda(op, impl, x):
    """True when `op` should run its CUDA kernel for tensor `x` with the caller's `impl`."""
    return False
