// Torch binding for filtered_lrelu's fused passes. The down-filter of the forward pass and the
// up-filter adjoint of the backward pass run through the upfirdn2d plugin (see _cuda.py).
#include "upfirdn2d_bind_common.h"

static at::Tensor mask_words(int64_t elements, const at::Tensor& like) {
    return at::empty({(elements + 31) / 32}, like.options().dtype(at::kInt));
}

// z = clamp(lrelu(upfirdn2d(x + b, f, up, pad, gain), slope) * act_gain); returns z and its
// sign and clamp bit planes (one bit per element of z, in z's contiguous order).
std::vector<at::Tensor> up_lrelu(at::Tensor x, std::optional<at::Tensor> bias, at::Tensor f, int64_t up, int64_t padx0,
                                    int64_t padx1, int64_t pady0, int64_t pady1, bool flip, double gain,
                                    double act_gain, double slope, double clamp) {
    const c10::cuda::OptionalCUDAGuard guard(x.device());
    int out_h = 0, out_w = 0;
    UpfirdnParams p = gr::make_upfirdn_params(x, f, (int)up, (int)up, 1, 1, (int)padx0, (int)padx1, (int)pady0,
                                              (int)pady1, flip, gain, out_h, out_w);
    at::Tensor b;
    if (bias.has_value() && bias->numel() > 0) {
        b = *bias;
        TORCH_CHECK(b.dim() == 1 && b.size(0) == x.size(1) && b.device() == x.device(),
                    "filtered_lrelu: b must be 1-D of length x.shape[1] on x's device");
        b = b.to(x.scalar_type()).contiguous();
        p.b = b.data_ptr();
    }
    at::Tensor z = at::empty({x.size(0), x.size(1), out_h, out_w}, x.options());
    at::Tensor sign = mask_words(z.numel(), x), clamped = mask_words(z.numel(), x);
    p.y = z.data_ptr();
    p.mask_sign = (uint32_t*)sign.data_ptr<int32_t>();
    p.mask_clamp = (uint32_t*)clamped.data_ptr<int32_t>();
    p.epi = 1;
    p.act_gain = (float)act_gain;
    p.slope = (float)slope;
    p.clamp = (float)clamp;
    gr::check_launch(filtered_lrelu_launch(p, gr::current_stream()), "filtered_lrelu up_lrelu");
    return {z, sign, clamped};
}

// Gradient w.r.t. the pre-activation: upfirdn2d(g, f, ...) (the adjoint of the down pass, which
// must land exactly on z's grid) times act_gain * (sign ? 1 : slope), zero where clamped.
at::Tensor masked_grad(at::Tensor g, at::Tensor f, int64_t up, int64_t down, int64_t padx0, int64_t padx1,
                          int64_t pady0, int64_t pady1, bool flip, double gain, double act_gain, double slope,
                          at::Tensor sign, at::Tensor clamped, int64_t z_h, int64_t z_w) {
    const c10::cuda::OptionalCUDAGuard guard(g.device());
    int out_h = 0, out_w = 0;
    UpfirdnParams p = gr::make_upfirdn_params(g, f, (int)up, (int)up, (int)down, (int)down, (int)padx0, (int)padx1,
                                              (int)pady0, (int)pady1, flip, gain, out_h, out_w);
    TORCH_CHECK(out_h == z_h && out_w == z_w, "filtered_lrelu masked_grad: adjoint lands on ", out_h, "x", out_w,
                ", expected ", z_h, "x", z_w);
    at::Tensor dz = at::empty({g.size(0), g.size(1), out_h, out_w}, g.options());
    const int64_t words = (dz.numel() + 31) / 32;
    TORCH_CHECK(sign.numel() == words && clamped.numel() == words && sign.scalar_type() == at::kInt &&
                clamped.scalar_type() == at::kInt && sign.is_contiguous() && clamped.is_contiguous(),
                "filtered_lrelu masked_grad: mask does not match z");
    p.y = dz.data_ptr();
    p.mask_sign = (uint32_t*)sign.data_ptr<int32_t>();
    p.mask_clamp = (uint32_t*)clamped.data_ptr<int32_t>();
    p.epi = 2;
    p.act_gain = (float)act_gain;
    p.slope = (float)slope;
    gr::check_launch(filtered_lrelu_launch(p, gr::current_stream()), "filtered_lrelu masked_grad");
    return dz;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.def("up_lrelu", &up_lrelu, "bias + upfirdn2d + lrelu/gain/clamp, with a 2-bit mask");
    m.def("masked_grad", &masked_grad, "adjoint down-filter times the masked lrelu slope");
}
