// Fused bias + activation + gain + clamp, its gradient and the x-term of its second derivative.
// Elementwise over memory order: the binding guarantees x, g1, g2 and y share one dense layout
// (contiguous or channels_last), so the bias index follows from the bias dimension's stride.
//
// Two kernels: the common case (fewer than 2^31 elements, 16-byte aligned buffers) moves 16
// bytes per load/store and uses 32-bit index math; anything else takes the general kernel.
#include <cuda_runtime.h>
#include "bias_act.h"
#include "bias_act_math.h"

using namespace gr;

template <typename T, int N> struct alignas(16) Pack { T v[N]; };

template <typename T, int ACT, int MODE>
__global__ void __launch_bounds__(256) bias_act_vec_kernel(BiasActParams p) {
    typedef typename Acc<T>::type A;
    constexpr int V = 16 / sizeof(T);
    typedef Pack<T, V> P;
    const T* __restrict__ b = (const T*)p.b;
    const A alpha = (A)p.alpha, gain = (A)p.gain, clamp = (A)p.clamp;
    const uint32_t n = (uint32_t)p.n, npack = n / V;
    const uint32_t bs = (uint32_t)p.bias_stride, bl = (uint32_t)p.bias_len;
    const int mode = MODE >= 0 ? MODE : p.mode;
    const uint32_t step = gridDim.x * blockDim.x;
    for (uint32_t j = blockIdx.x * blockDim.x + threadIdx.x; j < npack; j += step) {
        P xv = ((const P*)p.x)[j], g1v, g2v, yv;
        if (mode >= 1) g1v = ((const P*)p.g1)[j];
        if (mode == 2) g2v = ((const P*)p.g2)[j];
        bias_act_pack<T, V, ACT, MODE>(xv.v, g1v.v, g2v.v, yv.v, b, j * V, bs, bl, p.act, mode, alpha, gain, clamp);
        ((P*)p.y)[j] = yv;
    }
    // The last n % V elements, one per thread of block 0.
    const uint32_t tail = n - npack * V;
    if (blockIdx.x == 0 && threadIdx.x < tail) {
        const uint32_t i = npack * V + threadIdx.x;
        bias_act_pack<T, 1, ACT, MODE>((const T*)p.x + i, mode >= 1 ? (const T*)p.g1 + i : nullptr,
                                       mode == 2 ? (const T*)p.g2 + i : nullptr, (T*)p.y + i, b, i, bs, bl, p.act,
                                       mode, alpha, gain, clamp);
    }
}

template <typename T, typename I>
__global__ void bias_act_kernel(BiasActParams p) {
    typedef typename Acc<T>::type A;
    const T* x = (const T*)p.x;
    const T* b = (const T*)p.b;
    const T* g1 = (const T*)p.g1;
    const T* g2 = (const T*)p.g2;
    T* y = (T*)p.y;
    const A alpha = (A)p.alpha, gain = (A)p.gain, clamp = (A)p.clamp;
    const I n = (I)p.n, bstride = (I)p.bias_stride, blen = (I)p.bias_len;
    const I stride = (I)gridDim.x * blockDim.x;
    for (I i = (I)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        A v = to_acc(x[i]);
        if (b) v += to_acc(b[(i / bstride) % blen]);
        const A a1 = g1 ? to_acc(g1[i]) : (A)0;
        const A a2 = g2 ? to_acc(g2[i]) : (A)0;
        y[i] = from_acc<T>(bias_act_elem<A>(p.mode, p.act, v, a1, a2, alpha, gain, clamp));
    }
}

static bool aligned16(const void* ptr) { return ptr == nullptr || ((uintptr_t)ptr & 15) == 0; }

template <typename T, int ACT, int MODE>
static void launch_vec(const BiasActParams& p, cudaStream_t stream) {
    const int threads = 256;
    const int64_t packs = p.n / (16 / (int64_t)sizeof(T));
    int64_t blocks = (packs + threads - 1) / threads;
    // Several packs per thread on big tensors: about four waves of resident blocks on an H100.
    if (blocks > 4096) blocks = 4096;
    if (blocks < 1) blocks = 1;  // the tail alone
    bias_act_vec_kernel<T, ACT, MODE><<<(unsigned)blocks, threads, 0, stream>>>(p);
}

template <typename T>
static int launch_typed(const BiasActParams& p, cudaStream_t stream) {
    if (p.n == 0) return 0;
    if (p.n < ((int64_t)1 << 31) - 64 && aligned16(p.x) && aligned16(p.y) && aligned16(p.g1) && aligned16(p.g2)) {
        const bool lrelu = p.act == ACT_LRELU;
        if (p.mode == 0) lrelu ? launch_vec<T, ACT_LRELU, 0>(p, stream) : launch_vec<T, 0, 0>(p, stream);
        else if (p.mode == 1) lrelu ? launch_vec<T, ACT_LRELU, 1>(p, stream) : launch_vec<T, 0, 1>(p, stream);
        else launch_vec<T, 0, 2>(p, stream);
        return (int)cudaGetLastError();
    }
    const int threads = 256;
    int64_t blocks = (p.n + threads - 1) / threads;
    if (blocks > (1 << 20)) blocks = 1 << 20;  // grid-stride loop covers the rest
    // 32-bit indexing where it fits: 64-bit division is several times slower on the GPU.
    if (p.n < ((int64_t)1 << 31) - (int64_t)blocks * threads)
        bias_act_kernel<T, int><<<(unsigned)blocks, threads, 0, stream>>>(p);
    else
        bias_act_kernel<T, int64_t><<<(unsigned)blocks, threads, 0, stream>>>(p);
    return (int)cudaGetLastError();
}

int bias_act_launch(const BiasActParams& p, void* stream) {
    cudaStream_t s = (cudaStream_t)stream;
    switch (p.dtype) {
    case DT_HALF: return launch_typed<__half>(p, s);
    case DT_FLOAT: return launch_typed<float>(p, s);
    case DT_DOUBLE: return launch_typed<double>(p, s);
    }
    return (int)cudaErrorInvalidValue;
}
