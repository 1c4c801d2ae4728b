"""Losses of Diff-Instruct (Luo et al. 2023) and its variants, as pure functions.

Every function takes networks and tensors (including the noise levels `sigma` and the unit
noise `noise`, which the caller draws) and returns `(per_sample, figures)`: a [N] tensor of
per-sample loss terms, and a dict of detached tensors worth logging. Nothing here owns an
optimiser, switches a network between train and eval mode, or draws random numbers, so the
caller decides all three and a test can feed exact inputs.

Networks are called as `net(x, sigma, c)` and return the denoised estimate D(x; sigma) (EDM
convention, see adapters); x = x0 + sigma * noise.
"""

import torch

__all__ = ["edm_weight", "gradient_surrogate", "fake_score_loss", "ikl_generator_loss",
           "ikl_and_fake_score_loss", "shared_fake_forward", "shared_ikl_terms",
           "sid_generator_loss", "GENERATOR_LOSSES", "per_sample_mean_abs"]

# Guards the per-sample normalisers of DMD and SiD against a zero denominator (SiD's value).
NORMALISER_FLOOR = 1e-5


def _expand(sigma, like):
    """sigma as [N, 1, 1, ...] so it broadcasts against a batch shaped like `like`."""
    return sigma.reshape(-1, *([1] * (like.ndim - 1))).to(like.dtype)


def per_sample_mean_abs(t):
    """Mean absolute value of each sample of a batch: [N, ...] -> [N]."""
    return t.abs().flatten(1).mean(1)


def edm_weight(sigma, sigma_data):
    """lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma * sigma_data)^2 (EDM, Karras et al. 2022)."""
    return (sigma ** 2 + sigma_data ** 2) / (sigma * sigma_data) ** 2


def gradient_surrogate(x, grad):
    """Per-sample terms whose summed gradient with respect to `x` is exactly `grad`.

    Returns sum over non-batch dims of grad.detach() * x, shape [N]. Summing it over the batch
    and back-propagating puts `grad` itself (no rescaling, no second-order terms) into x.grad;
    dividing the sum by N, as the refiner does, gives grad / N.
    """
    if grad.shape != x.shape:
        raise ValueError(f"gradient shape {tuple(grad.shape)} does not match {tuple(x.shape)}")
    return (grad.detach().to(x.dtype) * x).flatten(1).sum(1)


def fake_score_loss(fake_score, x0, sigma, noise, c, sigma_data, augment_pipe=None):
    """Denoising score matching of the fake score on generator samples (docs/design.md,
    "The method", step 1).

    per_sample[i] = lambda(sigma_i) * sum_j (D_phi(x_i; sigma_i) - x0_i)_j^2 with x0 detached,
    so only the fake score's parameters receive gradients. With `augment_pipe` (a callable
    images -> (augmented images, augment labels), as EDM's), x0 is first augmented and the fake
    score is told how through `augment_labels=`, as EDM trains its denoisers.
    """
    x0 = x0.detach()
    if augment_pipe is not None:
        x0, labels = augment_pipe(x0)
        kw = dict(augment_labels=labels)
    else:
        kw = {}
    s = _expand(sigma, x0)
    x = x0 + s * noise
    return _fake_score_terms(fake_score(x, sigma, c, **kw).to(x0.dtype), x0, sigma, sigma_data)


def _fake_score_terms(denoised, x0, sigma, sigma_data):
    sq = (denoised - x0).square().flatten(1).sum(1)
    per_sample = edm_weight(sigma.to(x0.dtype), sigma_data) * sq
    return per_sample, {"fake_score/mse": sq.detach() / x0[0].numel()}


def ikl_generator_loss(fake_score, teacher, x0, sigma, noise, c, normalize="none"):
    """Integral-KL generator loss of Diff-Instruct (docs/design.md, "The method", step 2).

    With x = x0 + sigma * noise and, under no_grad, g = D_phi(x) - D_T(x)
    (= sigma^2 (score_phi - score_T)), returns gradient_surrogate(x0, g): the gradient of the
    per-sample term with respect to x0 is exactly g (weighting w = 1 in denoiser space).
    normalize='dmd' divides g by mean|x0 - D_T(x)| per sample, as DMD (Yin et al. 2024) does.
    """
    s = _expand(sigma, x0)
    with torch.no_grad():
        x = x0.detach() + s * noise
        d_fake = fake_score(x, sigma, c).to(x0.dtype)
        d_teacher = teacher(x, sigma, c).to(x0.dtype)
    return _ikl_terms(d_fake, d_teacher, x0, normalize)


@torch.no_grad()
def _ikl_gradient(d_fake, d_teacher, x0, normalize):
    g = d_fake - d_teacher
    gap = per_sample_mean_abs(g)
    if normalize == "dmd":
        scale = per_sample_mean_abs(x0.detach() - d_teacher).clamp(min=NORMALISER_FLOOR)
        g = g / _expand(scale, g)
    elif normalize not in (None, "none"):
        raise ValueError(f"unknown normalize={normalize!r}; use 'none' or 'dmd'")
    return g, gap


def _ikl_terms(d_fake, d_teacher, x0, normalize):
    g, gap = _ikl_gradient(d_fake, d_teacher, x0, normalize)
    per_sample = gradient_surrogate(x0, g)
    return per_sample, {"gap": gap, "grad_x0_abs": per_sample_mean_abs(g)}


def ikl_and_fake_score_loss(fake_score, teacher, x0, sigma, noise, c, sigma_data, normalize="none"):
    """The IKL generator loss and the fake score's loss from one fake-score forward, for an
    update order in which both use the same x = x0 + sigma * noise (Refiner's
    update_order='single-forward').

    Returns (generator per_sample, fake-score per_sample, figures): the values of
    ikl_generator_loss and fake_score_loss on the same inputs, provided the fake score computes
    the same in both (same mode, same dropout mask). The fake score is called once, with
    gradients for its parameters only (x0 is detached in its input); the teacher once, without
    gradients. The two halves, shared_fake_forward and shared_ikl_terms, can be called apart
    (the fake score's backward may run while the teacher is called).
    """
    x, d_fake, fake_per_sample, fake_figs = shared_fake_forward(fake_score, x0, sigma, noise, c, sigma_data)
    gen_per_sample, figs = shared_ikl_terms(teacher, d_fake, x, x0, sigma, c, normalize)
    return gen_per_sample, fake_per_sample, dict(figs, **fake_figs)


def shared_fake_forward(fake_score, x0, sigma, noise, c, sigma_data):
    """First half of ikl_and_fake_score_loss: x, the fake score's output D_phi(x) (with its
    graph), and the fake score's per-sample loss and figures."""
    s = _expand(sigma, x0)
    x0_d = x0.detach()
    x = x0_d + s * noise
    d_fake = fake_score(x, sigma, c).to(x0.dtype)
    fake_per_sample, fake_figs = _fake_score_terms(d_fake, x0_d, sigma, sigma_data)
    return x, d_fake, fake_per_sample, fake_figs


def shared_ikl_terms(teacher, d_fake, x, x0, sigma, c, normalize="none"):
    """Second half of ikl_and_fake_score_loss: the teacher at the same x (no gradients) and the
    IKL generator terms with the fake score's output of the first half (detached)."""
    with torch.no_grad():
        d_teacher = teacher(x, sigma, c).to(x0.dtype)
    return _ikl_terms(d_fake.detach(), d_teacher, x0, normalize)


def sid_generator_loss(fake_score, teacher, x0, sigma, noise, c, alpha=1.2):
    """Score identity Distillation generator loss (Zhou et al. 2024, arXiv 2404.04057).

    With f_T = D_T(x), f_phi = D_phi(x) and x = x0 + sigma * noise (gradients flow through x
    into x0, and through both networks' inputs):
        per_element = (f_T - f_phi) * ((f_T - x0) - alpha * (f_T - f_phi)) / w
                    = (1 - alpha) |f_T - f_phi|^2 + (f_T - f_phi) . (f_phi - x0), over w,
    with w = mean|x0 - f_T| per sample (no grad), as in the paper's reference code. The caller
    must update only the generator's parameters with it (the fake score's parameters also get
    gradients through this expression).
    """
    s = _expand(sigma, x0)
    x = x0 + s * noise
    d_teacher = teacher(x, sigma, c).to(x0.dtype)
    d_fake = fake_score(x, sigma, c).to(x0.dtype)
    diff = d_teacher - d_fake
    with torch.no_grad():
        w = per_sample_mean_abs(x0 - d_teacher).clamp(min=NORMALISER_FLOOR)
    per_elem = diff * ((d_teacher - x0) - alpha * diff) / _expand(w, diff)
    per_sample = per_elem.flatten(1).sum(1)
    return per_sample, {"gap": per_sample_mean_abs(diff.detach())}


GENERATOR_LOSSES = ("ikl", "sid")
