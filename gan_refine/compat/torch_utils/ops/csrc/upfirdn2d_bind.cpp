// Torch binding for upfirdn2d with a 2-D filter (the Python side runs separable filters as
// two 1-D passes, [1, taps] then [taps, 1]).
#include "upfirdn2d_bind_common.h"

at::Tensor upfirdn2d(at::Tensor x, at::Tensor f, int64_t upx, int64_t upy, int64_t downx, int64_t downy,
                        int64_t padx0, int64_t padx1, int64_t pady0, int64_t pady1, bool flip, double gain) {
    const c10::cuda::OptionalCUDAGuard guard(x.device());
    TORCH_CHECK(f.dim() == 2, "upfirdn2d: this entry point takes a 2-D filter");
    int out_h = 0, out_w = 0;
    UpfirdnParams p = gr::make_upfirdn_params(x, f, (int)upx, (int)upy, (int)downx, (int)downy, (int)padx0,
                                              (int)padx1, (int)pady0, (int)pady1, flip, gain, out_h, out_w);
    at::Tensor y = at::empty({x.size(0), x.size(1), out_h, out_w}, x.options());
    p.y = y.data_ptr();
    p.epi = 0;
    gr::check_launch(upfirdn2d_launch(p, gr::current_stream()), "upfirdn2d");
    return y;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.def("upfirdn2d", &upfirdn2d, "zero-insert upsample, pad, FIR filter, downsample");
}
