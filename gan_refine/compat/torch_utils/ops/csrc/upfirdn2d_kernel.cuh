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

// Tiled variant for plain filtering (no bias, no epilogue) with a compile-time 2-D filter: a
// block loads the input samples of a TH x TW output tile of one image plane into shared memory
// once (coalesced, zero-filled outside the image), then every thread gathers from there (see
// tile_params in upfirdn2d_math.h). Blocks are flat over [plane, tile row, tile column].
template <typename T, int UPX, int UPY, int DOWNX, int DOWNY, int FW, int FH, int TW, int TH, int THREADS>
__global__ void __launch_bounds__(THREADS) upfirdn_tile_kernel(UpfirdnParams p, int tiles_x, int tiles_y) {
    typedef typename Acc<T>::type A;
    constexpr int IW = tile_in_len(TW, UPX, DOWNX, FW), IH = tile_in_len(TH, UPY, DOWNY, FH);
    __shared__ A buf[IH * IW];
    __shared__ float filt[FH * FW];
    unsigned blk = blockIdx.x;
    const int tx = (int)(blk % (unsigned)tiles_x); blk /= (unsigned)tiles_x;
    const int ty = (int)(blk % (unsigned)tiles_y);
    const int plane = (int)(blk / (unsigned)tiles_y);
    const int ni = plane / p.c, ci = plane - ni * p.c;
    const int ox0 = tx * TW, oy0 = ty * TH;
    const int iy0 = tile_in0(oy0, UPY, DOWNY, p.pady0), ix0 = tile_in0(ox0, UPX, DOWNX, p.padx0);
    const T* xp = (const T*)p.x + ni * p.sx_n + ci * p.sx_c;
    for (int k = threadIdx.x; k < FH * FW; k += THREADS) filt[k] = p.f[k];
    for (int k = threadIdx.x; k < IH * IW; k += THREADS) {
        const int r = k / IW, c = k - r * IW;
        const int iy = iy0 + r, ix = ix0 + c;
        A v = (A)0;
        if (iy >= 0 && iy < p.in_h && ix >= 0 && ix < p.in_w) v = to_acc(xp[iy * p.sx_h + ix * p.sx_w]);
        buf[k] = v;
    }
    __syncthreads();
    const UpfirdnParams q = tile_params(p, UPX, UPY, DOWNX, DOWNY, iy0, ix0, IH, IW, oy0, ox0, filt);
    T* y = (T*)p.y + (int64_t)plane * p.out_h * p.out_w;
    const A gain = (A)p.gain;
#pragma unroll
    for (int k = threadIdx.x; k < TH * TW; k += THREADS) {
        const int ly = k / TW, lx = k - ly * TW;
        const int oy = oy0 + ly, ox = ox0 + lx;
        if (oy < p.out_h && ox < p.out_w) {
            const A v = upfirdn_gather<A, UPX, UPY, DOWNX, DOWNY, FW, FH, 0>(q, buf, (A)0, ly, lx);
            y[oy * p.out_w + ox] = from_acc<T>(v * gain);
        }
    }
}

template <typename T, int UPX, int UPY, int DOWNX, int DOWNY, int FW, int FH, int TW, int TH, int THREADS>
static int upfirdn_tile_launch(const UpfirdnParams& p, cudaStream_t stream) {
    const int tiles_x = (p.out_w + TW - 1) / TW, tiles_y = (p.out_h + TH - 1) / TH;
    const int64_t blocks = (int64_t)tiles_x * tiles_y * p.n * p.c;
    if (blocks == 0) return 0;
    upfirdn_tile_kernel<T, UPX, UPY, DOWNX, DOWNY, FW, FH, TW, TH, THREADS>
        <<<(unsigned)blocks, THREADS, 0, stream>>>(p, tiles_x, tiles_y);
    return (int)cudaGetLastError();
}

// Plain filtering with a compile-time filter: the tiled kernel with a tile that fits the output
// (small StyleGAN layers are 8x8 or 16x16 planes), else the flat one.
template <typename T, int UPX, int UPY, int DOWNX, int DOWNY, int FW, int FH>
static int upfirdn_run_plain(const UpfirdnParams& p, cudaStream_t stream) {
    const int64_t planes = (int64_t)p.n * p.c;
    // The tiled kernel indexes within a plane in 32 bits, and has at most one block per output
    // pixel, so fewer than 2^31 outputs also keeps its 1-D grid in range.
    const bool fits = p.b == nullptr && p.epi == EPI_NONE && planes * p.out_h * p.out_w < ((int64_t)1 << 31) &&
                      p.sx_h * (p.in_h - 1) + p.sx_w * (p.in_w - 1) < ((int64_t)1 << 31);
    if (fits) {
        if (p.out_w <= 8 && p.out_h <= 8)
            return upfirdn_tile_launch<T, UPX, UPY, DOWNX, DOWNY, FW, FH, 8, 8, 64>(p, stream);
        if (p.out_w <= 16 && p.out_h <= 16)
            return upfirdn_tile_launch<T, UPX, UPY, DOWNX, DOWNY, FW, FH, 16, 16, 256>(p, stream);
        return upfirdn_tile_launch<T, UPX, UPY, DOWNX, DOWNY, FW, FH, 32, 16, 256>(p, stream);
    }
    return upfirdn_run<T, UPX, UPY, DOWNX, DOWNY, FW, FH, 0, EPI_NONE>(p, stream);
}

// Whether p matches a compile-time specialisation (0 entries match anything).
inline bool upfirdn_is(const UpfirdnParams& p, int upx, int upy, int downx, int downy, int fw, int fh, int sep) {
    return p.upx == upx && p.upy == upy && p.downx == downx && p.downy == downy && p.fw == fw && p.fh == fh &&
           p.sep == sep;
}

}  // namespace gr
