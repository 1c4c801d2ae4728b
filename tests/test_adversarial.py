"""The real-data term (--data, --data-weight): the discriminator head on the fake score's encoder
features, checked against the network's own full forward, against the direction a GAN loss must
move the generator, and for what it must never do (touch data at weight 0, mismatched data)."""

import copy

import pytest
import torch

from gan_refine import nets
from gan_refine.adapters import as_teacher
from gan_refine.adversarial import DataTermError, EncoderFeatures, TensorData
from gan_refine.refiner import Refiner


def _pair(c_dim=0):
    g = nets.stylegan2_pkl_dict(res=8, channels=1, c_dim=c_dim, seed=0)
    t = nets.edm_pkl_dict(res=8, channels=1, label_dim=c_dim, seed=2)
    return g, t


def _real(n=64, c_dim=0, seed=5):
    gen = torch.Generator().manual_seed(seed)
    # "Real" images unlike the random generator's: a bright centred blob plus a little noise.
    u = torch.linspace(-1, 1, 8)
    blob = (torch.exp(-(u[None, :] ** 2 + u[:, None] ** 2) * 3) * 2 - 1).expand(n, 1, 8, 8)
    images = (blob + 0.05 * torch.randn(n, 1, 8, 8, generator=gen)).clamp(-1, 1)
    labels = torch.randint(c_dim, (n,), generator=gen) if c_dim else None
    return images, labels


def test_encoder_features_are_the_last_encoder_blocks_output_and_the_decoder_is_skipped():
    teacher = as_teacher(_pair()[1]).eval()
    unet = teacher.module.model
    seen, decoder_calls = {}, []
    last = list(unet.enc.values())[-1]
    h1 = last.register_forward_hook(lambda m, a, o: seen.__setitem__("full", o.detach().clone()))
    x, sigma = torch.randn(3, 1, 8, 8), torch.tensor([0.2, 1.0, 5.0])
    with torch.no_grad():
        teacher(x, sigma)          # a full forward, the reference
    h1.remove()
    h2 = list(unet.dec.values())[0].register_forward_hook(lambda m, a, o: decoder_calls.append(1))
    with torch.no_grad():
        f = EncoderFeatures(teacher)(x, sigma)
    h2.remove()
    assert torch.equal(f, seen["full"].float())
    assert decoder_calls == []


def test_non_edm_teacher_and_bad_data_are_refused_before_work_starts():
    g, t = _pair()
    images, _ = _real()
    with pytest.raises(DataTermError, match="needs the real training images"):
        Refiner(g, t, batch=4, data_weight=0.1, device="cpu")
    with pytest.raises(DataTermError, match="1x16x16 but the generator makes 1x8x8"):
        Refiner(g, t, batch=4, data_weight=0.1, data=torch.zeros(4, 1, 16, 16), device="cpu")
    gc, tc = _pair(c_dim=3)
    with pytest.raises(DataTermError, match="need class labels"):
        Refiner(gc, tc, batch=4, data_weight=0.1, data=images, device="cpu")
    with pytest.raises(DataTermError, match="have 5 classes but the generator has 3"):
        Refiner(gc, tc, batch=4, data_weight=0.1, data=(images, torch.eye(5)[torch.zeros(64).long()]),
                device="cpu")

    def plain_denoiser(x, sigma, c=None):
        return x / (1 + sigma.reshape(-1, 1, 1, 1) ** 2)
    fake = torch.nn.Conv2d(1, 1, 1)
    with pytest.raises(DataTermError, match="needs an EDM teacher"):
        Refiner(g, plain_denoiser, batch=4, data_weight=0.1, data=images, device="cpu",
                fake_score=fake, teacher_kwargs=dict(img_resolution=8, img_channels=1, label_dim=0))


class _Untouchable:
    resolution, channels, label_dim, has_labels = 8, 1, 0, False

    def sample(self, *a, **k):
        raise AssertionError("the data must not be read at data_weight 0")


def test_weight_zero_is_data_free_and_never_reads_the_data():
    g, t = _pair()
    r = Refiner(g, t, batch=4, fake_warmup=1, seed=0, device="cpu", data=_Untouchable())
    assert r.adv_head is None
    ref = Refiner(g, t, batch=4, fake_warmup=1, seed=0, device="cpu")
    r.run(steps=2)
    ref.run(steps=2)
    for a, b in zip(r.G.parameters(), ref.G.parameters()):
        assert torch.equal(a, b)


def test_head_learns_to_tell_real_from_generated():
    g, t = _pair()
    images, _ = _real()
    r = Refiner(g, t, batch=16, fake_warmup=40, lr_fake=2e-3, lr_gen=1e-9, seed=0, device="cpu",
                data_weight=0.1, data=images)
    gen = torch.Generator().manual_seed(1)
    z = torch.randn(64, r.G.z_dim, generator=gen)
    sigma = torch.full([64], 0.5)
    noise = torch.randn(64, 1, 8, 8, generator=gen)

    def margin():
        with torch.no_grad():
            r.fake_score.eval()
            fake = r.G(z)
            d_real = r.adv_head(r._adv_features(images + 0.5 * noise, sigma))
            d_fake = r.adv_head(r._adv_features(fake + 0.5 * noise, sigma))
        return float(d_real.mean() - d_fake.mean())
    before = margin()
    stats = r.step()   # 40 warm-up updates of the fake score and its head, one generator update
    after = margin()
    assert after > before + 0.5 and after > 0.5, (before, after)
    assert "loss/discriminator" in stats and "loss/generator_adv" in stats


def test_generator_step_moves_towards_what_the_head_calls_real():
    """Only the adversarial term (the IKL term replaced by zero): one small generator step must
    lower the generator's GAN loss measured independently, with the head held fixed."""
    g, t = _pair()
    images, _ = _real()

    def zero_loss(fake, teacher, x0, sigma, noise, c):
        return x0.flatten(1).sum(1) * 0.0, {}
    r = Refiner(g, t, batch=32, fake_warmup=30, lr_fake=2e-3, lr_gen=1e-3, seed=0, device="cpu",
                data_weight=1.0, data=images, generator_loss=zero_loss, fake_updates=1)
    gen = torch.Generator().manual_seed(3)
    z = torch.randn(128, r.G.z_dim, generator=gen)
    sigma = torch.exp(torch.randn(128, generator=gen) * 1.2)
    noise = torch.randn(128, 1, 8, 8, generator=gen)

    def gan_loss(G, head):
        with torch.no_grad():
            x = G(z)
            r.fake_score.train()
            torch.manual_seed(0)   # the same dropout masks for both measurements
            f = r._adv_features(x + sigma.reshape(-1, 1, 1, 1) * noise, sigma)
            return float(torch.nn.functional.softplus(-head(f)).mean())
    r.step()                      # warm-up: the head learns first
    head = copy.deepcopy(r.adv_head)
    fake_state = copy.deepcopy(r.fake_score.state_dict())
    G_before = copy.deepcopy(r.G)
    r.step()
    r.fake_score.load_state_dict(fake_state)   # measure both with the same fake score and head
    assert gan_loss(r.G, head) < gan_loss(G_before, head)


def test_data_term_resumes_bit_for_bit_and_conditional_uses_labels():
    g, t = _pair(c_dim=3)
    images, labels = _real(c_dim=3)
    kw = dict(batch=4, fake_warmup=1, seed=2, device="cpu", data_weight=0.5, data=(images, labels))
    a = Refiner(g, t, **kw)
    a.run(steps=2)
    state = copy.deepcopy(a.state_dict())
    a.run(steps=1)
    b = Refiner(g, t, **kw)
    b.load_state_dict(state)
    b.run(steps=1)
    for x, y in zip(list(a.G.parameters()) + list(a.adv_head.parameters()),
                    list(b.G.parameters()) + list(b.adv_head.parameters())):
        assert torch.equal(x, y)
    data = TensorData(images, labels, 3)
    im, lab = data.sample(5, generator=torch.Generator().manual_seed(0))
    idx = torch.randint(64, (5,), generator=torch.Generator().manual_seed(0))
    assert torch.equal(im, images[idx]) and torch.equal(lab.argmax(1), labels[idx])
