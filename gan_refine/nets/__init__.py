"""gan_refine's own networks in the upstream "persistent class" style, and builders for them.

The modules here (`stylegan2`, `stylegan3`, `edm`, `augment`) are written to be embedded in
network pickles: they import only `torch_utils`/`dnnlib` names, never gan_refine. This package
file is ordinary library code: it builds tiny configurations for tests, the CIFAR-10 sized
configurations of the benchmark, and whole network-pickle dicts in the upstream layouts.

Builders take a `seed` and leave the global RNG untouched. Freshly initialised networks are made
to look trained where it matters to callers (non-zero noise strengths, a meaningful `w_avg`,
non-zero output layers in the UNet), and `G_ema` / `ema` differ slightly from `G` / the net.
"""

import copy

import gan_refine  # noqa: F401  (installs the dnnlib / torch_utils aliases the modules import)
import dnnlib
import numpy as np
import torch

from . import augment, edm, stylegan2, stylegan3

__all__ = [
    'stylegan2_generator', 'stylegan2_discriminator', 'stylegan3_generator', 'edm_denoiser',
    'stylegan2_cifar10', 'stylegan3_cifar10', 'edm_ddpmpp_cifar10', 'augment_pipe',
    'stylegan2_pkl_dict', 'stylegan3_pkl_dict', 'edm_pkl_dict', 'num_params',
]

EDM_KINDS = ('EDMPrecond', 'VPPrecond', 'VEPrecond', 'iDDPMPrecond')


def num_params(module):
    return sum(p.numel() for p in module.parameters())


def _seeded(seed, fn, *args, **kwargs):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return fn(*args, **kwargs)


def _merge(base, overrides):
    out = dnnlib.EasyDict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out

#----------------------------------------------------------------------------
# StyleGAN2


def _stylegan2_g_kwargs(res, c_dim, channels, small):
    if small:
        mapping = dnnlib.EasyDict(num_layers=2)
        synthesis = dnnlib.EasyDict(channel_base=16 * res, channel_max=16, num_fp16_res=2, conv_clamp=256)
        dims = dict(z_dim=32, w_dim=32)
    else:
        # StyleGAN2-ADA `--cfg=cifar`: fmaps 1 -> channel base 32768, 2 mapping layers, fp16 top 4 res.
        mapping = dnnlib.EasyDict(num_layers=2)
        synthesis = dnnlib.EasyDict(channel_base=32768, channel_max=512, num_fp16_res=4, conv_clamp=256)
        dims = dict(z_dim=512, w_dim=512)
    return dnnlib.EasyDict(**dims, mapping_kwargs=mapping, synthesis_kwargs=synthesis,
                           c_dim=c_dim, img_resolution=res, img_channels=channels)


def _trained_like_stylegan(G, num_w_samples=512, num_img_samples=16):
    """Non-zero noise strengths and a w_avg that is the actual mean of w, as after training."""
    with torch.no_grad():
        for name, p in G.named_parameters():
            if name.endswith('noise_strength'):
                p.copy_(torch.rand([]) * 0.15 + 0.05)
        z = torch.randn([num_w_samples, G.z_dim])
        c = None
        if G.c_dim > 0:
            c = torch.nn.functional.one_hot(torch.randint(0, G.c_dim, [num_w_samples]), G.c_dim).float()
        ws = G.mapping(z, c)
        G.mapping.w_avg.copy_(ws[:, 0].mean(dim=0))
        # A trained generator's images span about [-1, 1]; at init they are several times wider.
        # toRGB outputs add up linearly (zero bias), so one common factor rescales the image.
        std = G.synthesis(ws[:num_img_samples], noise_mode='const').std()
        for name, p in G.named_parameters():
            if '.torgb.weight' in name:
                p.mul_(0.5 / std)
    return G


def stylegan2_generator(res=16, c_dim=0, channels=3, small=True, seed=0, **overrides):
    """A StyleGAN2 `Generator`; `small` gives a tiny test net, else the StyleGAN2-ADA cifar config.

    `overrides` replace constructor kwargs (nested dicts such as synthesis_kwargs are merged).
    """
    kwargs = _merge(_stylegan2_g_kwargs(res, c_dim, channels, small), overrides)
    return _seeded(seed, lambda: _trained_like_stylegan(stylegan2.Generator(**kwargs)))


def stylegan2_discriminator(res=16, c_dim=0, channels=3, small=True, seed=1, **overrides):
    if small:
        kwargs = dnnlib.EasyDict(channel_base=16 * res, channel_max=16, num_fp16_res=2, conv_clamp=256,
                                 epilogue_kwargs=dnnlib.EasyDict(mbstd_group_size=4))
    else:
        kwargs = dnnlib.EasyDict(channel_base=32768, channel_max=512, num_fp16_res=4, conv_clamp=256,
                                 epilogue_kwargs=dnnlib.EasyDict(mbstd_group_size=32))
    base = dnnlib.EasyDict(block_kwargs=dnnlib.EasyDict(), mapping_kwargs=dnnlib.EasyDict(), architecture='resnet',
                           **kwargs, c_dim=c_dim, img_resolution=res, img_channels=channels)
    base = _merge(base, overrides)
    return _seeded(seed, stylegan2.Discriminator, **base)


def stylegan2_cifar10(c_dim=0, seed=0):
    """StyleGAN2-ADA's CIFAR-10 generator configuration (~20M parameters)."""
    return stylegan2_generator(res=32, c_dim=c_dim, channels=3, small=False, seed=seed)

#----------------------------------------------------------------------------
# StyleGAN3


def stylegan3_generator(res=16, c_dim=0, channels=3, small=True, seed=0, **overrides):
    """A StyleGAN3-T-like `Generator`; `small` gives a tiny test net, else upstream's T defaults."""
    if small:
        kwargs = dnnlib.EasyDict(z_dim=32, w_dim=32, mapping_kwargs=dnnlib.EasyDict(num_layers=2),
                                 channel_base=64, channel_max=16, num_layers=4, num_critical=2, margin_size=4,
                                 num_fp16_res=2, conv_clamp=256, magnitude_ema_beta=0.999)
    else:
        kwargs = dnnlib.EasyDict(z_dim=512, w_dim=512, mapping_kwargs=dnnlib.EasyDict(num_layers=2),
                                 channel_base=32768, channel_max=512, num_fp16_res=4, conv_clamp=256,
                                 magnitude_ema_beta=0.5 ** (32 / 20e3))
    kwargs = _merge(dnnlib.EasyDict(**kwargs, c_dim=c_dim, img_resolution=res, img_channels=channels), overrides)

    def build():
        G = stylegan3.Generator(**kwargs)
        with torch.no_grad():
            # Settle each layer's input-magnitude EMA as training would, so layer gains are sensible.
            # Two samples are plenty to set the scales; more only costs time at full size.
            z = torch.randn([2, G.z_dim])
            c = torch.nn.functional.one_hot(torch.arange(2) % max(c_dim, 1), max(c_dim, 1)).float()[:, :c_dim]
            # One pass with beta 0 sets each EMA to its layer's actual input magnitude (layers update
            # before they use it, so later layers see already-normalised inputs).
            layers = [m for m in G.modules() if hasattr(m, 'magnitude_ema_beta')]
            betas = [m.magnitude_ema_beta for m in layers]
            for m in layers:
                m.magnitude_ema_beta = 0
            G.synthesis(G.mapping(z, c), update_emas=True)
            for m, beta in zip(layers, betas):
                m.magnitude_ema_beta = beta
                m.magnitude_ema.clamp_(min=1e-4)
            G.mapping.w_avg.copy_(G.mapping(torch.randn([512, G.z_dim]), c.repeat(256, 1))[:, 0].mean(dim=0))
        return G
    return _seeded(seed, build)


def stylegan3_cifar10(c_dim=0, seed=0):
    """StyleGAN3-T at 32x32 with upstream's default T configuration."""
    return stylegan3_generator(res=32, c_dim=c_dim, channels=3, small=False, seed=seed)

#----------------------------------------------------------------------------
# EDM


def _unzero_outputs(net, gain=0.2):
    """Give near-zero-initialised output convs real weights so F (and D) depend on the input."""
    with torch.no_grad():
        for p in net.parameters():
            if p.ndim == 4 and p.abs().max() < 1e-3:
                fan_in = p.shape[1] * p.shape[2] * p.shape[3]
                p.copy_(torch.randn_like(p) * (gain / np.sqrt(fan_in)))
    return net


def edm_denoiser(kind='EDMPrecond', res=16, channels=3, label_dim=0, small=True, seed=0, **overrides):
    """An EDM preconditioned denoiser of class `kind` over a SongUNet backbone."""
    if kind not in EDM_KINDS:
        raise ValueError(f'unknown EDM preconditioning {kind!r}; expected one of {", ".join(EDM_KINDS)}')
    if small:
        model = dict(model_channels=16, channel_mult=[1, 2], channel_mult_emb=2, num_blocks=1,
                     attn_resolutions=[res // 2], dropout=0.1)
    else:
        # EDM `--arch=ddpmpp` (DDPM++ of Song et al.), CIFAR-10 settings.
        model = dict(embedding_type='positional', encoder_type='standard', decoder_type='standard',
                     channel_mult_noise=1, resample_filter=[1, 1], model_channels=128, channel_mult=[2, 2, 2],
                     dropout=0.13, augment_dim=9)
    model['model_type'] = 'DhariwalUNet' if kind == 'iDDPMPrecond' else 'SongUNet'
    precond = dict(EDMPrecond=dict(sigma_data=0.5)).get(kind, {})
    kwargs = _merge(dict(img_resolution=res, img_channels=channels, label_dim=label_dim, use_fp16=False,
                         **precond, **model), overrides)
    cls = getattr(edm, kind)
    return _seeded(seed, lambda: _unzero_outputs(cls(**kwargs)))


def edm_ddpmpp_cifar10(label_dim=0, seed=0):
    """EDM's DDPM++ CIFAR-10 network (EDMPrecond over SongUNet, ~55.7M parameters)."""
    return edm_denoiser('EDMPrecond', res=32, channels=3, label_dim=label_dim, small=False, seed=seed)

#----------------------------------------------------------------------------
# Augmentation and whole pickles


def augment_pipe(channels=3, p=0.2):
    """StyleGAN2-ADA's `bgc` pipeline (colour terms that need RGB dropped for grey images)."""
    spec = dict(xflip=1, rotate90=1, xint=1, scale=1, rotate=1, aniso=1, xfrac=1, brightness=1, contrast=1)
    if channels == 3:
        spec.update(lumaflip=1, hue=1, saturation=1)
    pipe = augment.AugmentPipe(**spec)
    pipe.p.fill_(p)
    return pipe


def _as_saved(module):
    # Exactly how the upstream training loops put modules into snapshots.
    return copy.deepcopy(module).eval().requires_grad_(False).cpu() if module is not None else None


def _ema_of(module, seed, scale=1e-3):
    """A copy of `module` whose parameters are nudged, standing in for an EMA that has drifted."""
    ema = copy.deepcopy(module)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in ema.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * scale * (p.detach().abs().mean() + 1e-2))
    return ema


def _dataset_kwargs(res, labels, name):
    return dict(class_name='training.dataset.ImageFolderDataset', path=f'datasets/{name}-{res}x{res}.zip',
                use_labels=labels, max_size=1797 if name == 'digits' else 50000, xflip=False, resolution=res)


def stylegan2_pkl_dict(res=16, c_dim=0, channels=3, small=True, seed=0, G=None, D=None, with_augment=True,
                       dataset='cifar10'):
    """A StyleGAN2-ADA snapshot dict: training_set_kwargs, G, D, G_ema, augment_pipe (that order)."""
    G = G if G is not None else stylegan2_generator(res, c_dim, channels, small=small, seed=seed)
    D = D if D is not None else stylegan2_discriminator(res, c_dim, channels, small=small, seed=seed + 1)
    pipe = augment_pipe(channels) if with_augment else None
    data = dict(training_set_kwargs=_dataset_kwargs(res, c_dim > 0, dataset))
    data['G'] = _as_saved(G)
    data['D'] = _as_saved(D)
    data['G_ema'] = _as_saved(_ema_of(G, seed + 2))
    data['augment_pipe'] = _as_saved(pipe)
    return data


def stylegan3_pkl_dict(res=16, c_dim=0, channels=3, small=True, seed=0, G=None, D=None, with_augment=True,
                       dataset='cifar10'):
    """A StyleGAN3 snapshot dict: G, D, G_ema, augment_pipe, training_set_kwargs (that order).

    Upstream StyleGAN3 trains with the StyleGAN2 discriminator, so D comes from `stylegan2`.
    """
    G = G if G is not None else stylegan3_generator(res, c_dim, channels, small=small, seed=seed)
    D = D if D is not None else stylegan2_discriminator(res, c_dim, channels, small=small, seed=seed + 1)
    kwargs = _dataset_kwargs(res, c_dim > 0, dataset)
    kwargs['random_seed'] = seed
    data = dict(G=_as_saved(G), D=_as_saved(D), G_ema=_as_saved(_ema_of(G, seed + 2)),
                augment_pipe=_as_saved(augment_pipe(channels) if with_augment else None),
                training_set_kwargs=kwargs)
    return data


def edm_pkl_dict(kind='EDMPrecond', res=16, channels=3, label_dim=0, small=True, seed=0, net=None,
                 dataset='cifar10'):
    """An EDM snapshot dict: ema, loss_fn, augment_pipe, dataset_kwargs (that order).

    `augment_pipe` is None, as in EDM runs trained without augmentation. `ema` is the EMA copy of
    the trained net (slightly different weights from `net`).
    """
    net = net if net is not None else edm_denoiser(kind, res, channels, label_dim, small=small, seed=seed)
    sigma_data = getattr(net, 'sigma_data', 0.5)
    kwargs = _dataset_kwargs(res, label_dim > 0, dataset)
    kwargs = dict(class_name=kwargs['class_name'], path=kwargs['path'], use_labels=kwargs['use_labels'],
                  xflip=False, cache=True, resolution=res, max_size=kwargs['max_size'])
    return dict(ema=_as_saved(_ema_of(net, seed + 2)), loss_fn=edm.EDMLoss(sigma_data=sigma_data),
                augment_pipe=None, dataset_kwargs=kwargs)
