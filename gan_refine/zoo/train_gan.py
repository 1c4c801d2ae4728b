"""Adversarial training of the built-in digits GANs (our StyleGAN2-like G and D).

    python -m gan_refine.zoo.train_gan --uncond --minutes 30 --seed 0 --out gan_refine/zoo/models/digits-gan.pkl
    python -m gan_refine.zoo.train_gan --cond   --minutes 30 --seed 0 --out gan_refine/zoo/models/digits-gan-cond.pkl

The recipe is StyleGAN2's (Karras et al. 2020), scaled down for 1,437 16x16 digits on a CPU:
non-saturating logistic loss, lazy R1 on real images, an exponential moving average of G whose
half-life (counted in images) ramps up with training, Adam with beta1 = 0. Because the training
set is tiny, D sees every image (real and generated alike) randomly translated by up to 2 px
with background fill, as in DiffAugment (Zhao et al. 2020); applying the same differentiable
transform to both sides keeps the translations out of the generated distribution.

Every `eval_every` steps G_ema is scored with the digits FID (the digits detector's features;
`eval_num` generated images vs the whole training split) and the best snapshot so far is
written in the StyleGAN2-ADA layout, so the saved file is always the best checkpoint of the
run. Training is deterministic for a seed on one CPU thread; `--minutes` only decides where it
stops, so a slower machine reaches fewer steps. `--kimg` caps the length independently of
machine speed: `--kimg` set to a shipped model's best kimg (digits-gan.json) with a generous
`--minutes` rebuilds that checkpoint exactly.
"""

import argparse
import copy
import json
import os
import time

import numpy as np
import torch
import torch.nn.functional as F

import gan_refine  # noqa: F401  (installs the dnnlib / torch_utils aliases the networks import)
from ..nets import stylegan2
from ..snapshot import atomic_write_text
from .digits_data import NUM_CLASSES, SPLIT_SEED, load_digits_split

__all__ = ["TrainConfig", "translate", "g_loss", "d_loss", "r1_penalty", "ema_beta", "update_ema",
           "build_networks", "evaluate", "train", "main"]

RESOLUTION = 16


class TrainConfig(dict):
    """Every training option with its default; attribute access for brevity."""

    DEFAULTS = dict(
        cond=False,
        seed=0,
        z_dim=64,             # = w_dim; 16x16 grey digits need far less than CIFAR's 512
        mapping_layers=2,     # as StyleGAN2-ADA's cifar config
        g_channels=48,        # feature maps at every G resolution (4, 8, 16)
        d_channels=32,        # D at 2/3 of G's width: cheaper steps, and the pickles stay small
        batch=32,
        g_lr=0.0025,          # StyleGAN2-ADA's cifar learning rate, both networks
        d_lr=0.0025,
        betas=(0.0, 0.99),
        r1_gamma=0.02,        # R1 weight; small images have small gradient norms
        r1_interval=16,       # lazy regularisation: every 16 D steps, scaled by 16
        mbstd_group=4,
        ema_kimg=10.0,        # G_ema half-life cap, thousands of images
        ema_rampup=0.05,      # ... and at most this fraction of the images seen so far
        translate=2,          # max shift in pixels for D's inputs (0 disables augmentation)
        eval_every=200,       # steps between FID evaluations of G_ema
        eval_num=2000,        # generated images per evaluation
        minutes=30.0,         # wall-clock budget
        kimg=None,            # optional cap on images shown to D, in thousands
    )

    def __init__(self, **overrides):
        unknown = set(overrides) - set(self.DEFAULTS)
        if unknown:
            raise ValueError(f"unknown training options: {', '.join(sorted(unknown))}")
        super().__init__(self.DEFAULTS, **overrides)

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

# ----------------------------------------------------------------------------
# Pieces of one training step (pure: networks and tensors in, tensors out)


def translate(x, shift, max_shift, fill=-1.0):
    """Move image i by shift[i] = (dy, dx) pixels, |d| <= max_shift; vacated pixels get `fill`.

    Differentiable in x (a gather from a padded copy), so gradients flow to G and to the R1 input.
    """
    if max_shift == 0:
        return x
    n, c, h, w = x.shape
    pad = F.pad(x, [max_shift] * 4, value=fill)
    rows = torch.arange(h)[None, :] - shift[:, 0:1] + max_shift   # out[i, j] = x[i - dy, j - dx]
    cols = torch.arange(w)[None, :] - shift[:, 1:2] + max_shift
    x = pad.gather(2, rows[:, None, :, None].expand(n, c, h, w + 2 * max_shift))
    return x.gather(3, cols[:, None, None, :].expand(n, c, h, w))


def random_shift(n, max_shift, gen):
    return torch.randint(-max_shift, max_shift + 1, [n, 2], generator=gen)


def g_loss(fake_logits):
    """Non-saturating generator loss per sample: softplus(-D(G(z))) = -log sigmoid(D(G(z)))."""
    return F.softplus(-fake_logits).flatten()


def d_loss(real_logits, fake_logits):
    """Logistic discriminator loss per sample: softplus(D(G(z))) + softplus(-D(x))."""
    return F.softplus(fake_logits).flatten() + F.softplus(-real_logits).flatten()


def r1_penalty(D, real, c, augment=None):
    """Per-sample squared norm of dD/dx at real images (x before augmentation), with graph."""
    real = real.detach().requires_grad_(True)
    logits = D(augment(real) if augment is not None else real, c)
    grad, = torch.autograd.grad(logits.sum(), real, create_graph=True)
    return grad.square().sum(dim=[1, 2, 3]), logits


def ema_beta(cur_nimg, batch, ema_kimg, ema_rampup):
    """Per-step EMA decay whose half-life is min(ema_kimg * 1000, ema_rampup * cur_nimg) images."""
    half_life = ema_kimg * 1000
    if ema_rampup is not None:
        half_life = min(half_life, cur_nimg * ema_rampup)
    return 0.5 ** (batch / max(half_life, 1e-8))


@torch.no_grad()
def update_ema(ema, net, beta):
    """ema <- beta * ema + (1 - beta) * net for parameters; buffers (w_avg, filters) are copied."""
    for p_ema, p in zip(ema.parameters(), net.parameters()):
        p_ema.copy_(p.detach().lerp(p_ema, beta))
    for b_ema, b in zip(ema.buffers(), net.buffers()):
        b_ema.copy_(b)

# ----------------------------------------------------------------------------


def build_networks(cfg):
    """Freshly initialised (G, D) for `cfg` (seeded; the global RNG is left untouched)."""
    c_dim = NUM_CLASSES if cfg.cond else 0
    synthesis = dict(channel_base=cfg.g_channels * RESOLUTION, channel_max=cfg.g_channels, num_fp16_res=0,
                     conv_clamp=None)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        G = stylegan2.Generator(z_dim=cfg.z_dim, c_dim=c_dim, w_dim=cfg.z_dim, img_resolution=RESOLUTION,
                                img_channels=1, mapping_kwargs=dict(num_layers=cfg.mapping_layers),
                                synthesis_kwargs=synthesis)
        D = stylegan2.Discriminator(c_dim=c_dim, img_resolution=RESOLUTION, img_channels=1, architecture='resnet',
                                    channel_base=cfg.d_channels * RESOLUTION, channel_max=cfg.d_channels,
                                    num_fp16_res=0, conv_clamp=None,
                                    mapping_kwargs=dict(num_layers=cfg.mapping_layers),
                                    epilogue_kwargs=dict(mbstd_group_size=cfg.mbstd_group))
    return G, D


def _one_hot(labels):
    return F.one_hot(labels, NUM_CLASSES).to(torch.float32)


def feature_stats(feats):
    feats = np.asarray(feats, dtype=np.float64)
    return feats.mean(axis=0), np.cov(feats, rowvar=False)


@torch.no_grad()
def generate(G, num, seed, batch=500):
    """`num` images from G with z from `seed` (labels cycle 0..9 for conditional G), noise random."""
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn([num, G.z_dim], generator=gen)
    c = _one_hot(torch.arange(num) % NUM_CLASSES) if G.c_dim else torch.zeros([num, 0])
    out = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for i in range(0, num, batch):
            out.append(G(z[i:i + batch], c[i:i + batch], noise_mode='random', fused_modconv=False))
    return torch.cat(out)


def evaluate(G, detector, refs, num, seed=123):
    """Digits FID/KID of G against each reference feature set in `refs` ({name: features})."""
    from ..metrics import frechet_distance, kernel_inception_distance, quantize
    feats = detector(quantize(generate(G, num, seed))).double().numpy()
    mu, sigma = feature_stats(feats)
    out = {}
    for name, ref in refs.items():
        ref_mu, ref_sigma = feature_stats(ref)
        out[f"fid_{name}"] = frechet_distance(mu, sigma, ref_mu, ref_sigma)
        out[f"kid_{name}"] = kernel_inception_distance(feats, ref, num_subsets=10, max_subset_size=1000)[0]
    return out


def _training_set_kwargs(cfg, num_images):
    return dict(class_name='gan_refine.zoo.digits_data.load_digits_split', source='sklearn.datasets.load_digits',
                split='train', split_seed=SPLIT_SEED, max_size=num_images, resolution=RESOLUTION,
                img_channels=1, use_labels=bool(cfg.cond), label_dim=NUM_CLASSES if cfg.cond else 0,
                xflip=False, value_range=[-1, 1], interpolation='bilinear from 8x8')


def _as_saved(module):
    return copy.deepcopy(module).eval().requires_grad_(False).cpu()


def _detector(spec):
    from ..metrics import get_detector
    if spec == 'digits':
        from .digits_classifier import register_digits_detector
        register_digits_detector()
    return get_detector(spec, device='cpu')


def train(cfg, out=None, detector="digits", log=lambda s: print(s, flush=True)):
    """Train for cfg.minutes (or cfg.kimg); returns the info dict. Best snapshot goes to `out`.

    `detector` is anything `gan_refine.metrics.get_detector` takes; the caller's global RNG state
    is restored afterwards.
    """
    with torch.random.fork_rng(devices=[]):
        return _train(cfg, out, detector, log or (lambda s: None))


def _train(cfg, out, detector, log):
    from ..metrics import quantize
    from ..pickles import save_network_pkl
    x_train, y_train, x_test, _ = load_digits_split(res=RESOLUTION)
    det = _detector(detector)
    refs = dict(train=det(quantize(x_train)).double().numpy(), test=det(quantize(x_test)).double().numpy())

    G, D = build_networks(cfg)
    G_ema = copy.deepcopy(G).eval().requires_grad_(False)
    ratio = cfg.r1_interval / (cfg.r1_interval + 1)  # lazy R1: fold its extra steps into Adam's
    opt_G = torch.optim.Adam(G.parameters(), lr=cfg.g_lr, betas=cfg.betas, eps=1e-8)
    opt_D = torch.optim.Adam(D.parameters(), lr=cfg.d_lr * ratio, betas=tuple(b ** ratio for b in cfg.betas),
                             eps=1e-8)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    torch.manual_seed(cfg.seed + 2)  # the synthesis layers' random noise
    n, bs = len(x_train), cfg.batch

    def run_D(img, c):
        shift = random_shift(len(img), cfg.translate, gen)
        return D(translate(img, shift, cfg.translate), c)

    def sample_c(count):
        # Conditional G sees labels in the training distribution, as upstream samples them.
        return _one_hot(y_train[torch.randint(0, n, [count], generator=gen)]) if cfg.cond else torch.zeros([count, 0])

    info = dict(config=dict(cfg), params_G=sum(p.numel() for p in G.parameters()),
                params_D=sum(p.numel() for p in D.parameters()), curve=[], best=None)
    log(f"G {info['params_G']:,} params, D {info['params_D']:,} params, cond={cfg.cond}")
    G.train(), D.train()
    t0, step, cur_nimg, stop = time.time(), 0, 0, False
    while not stop:
        # G: non-saturating loss on fresh samples, D frozen.
        D.requires_grad_(False)
        c = sample_c(bs)
        fake = G(torch.randn([bs, cfg.z_dim], generator=gen), c)
        loss_g = g_loss(run_D(fake, c)).mean()
        opt_G.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_G.step()

        # D: logistic loss on a real batch and a detached generated batch.
        D.requires_grad_(True)
        idx = torch.randint(0, n, [bs], generator=gen)
        real, c_real = x_train[idx], (_one_hot(y_train[idx]) if cfg.cond else torch.zeros([bs, 0]))
        with torch.no_grad():
            c = sample_c(bs)
            fake = G(torch.randn([bs, cfg.z_dim], generator=gen), c, update_emas=True)
        loss_d = d_loss(run_D(real, c_real), run_D(fake, c)).mean()
        opt_D.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_D.step()

        # Lazy R1 on reals, scaled by the interval so its average weight is r1_gamma / 2.
        if cfg.r1_gamma > 0 and step % cfg.r1_interval == 0:
            shift = random_shift(bs, cfg.translate, gen)
            penalty, _ = r1_penalty(D, real, c_real, lambda x: translate(x, shift, cfg.translate))
            loss_r1 = penalty.mean() * (cfg.r1_gamma / 2) * cfg.r1_interval
            opt_D.zero_grad(set_to_none=True)
            loss_r1.backward()
            opt_D.step()

        cur_nimg += bs
        step += 1
        update_ema(G_ema, G, ema_beta(cur_nimg, bs, cfg.ema_kimg, cfg.ema_rampup))

        elapsed = time.time() - t0
        stop = elapsed > cfg.minutes * 60 or (cfg.kimg is not None and cur_nimg >= cfg.kimg * 1000)
        if step % cfg.eval_every == 0 or stop:
            t_eval = time.time()
            scores = evaluate(G_ema, det, refs, cfg.eval_num)
            point = dict(step=step, kimg=round(cur_nimg / 1000, 3), seconds=round(elapsed, 1),
                         loss_G=round(loss_g.item(), 4), loss_D=round(loss_d.item(), 4),
                         **{k: round(v, 5) for k, v in scores.items()})
            info['curve'].append(point)
            improved = info['best'] is None or point['fid_train'] < info['best']['fid_train']
            if improved:
                info['best'] = point
                if out is not None:
                    data = dict(training_set_kwargs=_training_set_kwargs(cfg, n), G=_as_saved(G), D=_as_saved(D),
                                G_ema=_as_saved(G_ema), augment_pipe=None)
                    save_network_pkl(data, out, metadata=dict(trainer='gan_refine.zoo.train_gan', seed=cfg.seed,
                                                              step=step, kimg=point['kimg'],
                                                              digits_fid=point['fid_train']))
            log(f"step {step:6d}  kimg {cur_nimg / 1000:7.1f}  {elapsed:6.0f}s  G {loss_g.item():.3f}  "
                f"D {loss_d.item():.3f}  FID(train) {point['fid_train']:.3f}  FID(test) {point['fid_test']:.3f}"
                f"  KID {point['kid_train']:.5f}{'  *' if improved else ''}  (eval {time.time() - t_eval:.1f}s)")
    info.update(steps=step, kimg=round(cur_nimg / 1000, 3), wall_seconds=round(time.time() - t0, 1))
    if out is not None:
        info['file_bytes'] = os.path.getsize(out)
    return info


def main(argv=None):
    d = TrainConfig.DEFAULTS
    p = argparse.ArgumentParser(description="Train a digits StyleGAN2-like GAN; keeps the best-FID snapshot.")
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument('--cond', dest='cond', action='store_true', help="class-conditional (c_dim 10)")
    group.add_argument('--uncond', dest='cond', action='store_false', help="unconditional (c_dim 0)")
    p.add_argument('--minutes', type=float, default=d['minutes'], help="wall-clock budget")
    p.add_argument('--kimg', type=float, default=None, help="stop after this many thousand images")
    p.add_argument('--seed', type=int, default=d['seed'])
    p.add_argument('--out', required=True, help="network pickle to write (best snapshot)")
    p.add_argument('--info', default=None, help="also write the figures and FID curve as JSON here")
    p.add_argument('--detector', default='digits', help="detector name or TorchScript file for the FID")
    p.add_argument('--threads', type=int, default=1, help="torch CPU threads")
    for key in ('z_dim', 'g_channels', 'd_channels', 'batch', 'r1_interval', 'translate', 'eval_every',
                'eval_num', 'mapping_layers'):
        p.add_argument('--' + key.replace('_', '-'), type=int, default=d[key])
    for key in ('g_lr', 'd_lr', 'r1_gamma', 'ema_kimg', 'ema_rampup'):
        p.add_argument('--' + key.replace('_', '-'), type=float, default=d[key])
    args = vars(p.parse_args(argv))
    out, info_path, detector, threads = (args.pop(k) for k in ('out', 'info', 'detector', 'threads'))
    torch.set_num_threads(threads)
    info = train(TrainConfig(**args), out=out, detector=detector)
    print(json.dumps({k: v for k, v in info.items() if k != 'curve'}))
    if info_path:
        atomic_write_text(info_path, json.dumps(info, indent=1) + '\n')


if __name__ == '__main__':
    main()
