// Per-output-pixel math of upfirdn2d, shared by the CUDA kernels and the CPU emulation test.
//
// Output pixel o (along one axis) of "zero-insert by up, pad by p0, convolve with f, keep every
// down-th" reads the padded, zero-inserted signal at o*down + k for taps k = 0..taps-1, i.e. the
// zero-inserted sample r = o*down - p0 + k, which is nonzero only when r % up == 0; it then
// holds x[r / up]. Convolution (flip == 0) weights tap k with f[taps-1-k], correlation with f[k].
// Visiting only taps with r % up == 0 skips the inserted zeros, and bounds-checking r / up
// against the input implements zero padding and cropping without materialising either.
#pragma once
#include "gr_common.h"
#include "upfirdn2d.h"

namespace gr {

enum Epilogue {
    EPI_NONE = 0,       // y = gain * filtered
    EPI_LRELU = 1,      // v = gain * filtered; y = clamp(lrelu(v, slope) * act_gain); record mask bits
    EPI_MASK_GRAD = 2,  // y = gain * filtered * act_gain * (sign ? 1 : slope), 0 where clamped
};

template <typename T> GR_HD typename Acc<T>::type load_acc(const T* p) { return to_acc(*p); }

// Filtered value at output pixel (oy, ox) of one image plane starting at `xp`, before gain.
// UPX..FH are compile-time specialisations; 0 means "take it from p at run time".
template <typename T, int UPX, int UPY, int DOWNX, int DOWNY, int FW, int FH, int SEP>
GR_HD typename Acc<T>::type upfirdn_gather(const UpfirdnParams& p, const T* xp, typename Acc<T>::type bias,
                                           int oy, int ox) {
    typedef typename Acc<T>::type A;
    const int upx = UPX ? UPX : p.upx, upy = UPY ? UPY : p.upy;
    const int downx = DOWNX ? DOWNX : p.downx, downy = DOWNY ? DOWNY : p.downy;
    const int fw = FW ? FW : p.fw, fh = FH ? FH : p.fh;
    const int ry = oy * downy - p.pady0;  // zero-inserted coordinate of tap 0
    const int rx = ox * downx - p.padx0;
    const int ky0 = pmod(-ry, upy);       // first tap landing on a real sample
    const int kx0 = pmod(-rx, upx);
    const int nky = (fh + upy - 1) / upy; // upper bound on the real-sample taps
    const int nkx = (fw + upx - 1) / upx;
    const int sep = SEP;
    const bool flip = p.flip != 0;
    A acc = (A)0;
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
    for (int a = 0; a < nky; a++) {
        const int ky = ky0 + a * upy;
        if (ky >= fh) break;
        const int iy = (ry + ky) / upy;   // exact: ry + ky is a multiple of upy
        if (iy < 0 || iy >= p.in_h) continue;
        const int fy = flip ? ky : fh - 1 - ky;
        const T* row = xp + (int64_t)iy * p.sx_h;
        const A wy = sep ? (A)p.f[fy] : (A)1;
        A racc = (A)0;
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
        for (int c = 0; c < nkx; c++) {
            const int kx = kx0 + c * upx;
            if (kx >= fw) break;
            const int ix = (rx + kx) / upx;
            if (ix < 0 || ix >= p.in_w) continue;
            const int fxi = flip ? kx : fw - 1 - kx;
            const A w = sep ? (A)p.fx[fxi] : (A)p.f[fy * fw + fxi];
            racc += w * (load_acc(row + (int64_t)ix * p.sx_w) + bias);
        }
        acc += wy * racc;
    }
    return acc;
}

// ---- Shared-memory tiles ----------------------------------------------------------------
// The tiled kernel computes a block of `tile` consecutive outputs per axis from a buffer holding
// every input sample they read (zeros outside the image, so padding and cropping need no
// checks), then runs upfirdn_gather above on that buffer. Only the buffer's origin and the
// padding change: with in0 = floor((o0*down - pad0) / up), outputs o0 + l read buffer entry
// (l*down - pad0' + k) / up where pad0' = pad0 - o0*down + up*in0, which keeps r % up
// unchanged, so the same taps land on real samples as in the untiled gather.

GR_HD int floor_div(int a, int b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }

// Buffer length along one axis: pad0' lies in (-up, 0], so the last output's last tap reads
// entry ((tile - 1)*down + up - 1 + taps - 1) / up at most.
GR_HD constexpr int tile_in_len(int tile, int up, int down, int taps) {
    return ((tile - 1) * down + up - 1 + taps - 1) / up + 1;
}

GR_HD int tile_in0(int o0, int up, int down, int pad0) { return floor_div(o0 * down - pad0, up); }

// Parameters that make upfirdn_gather read an ih x iw row-major buffer whose entry (0, 0) is
// input sample (iy0, ix0), for outputs counted from (oy0, ox0); `f` is the filter to use.
GR_HD UpfirdnParams tile_params(const UpfirdnParams& p, int upx, int upy, int downx, int downy, int iy0, int ix0,
                                int ih, int iw, int oy0, int ox0, const float* f) {
    UpfirdnParams q = p;
    q.in_h = ih;
    q.in_w = iw;
    q.sx_h = iw;
    q.sx_w = 1;
    q.pady0 = p.pady0 - oy0 * downy + upy * iy0;
    q.padx0 = p.padx0 - ox0 * downx + upx * ix0;
    q.f = f;
    return q;
}

// Applies the epilogue to the gain-scaled value v. For EPI_LRELU, `sign` / `clamped` receive the
// mask bits; for EPI_MASK_GRAD they are the bits recorded by the forward pass.
template <typename A>
GR_HD A upfirdn_epilogue(int epi, A v, const UpfirdnParams& p, bool& sign, bool& clamped) {
    if (epi == EPI_LRELU) {
        sign = v > (A)0;
        A z = (sign ? v : v * (A)p.slope) * (A)p.act_gain;
        clamped = p.clamp >= 0.f && m_abs(z) > (A)p.clamp;
        if (clamped) z = z > (A)0 ? (A)p.clamp : -(A)p.clamp;
        return z;
    }
    if (epi == EPI_MASK_GRAD) {
        if (clamped) return (A)0;
        return v * (A)p.act_gain * (sign ? (A)1 : (A)p.slope);
    }
    return v;
}

}  // namespace gr
