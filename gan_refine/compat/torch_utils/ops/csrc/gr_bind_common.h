// Small helpers for the torch-facing bindings (host only).
#pragma once
// ATen + torch's pybind casters instead of torch/extension.h: the full C++ frontend
// that extension.h pulls in doubles the compile time and is not needed here.
#include <ATen/ATen.h>
#include <torch/csrc/utils/pybind.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_runtime_api.h>
#include "gr_common.h"

namespace gr {

inline int dtype_code(const at::Tensor& t) {
    switch (t.scalar_type()) {
    case at::kHalf: return DT_HALF;
    case at::kFloat: return DT_FLOAT;
    case at::kDouble: return DT_DOUBLE;
    default: TORCH_CHECK(false, "gan_refine CUDA ops support float16, float32 and float64, got ", t.scalar_type());
    }
    return -1;
}

inline void check_launch(int err, const char* what) {
    TORCH_CHECK(err == 0, what, ": CUDA error: ", cudaGetErrorString((cudaError_t)err));
}

inline void* current_stream() { return (void*)c10::cuda::getCurrentCUDAStream().stream(); }

}  // namespace gr
