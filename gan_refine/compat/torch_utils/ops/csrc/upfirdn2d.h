// Interface between the upfirdn2d / filtered_lrelu bindings and their kernels.
#pragma once
#include <cstdint>

struct UpfirdnParams {
    const void* x;        // input [N, C, in_h, in_w], any strides
    void* y;              // output [N, C, out_h, out_w], contiguous
    const float* f;       // 2-D filter [fh][fw] (sep == 0) or 1-D taps along y (sep == 1)
    const float* fx;      // 1-D taps along x (sep == 1)
    const void* b;        // per-channel bias added to x before filtering, or nullptr
    uint32_t* mask_sign;  // filtered_lrelu: bit per output element, set where the pre-activation > 0
    uint32_t* mask_clamp; // filtered_lrelu: bit per output element, set where the clamp is active
    int64_t sx_n, sx_c, sx_h, sx_w;  // input strides in elements
    int n, c, in_h, in_w, out_h, out_w;
    int upx, upy, downx, downy, padx0, pady0, fw, fh;
    int sep;              // 1: weight(i, j) = f[i] * fx[j]
    int flip;             // 1: correlate (use the taps as given); 0: true convolution
    int epi;              // epilogue, see Epilogue in upfirdn2d_math.h
    int dtype;
    float gain;           // multiplies the filtered value
    float act_gain, slope, clamp;  // lrelu epilogues; clamp < 0: none
};

// Each returns a cudaError_t value (0 on success); `stream` is a cudaStream_t.
int upfirdn2d_launch(const UpfirdnParams& p, void* stream);        // epi == EPI_NONE only
int filtered_lrelu_launch(const UpfirdnParams& p, void* stream);   // EPI_LRELU / EPI_MASK_GRAD
