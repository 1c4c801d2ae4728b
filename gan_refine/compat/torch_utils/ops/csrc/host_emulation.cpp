// CPU emulation of the kernels' per-element math, for tests/test_cuda_ops.py only (never part
// of a plugin). It runs the same gather / activation / epilogue code as the .cu files, one
// element at a time in the kernels' flat order, including the 2-bit mask layout, so the index
// arithmetic can be checked on machines without a GPU. float64 only.
#include <cstdint>
#include "bias_act_math.h"
#include "upfirdn2d_math.h"

using namespace gr;

template <int UPX, int UPY, int DOWNX, int DOWNY, int FW, int FH, int SEP>
static void run_upfirdn(const UpfirdnParams& p) {
    const double* x = (const double*)p.x;
    const double* b = (const double*)p.b;
    double* y = (double*)p.y;
    const int64_t total = (int64_t)p.n * p.c * p.out_h * p.out_w;
    for (int64_t e = 0; e < total; e++) {
        int64_t t = e;
        const int ox = (int)(t % p.out_w); t /= p.out_w;
        const int oy = (int)(t % p.out_h); t /= p.out_h;
        const int ci = (int)(t % p.c), ni = (int)(t / p.c);
        const double* xp = x + ni * p.sx_n + ci * p.sx_c;
        const double bias = b ? b[ci] : 0.0;
        double v = upfirdn_gather<double, UPX, UPY, DOWNX, DOWNY, FW, FH, SEP>(p, xp, bias, oy, ox) * (double)p.gain;
        bool sign = false, clamped = false;
        const uint32_t bit = 1u << (unsigned)(e & 31);
        if (p.epi == EPI_MASK_GRAD) {
            sign = (p.mask_sign[e >> 5] & bit) != 0;
            clamped = (p.mask_clamp[e >> 5] & bit) != 0;
        }
        if (p.epi != EPI_NONE) v = upfirdn_epilogue<double>(p.epi, v, p, sign, clamped);
        y[e] = v;
        if (p.epi == EPI_LRELU) {
            if ((e & 31) == 0) p.mask_sign[e >> 5] = p.mask_clamp[e >> 5] = 0;
            if (sign) p.mask_sign[e >> 5] |= bit;
            if (clamped) p.mask_clamp[e >> 5] |= bit;
        }
    }
}

// The tiled kernel's algorithm (upfirdn_tile_kernel): blocks in the same flat order, a zero-
// filled input buffer per tile, then the gather on the buffer through tile_params.
template <int UPX, int UPY, int DOWNX, int DOWNY, int FW, int FH, int TW, int TH>
static void run_upfirdn_tiled(const UpfirdnParams& p) {
    constexpr int IW = tile_in_len(TW, UPX, DOWNX, FW), IH = tile_in_len(TH, UPY, DOWNY, FH);
    static double buf[IH * IW];
    const int tiles_x = (p.out_w + TW - 1) / TW, tiles_y = (p.out_h + TH - 1) / TH;
    const int64_t blocks = (int64_t)tiles_x * tiles_y * p.n * p.c;
    for (int64_t blk0 = 0; blk0 < blocks; blk0++) {
        unsigned blk = (unsigned)blk0;
        const int tx = (int)(blk % (unsigned)tiles_x); blk /= (unsigned)tiles_x;
        const int ty = (int)(blk % (unsigned)tiles_y);
        const int plane = (int)(blk / (unsigned)tiles_y);
        const int ni = plane / p.c, ci = plane - ni * p.c;
        const int ox0 = tx * TW, oy0 = ty * TH;
        const int iy0 = tile_in0(oy0, UPY, DOWNY, p.pady0), ix0 = tile_in0(ox0, UPX, DOWNX, p.padx0);
        const double* xp = (const double*)p.x + ni * p.sx_n + ci * p.sx_c;
        for (int k = 0; k < IH * IW; k++) {
            const int r = k / IW, c = k - r * IW;
            const int iy = iy0 + r, ix = ix0 + c;
            buf[k] = (iy >= 0 && iy < p.in_h && ix >= 0 && ix < p.in_w) ? xp[iy * p.sx_h + ix * p.sx_w] : 0.0;
        }
        const UpfirdnParams q = tile_params(p, UPX, UPY, DOWNX, DOWNY, iy0, ix0, IH, IW, oy0, ox0, p.f);
        double* y = (double*)p.y + (int64_t)plane * p.out_h * p.out_w;
        for (int k = 0; k < TH * TW; k++) {
            const int ly = k / TW, lx = k - ly * TW;
            const int oy = oy0 + ly, ox = ox0 + lx;
            if (oy < p.out_h && ox < p.out_w)
                y[oy * p.out_w + ox] = upfirdn_gather<double, UPX, UPY, DOWNX, DOWNY, FW, FH, 0>(q, buf, 0.0, ly, lx) *
                                       (double)p.gain;
        }
    }
}

template <int UPX, int UPY, int DOWNX, int DOWNY, int FW, int FH>
static void run_tiled_sizes(const UpfirdnParams& p, int tile) {
    // The launcher's three tile shapes, plus a tiny one that puts many tile edges in a small test.
    if (tile == 0) run_upfirdn_tiled<UPX, UPY, DOWNX, DOWNY, FW, FH, 3, 2>(p);
    else if (tile == 8) run_upfirdn_tiled<UPX, UPY, DOWNX, DOWNY, FW, FH, 8, 8>(p);
    else if (tile == 16) run_upfirdn_tiled<UPX, UPY, DOWNX, DOWNY, FW, FH, 16, 16>(p);
    else run_upfirdn_tiled<UPX, UPY, DOWNX, DOWNY, FW, FH, 32, 16>(p);
}

static bool is(const UpfirdnParams& p, int upx, int upy, int downx, int downy, int fw, int fh, int sep) {
    return p.upx == upx && p.upy == upy && p.downx == downx && p.downy == downy && p.fw == fw && p.fh == fh &&
           p.sep == sep;
}

template <int VEC>
static void bias_act_packs(const double* x, const double* b, const double* g1, const double* g2, double* y,
                           int64_t n, int64_t bias_stride, int bias_len, int mode, int act, double alpha, double gain,
                           double clamp) {
    // Same order of work as bias_act_vec_kernel: whole packs, then the n % VEC tail one by one.
    const uint32_t npack = (uint32_t)(n / VEC), bs = (uint32_t)bias_stride, bl = (uint32_t)bias_len;
    for (uint32_t j = 0; j < npack; j++) {
        const uint32_t i = j * VEC;
        bias_act_pack<double, VEC, 0, -1>(x + i, g1 ? g1 + i : nullptr, g2 ? g2 + i : nullptr, y + i, b, i, bs, bl,
                                          act, mode, alpha, gain, clamp);
    }
    for (uint32_t i = npack * VEC; i < (uint32_t)n; i++)
        bias_act_pack<double, 1, 0, -1>(x + i, g1 ? g1 + i : nullptr, g2 ? g2 + i : nullptr, y + i, b, i, bs, bl, act,
                                        mode, alpha, gain, clamp);
}

extern "C" {

// vec = 0: the general kernel's per-element loop; 2, 4 or 8: the vectorised kernel's packs.
int gr_emu_bias_act(const double* x, const double* b, const double* g1, const double* g2, double* y, int64_t n,
                    int64_t bias_stride, int bias_len, int mode, int act, double alpha, double gain, double clamp,
                    int vec) {
    if (vec == 2) { bias_act_packs<2>(x, b, g1, g2, y, n, bias_stride, bias_len, mode, act, alpha, gain, clamp); return 0; }
    if (vec == 4) { bias_act_packs<4>(x, b, g1, g2, y, n, bias_stride, bias_len, mode, act, alpha, gain, clamp); return 0; }
    if (vec == 8) { bias_act_packs<8>(x, b, g1, g2, y, n, bias_stride, bias_len, mode, act, alpha, gain, clamp); return 0; }
    for (int64_t i = 0; i < n; i++) {
        double v = x[i];
        if (b) v += b[(i / bias_stride) % bias_len];
        y[i] = bias_act_elem<double>(mode, act, v, g1 ? g1[i] : 0.0, g2 ? g2[i] : 0.0, alpha, gain, clamp);
    }
    return 0;
}

// iv: n, c, in_h, in_w, out_h, out_w, upx, upy, downx, downy, padx0, pady0, fw, fh, sep, flip, epi, specialise,
//     tile
// fv: gain, act_gain, slope, clamp
int gr_emu_upfirdn(const double* x, double* y, const float* f, const double* b, uint32_t* mask_sign,
                   uint32_t* mask_clamp, const int64_t* strides, const int* iv, const float* fv) {
    UpfirdnParams p = {};
    p.x = x; p.y = y; p.f = f; p.b = b; p.mask_sign = mask_sign; p.mask_clamp = mask_clamp;
    p.sx_n = strides[0]; p.sx_c = strides[1]; p.sx_h = strides[2]; p.sx_w = strides[3];
    p.n = iv[0]; p.c = iv[1]; p.in_h = iv[2]; p.in_w = iv[3]; p.out_h = iv[4]; p.out_w = iv[5];
    p.upx = iv[6]; p.upy = iv[7]; p.downx = iv[8]; p.downy = iv[9]; p.padx0 = iv[10]; p.pady0 = iv[11];
    p.fw = iv[12]; p.fh = iv[13]; p.sep = iv[14]; p.flip = iv[15]; p.epi = iv[16];
    p.fx = p.sep ? f : nullptr;
    p.gain = fv[0]; p.act_gain = fv[1]; p.slope = fv[2]; p.clamp = fv[3];
    // Same specialisations as the launchers, so their compile-time paths are exercised too.
    // iv[17] = 2: the tiled kernel (plain filtering, 2-D filter) with tile size iv[18].
    const bool spec = iv[17] != 0;
    if (iv[17] == 2) {
        const int t = iv[18];
        if (p.epi != EPI_NONE || p.b || p.sep) return -1;
        if (is(p, 1, 1, 1, 1, 4, 4, 0)) run_tiled_sizes<1, 1, 1, 1, 4, 4>(p, t);
        else if (is(p, 2, 2, 1, 1, 4, 4, 0)) run_tiled_sizes<2, 2, 1, 1, 4, 4>(p, t);
        else if (is(p, 1, 1, 2, 2, 4, 4, 0)) run_tiled_sizes<1, 1, 2, 2, 4, 4>(p, t);
        else if (is(p, 1, 1, 2, 1, 12, 1, 0)) run_tiled_sizes<1, 1, 2, 1, 12, 1>(p, t);
        else if (is(p, 1, 1, 1, 2, 1, 12, 0)) run_tiled_sizes<1, 1, 1, 2, 1, 12>(p, t);
        else if (is(p, 2, 1, 1, 1, 12, 1, 0)) run_tiled_sizes<2, 1, 1, 1, 12, 1>(p, t);
        else if (is(p, 1, 2, 1, 1, 1, 12, 0)) run_tiled_sizes<1, 2, 1, 1, 1, 12>(p, t);
        else return -1;
        return 0;
    }
    if (spec && is(p, 1, 1, 1, 1, 4, 4, 0)) run_upfirdn<1, 1, 1, 1, 4, 4, 0>(p);
    else if (spec && is(p, 2, 2, 1, 1, 4, 4, 0)) run_upfirdn<2, 2, 1, 1, 4, 4, 0>(p);
    else if (spec && is(p, 1, 1, 2, 2, 4, 4, 0)) run_upfirdn<1, 1, 2, 2, 4, 4, 0>(p);
    else if (spec && is(p, 1, 1, 2, 1, 12, 1, 0)) run_upfirdn<1, 1, 2, 1, 12, 1, 0>(p);
    else if (spec && is(p, 1, 1, 1, 2, 1, 12, 0)) run_upfirdn<1, 1, 1, 2, 1, 12, 0>(p);
    else if (spec && is(p, 2, 1, 1, 1, 12, 1, 0)) run_upfirdn<2, 1, 1, 1, 12, 1, 0>(p);
    else if (spec && is(p, 1, 2, 1, 1, 1, 12, 0)) run_upfirdn<1, 2, 1, 1, 1, 12, 0>(p);
    else if (spec && is(p, 2, 2, 1, 1, 12, 12, 1)) run_upfirdn<2, 2, 1, 1, 12, 12, 1>(p);
    else if (p.sep) run_upfirdn<0, 0, 0, 0, 0, 0, 1>(p);
    else run_upfirdn<0, 0, 0, 0, 0, 0, 0>(p);
    return 0;
}

}  // extern "C"
