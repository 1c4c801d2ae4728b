"""--augment: the fake score's images augmented with augment labels (gan_refine.fake_augment),
checked against closed forms (flips, whole-pixel shifts with mirror padding, a rotated ramp) and
against the teacher itself (a new zero-initialised label input changes nothing)."""

import copy

import numpy as np
import pytest
import torch

from gan_refine import nets
from gan_refine.adapters import as_teacher
from gan_refine.fake_augment import (AugmentError, GeometricAugment, add_augment_input, augment_dim_of,
                                     resolve_augment)
from gan_refine.refiner import Refiner


def _images(n=6, c=1, res=16, seed=0):
    return torch.rand([n, c, res, res], generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_probability_zero_is_the_identity_with_zero_labels():
    x = _images()
    y, labels = GeometricAugment(p=0.0)(x)
    assert torch.equal(y, x)
    assert labels.shape == (6, GeometricAugment.LABEL_DIM) and not labels.any()


def test_xflip_and_yflip_are_exact_flips_labelled_as_such():
    x = _images()
    y, labels = GeometricAugment(p=1.0, transforms=("xflip",))(x)
    assert torch.equal(y, torch.flip(x, dims=[3]))
    assert torch.equal(labels[:, 0], torch.ones(6)) and not labels[:, 1:].any()
    y, labels = GeometricAugment(p=1.0, transforms=("yflip",))(x)
    assert torch.equal(y, torch.flip(x, dims=[2]))
    assert torch.equal(labels[:, 1], torch.ones(6))


def test_whole_pixel_translation_is_a_mirror_padded_shift_of_the_labelled_size():
    torch.manual_seed(3)
    x = _images(n=16, res=16)
    y, labels = GeometricAugment(p=1.0, transforms=("translate",), translate=0.25)(x)
    xn = x.numpy()
    shifts = 0
    for i in range(16):
        dx, dy = int(round(float(labels[i, 2]) * 16)), int(round(float(labels[i, 3]) * 16))
        shifts += dx != 0 or dy != 0
        padded = np.pad(xn[i, 0], 16, mode="symmetric")
        # content moves by (dx, dy): out[r, c] = in[r - dy, c - dx]
        want = padded[16 - dy:32 - dy, 16 - dx:32 - dx]
        np.testing.assert_allclose(y[i, 0].numpy(), want, atol=1e-5)
    assert shifts >= 12   # the check compares real shifts, not identities


def test_rotation_of_a_linear_ramp_matches_the_labelled_angle():
    res = 64
    u = (torch.arange(res) + 0.5) / res * 2 - 1          # pixel centres in [-1, 1]
    ramp = u.reshape(1, 1, 1, res).expand(8, 1, res, res).contiguous()   # in(x, y) = x
    torch.manual_seed(5)
    y, labels = GeometricAugment(p=1.0, transforms=("rotate",))(ramp)
    sin, cos = labels[:, 5], labels[:, 6] + 1
    assert torch.allclose(sin ** 2 + cos ** 2, torch.ones(8), atol=1e-6)
    gy, gx = torch.meshgrid(u, u, indexing="ij")
    inner = gx ** 2 + gy ** 2 < 0.8 ** 2                 # away from the mirrored border
    for i in range(8):
        # out(p) = in(R(-angle) p): the x coordinate of the rotated-back point
        want = cos[i] * gx + sin[i] * gy
        assert torch.allclose(y[i, 0][inner], want[inner], atol=1e-4)


def test_unaugmented_samples_are_untouched_and_labels_are_zero_exactly_for_them():
    x = _images(n=64)
    torch.manual_seed(0)
    y, labels = GeometricAugment(p=0.12)(x)
    kept = (labels == 0).all(1)
    assert 0 < int(kept.sum()) < 64
    assert torch.equal(y[kept], x[kept])
    assert not torch.allclose(y[~kept], x[~kept])


def test_new_augment_input_starts_as_an_exact_copy_of_the_teacher():
    teacher = as_teacher(nets.edm_pkl_dict(res=8, channels=1, seed=2)).eval()
    assert augment_dim_of(teacher) == 0
    fake = copy.deepcopy(teacher)
    add_augment_input(fake, GeometricAugment.LABEL_DIM)
    assert augment_dim_of(fake) == GeometricAugment.LABEL_DIM
    x = torch.randn(4, 1, 8, 8)
    sigma = torch.tensor([0.1, 0.5, 2.0, 10.0])
    labels = torch.randn(4, GeometricAugment.LABEL_DIM)
    with torch.no_grad():
        want = teacher(x, sigma)
        assert torch.equal(fake(x, sigma, augment_labels=labels), want)
        # ...and the labels do reach the network once the new weights are non-zero
        fake.module.model.map_augment.weight.add_(0.1)
        assert not torch.allclose(fake(x, sigma, augment_labels=labels), want)


class _FlipPipe:
    """A stand-in for an EDM augment pipe: flips every image, labels of `dim` ones."""

    def __init__(self, dim, p=0.5):
        self.dim, self.p = dim, p

    def __call__(self, images):
        return torch.flip(images, dims=[3]), torch.ones(images.shape[0], self.dim)


def test_teacher_with_augment_labels_uses_its_pickles_pipe_and_refuses_without_or_mismatched():
    data = nets.edm_pkl_dict(res=8, channels=1, seed=2)
    teacher = as_teacher(data)
    with torch.no_grad():
        add_augment_input(teacher, 9)   # stands in for a teacher trained with 9 augment labels
    assert augment_dim_of(teacher) == 9
    with pytest.raises(AugmentError, match="no augment_pipe"):
        resolve_augment(0.12, copy.deepcopy(teacher), None)
    pipe = _FlipPipe(4)
    with pytest.raises(AugmentError, match="makes 4 augment labels but the teacher takes 9"):
        resolve_augment(0.12, copy.deepcopy(teacher), pipe)
    pipe = _FlipPipe(9)
    got = resolve_augment(0.12, copy.deepcopy(teacher), pipe)
    assert got.p == 0.12 and pipe.p == 0.5   # a copy at the asked probability; the user's is untouched
    assert resolve_augment(0.0, copy.deepcopy(teacher), pipe) is None
    with pytest.raises(AugmentError, match="probability"):
        resolve_augment(1.5, copy.deepcopy(teacher), pipe)


def test_refiner_trains_the_fake_score_on_augmented_images_and_the_generator_on_plain_ones():
    g = nets.stylegan2_pkl_dict(res=8, channels=1, seed=0)
    t = nets.edm_pkl_dict(res=8, channels=1, seed=2)
    r = Refiner(g, t, batch=4, augment=1.0, fake_warmup=0, seed=0, device="cpu")
    assert isinstance(r.augment_pipe, GeometricAugment)
    seen = []

    def hook(module, args, kwargs, out):
        seen.append((module.training, kwargs.get("augment_labels")))
    r.fake_score.register_forward_hook(hook, with_kwargs=True)
    before = r.fake_score.module.model.map_augment.weight.clone()
    r.step()
    train_calls = [a for training, a in seen if training]
    eval_calls = [a for training, a in seen if not training]
    assert len(train_calls) == 1 and train_calls[0] is not None and train_calls[0].abs().sum() > 0
    assert eval_calls and all(a is None for a in eval_calls)   # the generator's gradient: no labels
    assert not torch.equal(r.fake_score.module.model.map_augment.weight, before)
    # Off by default: no pipe, no new input.
    r0 = Refiner(g, t, batch=4, seed=0, device="cpu")
    assert r0.augment_pipe is None and augment_dim_of(r0.fake_score) == 0


def test_augmented_refiner_resumes_bit_for_bit():
    g = nets.stylegan2_pkl_dict(res=8, channels=1, seed=0)
    t = nets.edm_pkl_dict(res=8, channels=1, seed=2)
    kw = dict(batch=4, augment=0.5, fake_warmup=1, seed=1, device="cpu")
    a = Refiner(g, t, **kw)
    a.run(steps=2)
    state = copy.deepcopy(a.state_dict())
    a.run(steps=1)
    b = Refiner(g, t, **kw)
    b.load_state_dict(state)
    b.run(steps=1)
    for (k, pa), pb in zip(a.fake_score.state_dict().items(), b.fake_score.state_dict().values()):
        assert torch.equal(pa, pb), k
    for pa, pb in zip(a.G.parameters(), b.G.parameters()):
        assert torch.equal(pa, pb)

