// Per-element math of bias_act, shared by the CUDA kernel and the CPU emulation test.
#pragma once
#include "gr_common.h"

namespace gr {

// Activation indices; they match activation_funcs[...].cuda_idx in bias_act.py.
enum Act { ACT_LINEAR = 1, ACT_RELU, ACT_LRELU, ACT_TANH, ACT_SIGMOID, ACT_ELU, ACT_SELU, ACT_SOFTPLUS, ACT_SWISH };

// Which quantity a launch computes.
//   BA_FWD:  y  = clamp(f(x + b) * gain)
//   BA_GRAD: dx = dy * f'(x + b) * gain * pass
//   BA_GRAD2: d2 = dy * dy2 * f''(x + b) * gain * pass   (the x-term of the double backward)
// where pass = 0 where the clamp is active, else 1.
enum Mode { BA_FWD = 0, BA_GRAD = 1, BA_GRAD2 = 2 };

// f(v) and its first two derivatives. The derivative conventions at kinks follow PyTorch's own
// autograd (relu'(0) = 0, leaky_relu'(0) = alpha, softplus linear above 20) so the kernel's
// gradients agree with the reference path bit-for-bit in the common cases.
template <typename A>
GR_HD void act_eval(int act, A v, A alpha, A& f, A& d1, A& d2) {
    const A one = (A)1, zero = (A)0;
    switch (act) {
    case ACT_RELU:
        f = v > zero ? v : zero; d1 = v > zero ? one : zero; d2 = zero; break;
    case ACT_LRELU:
        f = v > zero ? v : v * alpha; d1 = v > zero ? one : alpha; d2 = zero; break;
    case ACT_TANH: {
        A t = m_tanh(v); f = t; d1 = one - t * t; d2 = (A)-2 * t * d1; break;
    }
    case ACT_SIGMOID: {
        A s = one / (one + m_exp(-v)); f = s; d1 = s * (one - s); d2 = d1 * (one - (A)2 * s); break;
    }
    case ACT_ELU:
        if (v > zero) { f = v; d1 = one; d2 = zero; }
        else { A e = m_exp(v); f = m_expm1(v); d1 = e; d2 = e; }
        break;
    case ACT_SELU: {
        const A scale = (A)1.0507009873554804934193349852946, a = (A)1.6732632423543772848170429916717;
        if (v > zero) { f = scale * v; d1 = scale; d2 = zero; }
        else { A e = m_exp(v); f = scale * a * m_expm1(v); d1 = scale * a * e; d2 = d1; }
        break;
    }
    case ACT_SOFTPLUS:
        if (v > (A)20) { f = v; d1 = one; d2 = zero; }
        else { A s = one / (one + m_exp(-v)); f = m_log1p(m_exp(v)); d1 = s; d2 = s * (one - s); }
        break;
    case ACT_SWISH: {
        A s = one / (one + m_exp(-v));
        f = v * s; d1 = s * (one + v * (one - s)); d2 = s * (one - s) * ((A)2 + v * (one - (A)2 * s));
        break;
    }
    default:  // ACT_LINEAR
        f = v; d1 = one; d2 = zero; break;
    }
}

// One element. `v` is x + b; `g1`, `g2` are the incoming gradients for BA_GRAD / BA_GRAD2.
// clamp < 0 means no clamping.
template <typename A>
GR_HD A bias_act_elem(int mode, int act, A v, A g1, A g2, A alpha, A gain, A clamp) {
    A f, d1, d2;
    act_eval<A>(act, v, alpha, f, d1, d2);
    const A y = f * gain;
    // PyTorch's clamp passes the gradient where min <= input <= max, so only |y| > clamp blocks it.
    const bool clamped = clamp >= (A)0 && m_abs(y) > clamp;
    if (mode == BA_FWD)
        return clamped ? (y > (A)0 ? clamp : -clamp) : y;
    if (clamped)
        return (A)0;
    if (mode == BA_GRAD)
        return g1 * d1 * gain;
    return g1 * g2 * d2 * gain;
}

// VEC consecutive elements (in memory order) starting at flat index i0: the vectorised kernel's
// unit of work. The bias index (i / bias_stride) % bias_len costs one 32-bit division per pack
// and is then stepped element by element, which also covers packs that straddle a channel
// boundary (channels_last, or a bias stride that VEC does not divide). ACT and MODE fold the
// activation / mode switches at compile time when nonzero / non-negative.
template <typename T, int VEC, int ACT, int MODE>
GR_HD void bias_act_pack(const T* xv, const T* g1v, const T* g2v, T* yv, const T* b, uint32_t i0,
                         uint32_t bias_stride, uint32_t bias_len, int act, int mode, typename Acc<T>::type alpha,
                         typename Acc<T>::type gain, typename Acc<T>::type clamp) {
    typedef typename Acc<T>::type A;
    const int a = ACT > 0 ? ACT : act;
    const int m = MODE >= 0 ? MODE : mode;
    uint32_t r = 0, c = 0;
    A bv = (A)0;
    if (b) {
        const uint32_t q = i0 / bias_stride;
        r = i0 - q * bias_stride;
        c = q % bias_len;
        bv = to_acc(b[c]);
    }
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
    for (int k = 0; k < VEC; k++) {
        const A a1 = m >= 1 ? to_acc(g1v[k]) : (A)0;
        const A a2 = m == 2 ? to_acc(g2v[k]) : (A)0;
        yv[k] = from_acc<T>(bias_act_elem<A>(m, a, to_acc(xv[k]) + bv, a1, a2, alpha, gain, clamp));
        if (b && ++r == bias_stride) {
            r = 0;
            if (++c == bias_len) c = 0;
            bv = to_acc(b[c]);
        }
    }
}

}  // namespace gr
