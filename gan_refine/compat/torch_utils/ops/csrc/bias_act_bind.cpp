// Torch binding for the fused bias_act kernel.
#include "gr_bind_common.h"
#include "bias_act.h"

// The kernel walks memory order, so every tensor must share x's dense layout.
static at::Tensor like_x(const at::Tensor& t, const at::Tensor& x) {
    TORCH_CHECK(t.sizes() == x.sizes(), "bias_act: gradient shape ", t.sizes(), " != input shape ", x.sizes());
    TORCH_CHECK(t.device() == x.device() && t.scalar_type() == x.scalar_type(), "bias_act: gradient device/dtype mismatch");
    if (t.strides() == x.strides()) return t;
    at::Tensor u = at::empty_like(x);
    u.copy_(t);
    return u;
}

// mode 0: forward; 1: dx = g1 * f' * gain; 2: g1 * g2 * f'' * gain (see bias_act_math.h).
// b, g1, g2 are optional (None) so that the Python side allocates nothing per call.
at::Tensor bias_act(at::Tensor x, std::optional<at::Tensor> b_opt, std::optional<at::Tensor> g1_opt,
                    std::optional<at::Tensor> g2_opt, int64_t dim, int64_t mode, int64_t act, double alpha,
                    double gain, double clamp) {
    TORCH_CHECK(x.is_cuda(), "bias_act: x must be a CUDA tensor");
    TORCH_CHECK(dim >= 0 && dim < std::max<int64_t>(x.dim(), 1), "bias_act: dim out of range");
    TORCH_CHECK(mode >= 0 && mode <= 2, "bias_act: bad mode");
    TORCH_CHECK(mode == 0 || g1_opt.has_value(), "bias_act: modes 1 and 2 need g1");
    TORCH_CHECK(mode != 2 || g2_opt.has_value(), "bias_act: mode 2 needs g2");
    const c10::cuda::OptionalCUDAGuard guard(x.device());
    if (!x.is_non_overlapping_and_dense()) x = x.contiguous();
    BiasActParams p = {};
    p.dtype = gr::dtype_code(x);
    at::Tensor b, g1, g2;  // keep converted copies alive until the launch
    p.bias_len = 1;
    p.bias_stride = 1;
    if (b_opt.has_value() && b_opt->numel() > 0) {
        b = *b_opt;
        TORCH_CHECK(b.dim() == 1 && b.size(0) == x.size(dim), "bias_act: b must be 1-D of length x.shape[dim]");
        TORCH_CHECK(b.device() == x.device(), "bias_act: b on a different device");
        b = b.to(x.scalar_type()).contiguous();
        p.b = b.data_ptr();
        p.bias_len = (int)b.size(0);
        // A size-1 dimension may have any stride, even 0; every element then uses b[0].
        p.bias_stride = std::max<int64_t>(x.stride(dim), 1);
    }
    if (mode >= 1) { g1 = like_x(*g1_opt, x); p.g1 = g1.data_ptr(); }
    if (mode == 2) { g2 = like_x(*g2_opt, x); p.g2 = g2.data_ptr(); }
    at::Tensor y = at::empty_like(x);
    TORCH_CHECK(y.strides() == x.strides(), "bias_act: could not allocate output with the input's layout");
    p.x = x.data_ptr();
    p.y = y.data_ptr();
    p.n = x.numel();
    p.mode = (int)mode;
    p.act = (int)act;
    p.alpha = alpha;
    p.gain = gain;
    p.clamp = clamp;
    gr::check_launch(bias_act_launch(p, gr::current_stream()), "bias_act");
    return y;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.def("bias_act", &bias_act, "fused bias + activation + gain + clamp (and derivatives)");
}
