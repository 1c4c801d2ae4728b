// Helpers shared by the kernels. Plain C++ plus CUDA qualifiers: no torch headers here, so
// the .cu files compile in seconds, and the math headers also build with a host compiler for
// the CPU emulation test (tests/test_cuda_ops.py).
#pragma once
#include <cstdint>
#include <cmath>

#if defined(__CUDACC__)
#include <cuda_fp16.h>
#define GR_HD __host__ __device__ __forceinline__
#else
#define GR_HD inline
#endif

namespace gr {

// Accumulator type: fp16 and fp32 compute in float, fp64 in double.
template <typename T> struct Acc { typedef float type; };
template <> struct Acc<double> { typedef double type; };

GR_HD float to_acc(float v) { return v; }
GR_HD double to_acc(double v) { return v; }
template <typename T> GR_HD T from_acc(typename Acc<T>::type v) { return (T)v; }
#if defined(__CUDACC__)
__device__ __forceinline__ float to_acc(__half v) { return __half2float(v); }
template <> __device__ __forceinline__ __half from_acc<__half>(float v) { return __float2half_rn(v); }
#endif

// Overloads so templated math picks the float or double routine without std:: in device code.
GR_HD float m_exp(float v) { return expf(v); }
GR_HD double m_exp(double v) { return exp(v); }
GR_HD float m_expm1(float v) { return expm1f(v); }
GR_HD double m_expm1(double v) { return expm1(v); }
GR_HD float m_log1p(float v) { return log1pf(v); }
GR_HD double m_log1p(double v) { return log1p(v); }
GR_HD float m_tanh(float v) { return tanhf(v); }
GR_HD double m_tanh(double v) { return tanh(v); }
GR_HD float m_abs(float v) { return fabsf(v); }
GR_HD double m_abs(double v) { return fabs(v); }

// Floor modulo for a possibly negative numerator and a positive divisor.
GR_HD int pmod(int a, int m) { int r = a % m; return r < 0 ? r + m : r; }

// dtype codes shared between bindings and launchers.
enum DType { DT_HALF = 0, DT_FLOAT = 1, DT_DOUBLE = 2 };

}  // namespace gr
