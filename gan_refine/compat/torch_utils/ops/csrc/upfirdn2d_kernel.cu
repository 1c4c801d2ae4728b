// Plain upfirdn2d launches: fast paths for the shapes StyleGAN uses, a general fallback.
#include "upfirdn2d_kernel.cuh"

using namespace gr;

template <typename T>
static int launch_typed(const UpfirdnParams& p, cudaStream_t s) {
    // StyleGAN2: 4x4 filters (setup_filter turns short 1-D filters into 2-D outer products),
    // after a transposed convolution (up 1), in upsample2d (up 2) and downsample2d (down 2).
    if (upfirdn_is(p, 1, 1, 1, 1, 4, 4, 0)) return upfirdn_run_plain<T, 1, 1, 1, 1, 4, 4>(p, s);
    if (upfirdn_is(p, 2, 2, 1, 1, 4, 4, 0)) return upfirdn_run_plain<T, 2, 2, 1, 1, 4, 4>(p, s);
    if (upfirdn_is(p, 1, 1, 2, 2, 4, 4, 0)) return upfirdn_run_plain<T, 1, 1, 2, 2, 4, 4>(p, s);
    // StyleGAN3: separable 12-tap filters run as one pass per axis (see _cuda.py).
    if (upfirdn_is(p, 1, 1, 2, 1, 12, 1, 0)) return upfirdn_run_plain<T, 1, 1, 2, 1, 12, 1>(p, s);
    if (upfirdn_is(p, 1, 1, 1, 2, 1, 12, 0)) return upfirdn_run_plain<T, 1, 1, 1, 2, 1, 12>(p, s);
    if (upfirdn_is(p, 2, 1, 1, 1, 12, 1, 0)) return upfirdn_run_plain<T, 2, 1, 1, 1, 12, 1>(p, s);
    if (upfirdn_is(p, 1, 2, 1, 1, 1, 12, 0)) return upfirdn_run_plain<T, 1, 2, 1, 1, 1, 12>(p, s);
    if (p.sep) return upfirdn_run<T, 0, 0, 0, 0, 0, 0, 1, EPI_NONE>(p, s);
    return upfirdn_run<T, 0, 0, 0, 0, 0, 0, 0, EPI_NONE>(p, s);
}

int upfirdn2d_launch(const UpfirdnParams& p, void* stream) {
    if (p.epi != EPI_NONE) return (int)cudaErrorInvalidValue;
    cudaStream_t s = (cudaStream_t)stream;
    switch (p.dtype) {
    case DT_HALF: return launch_typed<__half>(p, s);
    case DT_FLOAT: return launch_typed<float>(p, s);
    case DT_DOUBLE: return launch_typed<double>(p, s);
    }
    return (int)cudaErrorInvalidValue;
}
