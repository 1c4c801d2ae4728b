// Shared argument checking for the upfirdn2d and filtered_lrelu bindings (host only).
#pragma once
#include "gr_bind_common.h"
#include "upfirdn2d.h"

namespace gr {

// Fills everything but the output pointers and epilogue fields; returns the output size.
inline UpfirdnParams make_upfirdn_params(const at::Tensor& x, const at::Tensor& f, int upx, int upy, int downx,
                                         int downy, int padx0, int padx1, int pady0, int pady1, bool flip, double gain,
                                         int& out_h, int& out_w) {
    TORCH_CHECK(x.is_cuda() && x.dim() == 4, "upfirdn2d: x must be a 4-D CUDA tensor");
    TORCH_CHECK(f.is_cuda() && f.device() == x.device(), "upfirdn2d: filter must be on x's device");
    TORCH_CHECK(f.scalar_type() == at::kFloat && f.is_contiguous(), "upfirdn2d: filter must be contiguous float32");
    TORCH_CHECK(f.dim() == 1 || f.dim() == 2, "upfirdn2d: filter must be 1-D (separable) or 2-D");
    TORCH_CHECK(upx >= 1 && upy >= 1 && downx >= 1 && downy >= 1, "upfirdn2d: up/down factors must be >= 1");
    TORCH_CHECK(x.size(0) * x.size(1) < ((int64_t)1 << 31) && x.size(2) < (1 << 30) && x.size(3) < (1 << 30),
                "upfirdn2d: input too large");
    UpfirdnParams p = {};
    p.x = x.data_ptr();
    p.f = f.data_ptr<float>();
    p.sep = f.dim() == 1 ? 1 : 0;
    p.fh = (int)f.size(0);
    p.fw = (int)f.size(f.dim() - 1);
    p.fx = p.sep ? p.f : nullptr;
    p.sx_n = x.stride(0); p.sx_c = x.stride(1); p.sx_h = x.stride(2); p.sx_w = x.stride(3);
    p.n = (int)x.size(0); p.c = (int)x.size(1); p.in_h = (int)x.size(2); p.in_w = (int)x.size(3);
    p.upx = upx; p.upy = upy; p.downx = downx; p.downy = downy;
    p.padx0 = padx0; p.pady0 = pady0;
    p.flip = flip ? 1 : 0;
    p.gain = (float)gain;
    p.dtype = dtype_code(x);
    p.clamp = -1.f;
    // Length of the padded, zero-inserted signal minus (taps - 1): the number of filter
    // positions before keeping every down-th one.
    const int64_t lw = (int64_t)p.in_w * upx + padx0 + padx1 - p.fw + 1;
    const int64_t lh = (int64_t)p.in_h * upy + pady0 + pady1 - p.fh + 1;
    TORCH_CHECK(lw >= 1 && lh >= 1, "upfirdn2d: padding/cropping leaves no output pixels");
    out_w = (int)((lw - 1) / downx + 1);
    out_h = (int)((lh - 1) / downy + 1);
    p.out_h = out_h;
    p.out_w = out_w;
    return p;
}

}  // namespace gr
