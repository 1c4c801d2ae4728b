// Interface between bias_act_bind.cpp and bias_act_kernel.cu (no torch, no CUDA types).
#pragma once
#include <cstdint>

struct BiasActParams {
    const void* x;      // input, dense in some dimension order
    const void* b;      // bias of length `bias_len` or nullptr
    const void* g1;     // incoming gradient (modes 1, 2), same strides as x
    const void* g2;     // second incoming gradient (mode 2), same strides as x
    void* y;            // output, same strides as x
    int64_t n;          // number of elements
    int64_t bias_stride;  // memory stride of the bias dimension
    int bias_len;
    int mode, act, dtype;
    double alpha, gain, clamp;  // clamp < 0: none
};

// Returns a cudaError_t value (0 on success); `stream` is a cudaStream_t.
int bias_act_launch(const BiasActParams& p, void* stream);
