"""Train the digits diffusion teachers: an EDM-preconditioned SongUNet on the 16x16 digits.

    python -m gan_refine.zoo.train_teacher --uncond --minutes 12 --out digits-edm.pkl
    python -m gan_refine.zoo.train_teacher --cond --minutes 12 --out digits-edm-cond.pkl
    python -m gan_refine.zoo.train_teacher --cond --steps 3000 --out again.pkl   # exact repeat

The loss is EDM's: ln(sigma) ~ N(P_mean, P_std^2), weight (sigma^2 + sigma_data^2) /
(sigma sigma_data)^2, denoiser error against the clean image. Adam with a linear learning-rate
warm-up; the saved network is an EMA of the weights whose half-life grows with training (EDM's
ramp-up), so a short run is not dominated by its noisy start.

`--minutes` stops on the clock, `--steps` on a step count (first reached wins). Nothing in the
schedule depends on where a run stops, so a run the clock stopped after N steps (recorded as
`steps`) is repeated exactly by `--steps N` with the same seed. The pickle has EDM's layout (ema, loss_fn, augment_pipe,
dataset_kwargs) plus our `gan_refine` record of the run. `--eval` samples with EDM's Heun
sampler (18 steps) and scores the samples with the digits FID/KID against the held-out split;
`--record` writes those figures into models/digits-models.json.
"""

import argparse
import copy
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from .digits_data import NUM_CLASSES, load_digits_split

__all__ = ["TEACHER_CONFIG", "build_teacher", "train_teacher", "teacher_pkl_dict", "evaluate_teacher",
           "record_models_json", "MODELS_JSON"]

MODELS_JSON = Path(__file__).with_name("models") / "digits-models.json"
RESOLUTION = 16

# A DDPM++-style UNet shrunk until ~4,000 steps at batch 32 cost ~16 CPU-minutes (one thread)
# and the pickle stays under 2 MB: 16 -> 8 -> 4 px, 2 blocks per level, self-attention at 8x8
# and in the bottleneck; ~0.44M parameters.
TEACHER_CONFIG = dict(model_channels=16, channel_mult=[1, 2, 2], channel_mult_emb=4, num_blocks=2,
                      attn_resolutions=[8], dropout=0.1)

# Training defaults (each defined once here).
DEFAULTS = dict(
    batch=32,               # images per step
    lr=1e-3,                # Adam peak learning rate
    warmup_steps=200,       # linear warm-up from 0
    ema_halflife_kimg=50,   # cap of the EMA half-life, in thousands of images
    ema_rampup=0.1,         # EMA half-life is at most this fraction of the images seen so far
    label_dropout=0.1,      # conditional nets: labels zeroed for this fraction (unconditional use)
    P_mean=-1.2, P_std=1.2, sigma_data=0.5,
)


def build_teacher(label_dim, seed=0, label_dropout=0.0):
    """A freshly initialised EDMPrecond/SongUNet of TEACHER_CONFIG.

    Built from the class directly, not with `nets.edm_denoiser`: that builder gives the
    near-zero output layers random weights (right for test fixtures), while training wants
    EDM's own initialisation.
    """
    from ..nets import edm
    overrides = dict(TEACHER_CONFIG)
    if label_dim:
        overrides["label_dropout"] = label_dropout
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return edm.EDMPrecond(img_resolution=RESOLUTION, img_channels=1, label_dim=label_dim, use_fp16=False,
                              sigma_data=DEFAULTS["sigma_data"], model_type="SongUNet", **overrides)


def _edm_loss(net, images, labels, gen, P_mean, P_std, sigma_data):
    """Per-sample EDM loss with noise from `gen`, so a run depends only on its seed."""
    n = images.shape[0]
    sigma = (torch.randn([n, 1, 1, 1], generator=gen) * P_std + P_mean).exp()
    weight = (sigma ** 2 + sigma_data ** 2) / (sigma * sigma_data) ** 2
    noisy = images + torch.randn(images.shape, generator=gen) * sigma
    return weight * (net(noisy, sigma, labels) - images).square()


def train_teacher(cond, steps=None, minutes=None, seed=0, log=print, snapshot=None, snapshot_minutes=5,
                  **overrides):
    """Train one teacher; returns (ema net, info dict).

    Stops after `steps` steps or `minutes` of wall time, whichever comes first. Nothing in the
    schedule depends on where the run will stop (constant learning rate after the warm-up, an
    EMA ramp that depends only on the images seen), so a run stopped by the clock after k steps
    is exactly the run `steps=k` gives. `snapshot(ema, info)` is called every
    `snapshot_minutes`, so a long run leaves a usable teacher behind if it is cut short.
    """
    if steps is None and minutes is None:
        raise ValueError("give steps, minutes, or both")
    opt_ = dict(DEFAULTS, **overrides)
    x_train, y_train, _, _ = load_digits_split(res=RESOLUTION)
    label_dim = NUM_CLASSES if cond else 0
    net = build_teacher(label_dim, seed=seed, label_dropout=opt_["label_dropout"]).train()
    ema = copy.deepcopy(net).eval().requires_grad_(False)
    opt = torch.optim.Adam(net.parameters(), lr=opt_["lr"], betas=(0.9, 0.999), eps=1e-8)
    gen = torch.Generator().manual_seed(seed)
    batch = opt_["batch"]
    onehot = torch.nn.functional.one_hot(y_train, NUM_CLASSES).to(torch.float32)

    t0 = time.time()
    cpu0 = time.process_time()
    last_snapshot = t0
    losses = []
    step = 0

    def describe():
        return dict(cond=bool(cond), label_dim=label_dim, seed=seed, steps=step, batch=batch,
                    images_seen=step * batch, train_seconds=round(time.time() - t0, 1),
                    train_cpu_seconds=round(time.process_time() - cpu0, 1),
                    final_loss=float(np.mean(losses[-250:])) if losses else None,
                    threads=torch.get_num_threads(), params=sum(p.numel() for p in ema.parameters()),
                    config=TEACHER_CONFIG, options={k: v for k, v in opt_.items()})

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 1)  # dropout masks (the only draws not taken from `gen`)
        while (steps is None or step < steps) and (minutes is None or time.time() - t0 < minutes * 60):
            for g in opt.param_groups:
                g["lr"] = opt_["lr"] * min(1.0, (step + 1) / opt_["warmup_steps"])
            idx = torch.randint(0, len(x_train), [batch], generator=gen)
            labels = onehot[idx] if cond else None
            loss = _edm_loss(net, x_train[idx], labels, gen, opt_["P_mean"], opt_["P_std"],
                             opt_["sigma_data"]).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            for p in net.parameters():
                if p.grad is not None:
                    torch.nan_to_num(p.grad, nan=0, posinf=1e5, neginf=-1e5, out=p.grad)
            opt.step()
            step += 1
            nimg = step * batch
            halflife = min(opt_["ema_halflife_kimg"] * 1000, nimg * opt_["ema_rampup"])
            beta = 0.5 ** (batch / max(halflife, 1e-8))
            with torch.no_grad():
                for pe, pn in zip(ema.parameters(), net.parameters()):
                    pe.lerp_(pn.detach(), 1 - beta)
                for be, bn in zip(ema.buffers(), net.buffers()):
                    be.copy_(bn)
            losses.append(loss.item())
            if log and step % 250 == 0:
                log(f"step {step}  loss {np.mean(losses[-250:]):.4f}  {time.time() - t0:.0f}s")
            if snapshot is not None and time.time() - last_snapshot > snapshot_minutes * 60:
                snapshot(ema, describe())
                last_snapshot = time.time()
    info = describe()
    return ema, info


def teacher_pkl_dict(ema, info):
    """EDM's snapshot layout: ema, loss_fn, augment_pipe, dataset_kwargs."""
    from ..nets import edm
    cond = info["label_dim"] > 0
    dataset_kwargs = dict(class_name="training.dataset.ImageFolderDataset",
                          path=f"datasets/digits-{RESOLUTION}x{RESOLUTION}.zip", use_labels=cond, xflip=False,
                          cache=True, resolution=RESOLUTION, max_size=1437)
    loss_fn = edm.EDMLoss(P_mean=info["options"]["P_mean"], P_std=info["options"]["P_std"],
                          sigma_data=info["options"]["sigma_data"])
    return dict(ema=copy.deepcopy(ema).eval().requires_grad_(False).cpu(), loss_fn=loss_fn,
                augment_pipe=None, dataset_kwargs=dataset_kwargs)


def evaluate_teacher(net, num=1437, seed=0, batch=250, num_steps=18, log=print):
    """Heun-18 samples scored by the digits FID/KID against the held-out split."""
    from ..metrics import compute_metrics
    from .edm_sampler import sample_images
    _, _, x_test, _ = load_digits_split(res=RESOLUTION)
    t0 = time.time()
    images, _ = sample_images(net, num, seed=seed, batch=batch, num_steps=num_steps)
    sample_seconds = time.time() - t0
    res = compute_metrics(gen=images.numpy(), ref=x_test.numpy(), metrics=("fid", "kid"), detector="digits",
                          seed=seed, kid_subset_size=len(x_test))
    out = dict(sampler=f"heun-{num_steps}", nfe=2 * num_steps - 1, num=num, ref="test split (360)",
               fid=round(res["fid"], 4), kid=round(res["kid"], 5), kid_std=round(res["kid_std"], 5),
               sample_seconds=round(sample_seconds, 1))
    if log:
        log(json.dumps(out))
    return out, images


def real_floor(seed=0):
    """Digits FID/KID of the training images against the held-out images: the best reachable."""
    from ..metrics import compute_metrics
    x_train, _, x_test, _ = load_digits_split(res=RESOLUTION)
    res = compute_metrics(gen=x_train.numpy(), ref=x_test.numpy(), metrics=("fid", "kid"), detector="digits",
                          seed=seed, kid_subset_size=len(x_test))
    return dict(num=len(x_train), ref="test split (360)", fid=round(res["fid"], 4), kid=round(res["kid"], 5),
                kid_std=round(res["kid_std"], 5))


def record_models_json(name, entry, path=MODELS_JSON, section="models"):
    """Merge one entry into a section of the models table (re-read first: other scripts write
    there too). Models go to 'models', reference figures such as `real_floor` to 'reference'."""
    from ..pickles import atomic_write_bytes
    path = Path(path)
    table = json.loads(path.read_text()) if path.is_file() else {}
    table.setdefault("about", "Built-in digits models: training budget, sizes and digits-FID/KID against "
                              "the 360 held-out images (gan_refine.zoo.digits_data split).")
    table.setdefault(section, {})[name] = entry
    atomic_write_bytes(path, (json.dumps(table, indent=2) + "\n").encode())


def main(argv=None):
    parser = argparse.ArgumentParser(description="Train a digits EDM teacher.")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--cond", action="store_true", help="class-conditional (label_dim 10)")
    which.add_argument("--uncond", action="store_true", help="unconditional (label_dim 0)")
    parser.add_argument("--minutes", type=float, default=None, help="stop after this much wall time")
    parser.add_argument("--steps", type=int, default=None, help="stop after this many steps (exact repeat)")
    parser.add_argument("--seed", type=int, default=0, help="seed for init, batches, noise and dropout")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--out", required=True, help="network pickle to write (EDM layout)")
    parser.add_argument("--eval", action="store_true", help="score Heun-18 samples with the digits FID/KID")
    parser.add_argument("--eval-only", action="store_true", help="no training: evaluate the pickle at --out")
    parser.add_argument("--eval-num", type=int, default=1000, help="samples for --eval (seeds 0..N-1)")
    parser.add_argument("--record", default=None, help="with --eval: name of the entry in digits-models.json")
    args = parser.parse_args(argv)
    if not args.eval_only and not (args.cond or args.uncond):
        parser.error("say --cond or --uncond")
    if args.minutes is None and args.steps is None:
        args.minutes = 12.0
    if args.record and not (args.eval or args.eval_only):
        parser.error("--record needs --eval")
    torch.set_num_threads(args.threads)
    t0 = time.time()
    from ..pickles import load_network_pkl, save_network_pkl

    def save(ema, info):
        info = dict(info, budget_minutes=args.minutes, budget_steps=args.steps)
        save_network_pkl(teacher_pkl_dict(ema, info), args.out, metadata=dict(kind="digits-teacher", **info))
        return info

    if args.eval_only:
        data = load_network_pkl(args.out)
        ema = data["ema"]
        info = {k: v for k, v in data.get("gan_refine", {}).items() if k != "kind"}
    else:
        ema, info = train_teacher(cond=args.cond, steps=args.steps, minutes=args.minutes, seed=args.seed,
                                  snapshot=save)
        info = save(ema, info)
        info["wall_seconds"] = round(time.time() - t0, 1)
    info["file_bytes"] = os.path.getsize(args.out)
    if args.eval or args.eval_only:
        info["eval"], _ = evaluate_teacher(ema, num=args.eval_num, seed=0)
    print(json.dumps(info))
    if args.record:
        record_models_json(args.record, dict(file=os.path.basename(args.out), role="teacher", **info))


if __name__ == "__main__":
    main()
