// The one upfirdn2d kernel template, instantiated by upfirdn2d_kernel.cu (plain filtering) and
// filtered_lrelu_kernel.cu (fused bias + up-filter + lrelu, and the masked backward).
//
// One thread per output pixel, flat over [N, C, out_h, out_w] so that small StyleGAN layers
// (4x4 at 512 channels) keep every lane busy; neighbouring lanes read neighbouring inputs,
// which the L1 cache turns into reuse across the filter footprint.
#pragma once
#include <cuda_runtime.h>
#include "upfirdn2d.h"
#include "upfirdn2d_math.h"

namespace gr {

template <typename T, int UPX, int UPY, int DOWNX, int DOWNY, int FW, int FH, int SEP, int EPI>
__global__ void upfirdn_kernel(UpfirdnParams p) {
    typedef typename Acc<T>::type A;
    const T* x = (const T*)p.x;
    const T* b = (const T*)p.b;
    T* y = (T*)p.y;
    const int64_t total = (int64_t)p.n * p.c * p.out_h * p.out_w;
    const bool small = total < ((int64_t)1 << 31) - (int64_t)gridDim.x * blockDim.x;
    const int lane = threadIdx.x & 31;
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    // The loop bound depends on e - lane, which is the same for the whole warp (block size and
    // stride are multiples of 32): every lane takes part in each ballot below.
    for (int64_t e = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; e - lane < total; e += stride) {
        bool sign = false, clamped = false;
        if (e < total) {
            int ox, oy, ni, ci;
            if (small) {
                unsigned t = (unsigned)e;
                ox = (int)(t % (unsigned)p.out_w); t /= (unsigned)p.out_w;
                oy = (int)(t % (unsigned)p.out_h); t /= (unsigned)p.out_h;
                ci = (int)(t % (unsigned)p.c); ni = (int)(t / (unsigned)p.c);
            } else {
                int64_t t = e;
                ox = (int)(t % p.out_w); t /= p.out_w;
                oy = (int)(t % p.out_h); t /= p.out_h;
                ci = (int)(t % p.c); ni = (int)(t / p.c);
            }
            const T* xp = x + ni * p.sx_n + ci * p.sx_c;
            const A bias = b ? to_acc(b[ci]) : (A)0;
            A v = upfirdn_gather<T, UPX, UPY, DOWNX, DOWNY, FW, FH, SEP>(p, xp, bias, oy, ox) * (A)p.gain;
            if (EPI == EPI_MASK_GRAD) {
                const unsigned bit = 1u << (unsigned)(e & 31);
                sign = (p.mask_sign[e >> 5] & bit) != 0;
                clamped = (p.mask_clamp[e >> 5] & bit) != 0;
            }
            if (EPI != EPI_NONE) v = upfirdn_epilogue<A>(EPI, v, p, sign, clamped);
            y[e] = from_acc<T>(v);
        }
        if (EPI == EPI_LRELU) {
            const unsigned s = __ballot_sync(0xffffffffu, sign);
            const unsigned c = __ballot_sync(0xffffffffu, clamped);
            if (lane == 0) {
                p.mask_sign[e >> 5] = s;
                p.mask_clamp[e >> 5] = c;
            }
        }
    }
}

template <typename T, int UPX, int UPY, int DOWNX, int DOWNY, int FW, int FH, int SEP, int EPI>
static int upfirdn_run(const UpfirdnParams& p, cudaStream_t stream) {
    const int64_t total = (int64_t)p.n * p.c * p.out_h * p.out_w;
    if (total == 0) return 0;
    const int threads = 256;
    int64_t blocks = (total + threads - 1) / threads;
    if (blocks > (1 << 20)) blocks = 1 << 20;
    upfirdn_kernel<T, UPX, UPY, DOWNX, DOWNY, FW, FH, SEP, EPI><<<(unsigned)blocks, threads, 0, stream>>>(p);
    return (int)cudaGetLastError();
}

// Whether p matches a compile-time specialisation (0 entries match anything).
inline bool upfirdn_is(const UpfirdnParams& p, int upx, int upy, int downx, int downy, int fw, int fh, int sep) {
    return p.upx == upx && p.upy == upy && p.downx == downx && p.downy == downy && p.fw == fw && p.fh == fh &&
           p.sep == sep;
}

}  // namespace gr
