// filtered_lrelu's fused passes: bias + up-filter + lrelu/gain/clamp writing a 2-bit mask, and
// its backward counterpart (adjoint of the down-filter, times the masked lrelu slope).
#include "upfirdn2d_kernel.cuh"

using namespace gr;

template <typename T, int EPI>
static int launch_epi(const UpfirdnParams& p, cudaStream_t s) {
    // StyleGAN3: separable 12-tap filters, up 2 (forward) or the adjoint of down 2 (backward).
    if (upfirdn_is(p, 2, 2, 1, 1, 12, 12, 1)) return upfirdn_run<T, 2, 2, 1, 1, 12, 12, 1, EPI>(p, s);
    if (p.sep) return upfirdn_run<T, 0, 0, 0, 0, 0, 0, 1, EPI>(p, s);
    return upfirdn_run<T, 0, 0, 0, 0, 0, 0, 0, EPI>(p, s);
}

template <typename T>
static int launch_typed(const UpfirdnParams& p, cudaStream_t s) {
    if (p.epi == EPI_LRELU) return launch_epi<T, EPI_LRELU>(p, s);
    if (p.epi == EPI_MASK_GRAD) return launch_epi<T, EPI_MASK_GRAD>(p, s);
    return (int)cudaErrorInvalidValue;
}

int filtered_lrelu_launch(const UpfirdnParams& p, void* stream) {
    cudaStream_t s = (cudaStream_t)stream;
    switch (p.dtype) {
    case DT_HALF: return launch_typed<__half>(p, s);
    case DT_FLOAT: return launch_typed<float>(p, s);
    case DT_DOUBLE: return launch_typed<double>(p, s);
    }
    return (int)cudaErrorInvalidValue;
}
