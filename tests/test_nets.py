"""gan_refine.nets: our StyleGAN2 / StyleGAN3 / EDM networks, checked against independent references."""

import ast
import copy
import io
import math
import pathlib
import pickle

import numpy as np
import pytest
import torch

import gan_refine.nets as nets
from gan_refine.nets import augment, edm, stylegan2, stylegan3

NETS_DIR = pathlib.Path(nets.__file__).parent



@pytest.fixture(scope='module')
def g2():
    return nets.stylegan2_generator(res=16, c_dim=0, channels=3, seed=0).eval()


def _z(n, dim, seed=0):
    return torch.randn([n, dim], generator=torch.Generator().manual_seed(seed))

#----------------------------------------------------------------------------
# Source hygiene: the module texts are embedded in pickles and run where gan_refine is absent.


ALLOWED_IMPORTS = {
    'stylegan2.py': {'numpy', 'torch', 'torch_utils.misc', 'torch_utils.persistence', 'torch_utils.ops.conv2d_resample',
                     'torch_utils.ops.upfirdn2d', 'torch_utils.ops.bias_act', 'torch_utils.ops.fma'},
    'stylegan3.py': {'numpy', 'scipy.signal', 'torch', 'torch_utils.misc', 'torch_utils.persistence',
                     'torch_utils.ops.conv2d_gradfix', 'torch_utils.ops.filtered_lrelu', 'torch_utils.ops.bias_act'},
    'edm.py': {'numpy', 'torch', 'torch_utils.persistence', 'torch.nn.functional.silu'},
    'augment.py': {'numpy', 'torch', 'torch_utils.misc', 'torch_utils.persistence', 'torch_utils.ops.upfirdn2d',
                   'torch_utils.ops.grid_sample_gradfix', 'torch_utils.ops.conv2d_gradfix'},
}


@pytest.mark.parametrize('fname', sorted(ALLOWED_IMPORTS))
def test_embedded_sources_import_only_upstream_names(fname):
    text = (NETS_DIR / fname).read_text()
    assert 'gan_refine' not in text  # the text travels inside exported pickles
    found = set()
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, 'relative import in an embedded module'
            found |= {f'{node.module}.{a.name}' for a in node.names}
    assert found == ALLOWED_IMPORTS[fname]

#----------------------------------------------------------------------------
# Modulated convolution against a float64 per-sample convolution written out by hand.


def _naive_conv2d(x, w, pad):
    """Cross-correlation by explicit sums over kernel taps (float64), x [I,H,W], w [O,I,k,k]."""
    _, h, wd = x.shape
    k = w.shape[-1]
    xp = np.pad(x, [(0, 0), (pad, pad), (pad, pad)])
    out_h, out_w = h + 2 * pad - k + 1, wd + 2 * pad - k + 1
    out = np.zeros([w.shape[0], out_h, out_w])
    for dy in range(k):
        for dx in range(k):
            out += np.einsum('oi,ihw->ohw', w[:, :, dy, dx], xp[:, dy:dy + out_h, dx:dx + out_w])
    return out


def _modconv_reference(x, weight, styles, demodulate, pad, noise=None, input_gain=None):
    x, weight, styles = (t.double().numpy() for t in (x, weight, styles))
    outs = []
    for n in range(x.shape[0]):
        k = weight * styles[n][None, :, None, None]
        if demodulate:
            k = k / np.sqrt((k ** 2).sum(axis=(1, 2, 3), keepdims=True) + 1e-8)
        if input_gain is not None:
            k = k * input_gain
        outs.append(_naive_conv2d(x[n], k, pad))
    out = np.stack(outs)
    if noise is not None:
        out = out + noise.double().numpy()
    return out


@pytest.mark.parametrize('fused', [True, False])
@pytest.mark.parametrize('demodulate', [True, False])
def test_stylegan2_modulated_conv_matches_naive(fused, demodulate):
    gen = torch.Generator().manual_seed(3)
    x = torch.randn([3, 4, 7, 7], generator=gen)
    weight = torch.randn([5, 4, 3, 3], generator=gen)
    styles = torch.randn([3, 4], generator=gen) + 1
    noise = torch.randn([3, 1, 7, 7], generator=gen) * 0.3
    got = stylegan2.modulated_conv2d(x, weight, styles, noise=noise, padding=1, demodulate=demodulate,
                                     fused_modconv=fused)
    want = _modconv_reference(x, weight, styles, demodulate, pad=1, noise=noise)
    np.testing.assert_allclose(got.double().numpy(), want, rtol=1e-4, atol=1e-4)


def test_stylegan3_modulated_conv_matches_naive():
    gen = torch.Generator().manual_seed(4)
    x = torch.randn([2, 3, 6, 6], generator=gen)
    weight = torch.randn([4, 3, 3, 3], generator=gen)
    styles = torch.randn([2, 3], generator=gen)
    gain = torch.tensor(0.7)
    got = stylegan3.modulated_conv2d(x, weight, styles, demodulate=True, padding=2, input_gain=gain)
    want = _modconv_reference(x, weight, styles, True, pad=2, input_gain=0.7)
    np.testing.assert_allclose(got.double().numpy(), want, rtol=1e-4, atol=1e-4)

#----------------------------------------------------------------------------
# StyleGAN2 generator behaviour.


def test_stylegan2_generator_shape_and_range(g2):
    assert (g2.z_dim, g2.c_dim, g2.img_resolution, g2.img_channels) == (32, 0, 16, 3)
    # Two convs per block except the 4x4 (one), plus the last block's toRGB: 1 + 2 + 2 + 1.
    assert g2.num_ws == 6 and g2.mapping.num_ws == 6 and g2.synthesis.num_ws == 6
    img = g2(_z(8, 32), None)
    assert img.shape == (8, 3, 16, 16) and img.dtype == torch.float32
    assert torch.isfinite(img).all()
    assert 0.2 < img.std().item() < 1.0 and img.abs().max().item() < 4


def test_stylegan2_noise_modes(g2):
    z = _z(2, 32, seed=1)
    const_a = g2(z, None, noise_mode='const')
    const_b = g2(z, None, noise_mode='const')
    assert torch.equal(const_a, const_b)
    rand_a = g2(z, None, noise_mode='random')
    rand_b = g2(z, None, noise_mode='random')
    assert (rand_a - rand_b).abs().max() > 1e-3
    # 'none' must equal 'const' with every noise strength set to zero.
    quiet = copy.deepcopy(g2)
    with torch.no_grad():
        for name, p in quiet.named_parameters():
            if name.endswith('noise_strength'):
                assert p.item() != 0  # the fixture looks trained
                p.zero_()
    torch.testing.assert_close(g2(z, None, noise_mode='none'), quiet(z, None, noise_mode='const'))


def test_stylegan2_truncation_psi_zero_gives_w_avg_image(g2):
    imgs = g2(_z(4, 32, seed=2), None, truncation_psi=0, noise_mode='const')
    ws = g2.mapping.w_avg.reshape(1, 1, -1).repeat(1, g2.num_ws, 1)
    ref = g2.synthesis(ws, noise_mode='const')
    for img in imgs:
        torch.testing.assert_close(img, ref[0], rtol=1e-5, atol=1e-5)
    # Partial truncation: psi lerps w towards w_avg only for the first `cutoff` ws.
    z = _z(3, 32, seed=5)
    w = g2.mapping(z, None)
    wt = g2.mapping(z, None, truncation_psi=0.5, truncation_cutoff=2)
    torch.testing.assert_close(wt[:, :2], 0.5 * w[:, :2] + 0.5 * g2.mapping.w_avg)
    torch.testing.assert_close(wt[:, 2:], w[:, 2:])


def test_stylegan2_update_emas_moves_w_avg():
    G = nets.stylegan2_generator(res=8, channels=1, seed=3)
    before = G.mapping.w_avg.clone()
    z = _z(5, G.z_dim)
    w = G.mapping(z, None)[:, 0]
    G(z, None, update_emas=True)
    beta = G.mapping.w_avg_beta
    torch.testing.assert_close(G.mapping.w_avg, beta * before + (1 - beta) * w.mean(0))


def test_stylegan2_fp16_blocks_fall_back_to_fp32_on_cpu():
    G = nets.stylegan2_generator(res=16, channels=1, seed=4, synthesis_kwargs=dict(num_fp16_res=3)).eval()
    flags = {res: getattr(G.synthesis, f'b{res}').use_fp16 for res in G.synthesis.block_resolutions}
    assert flags == {4: False, 8: True, 16: True}  # the 4x4 block never runs in fp16
    z = _z(2, G.z_dim)
    img = G(z, None, noise_mode='const')
    assert img.dtype == torch.float32 and torch.isfinite(img).all()
    # Identical to an explicitly fp32 run: on CPU no layer is allowed to switch to half.
    torch.testing.assert_close(img, G(z, None, noise_mode='const', force_fp32=True), rtol=0, atol=0)


def test_stylegan2_conditional_generator_and_discriminator():
    G = nets.stylegan2_generator(res=8, c_dim=4, channels=1, seed=5).eval()
    D = nets.stylegan2_discriminator(res=8, c_dim=4, channels=1, seed=6).eval()
    z = _z(4, G.z_dim)
    c = torch.eye(4)
    img = G(z, c, noise_mode='const')
    assert img.shape == (4, 1, 8, 8)
    # The label changes the image and, via projection, the logit.
    assert (img - G(z, c.roll(1, dims=0), noise_mode='const')).abs().max() > 1e-4
    logits = D(img, c)
    assert logits.shape == (4, 1) and torch.isfinite(logits).all()
    assert (logits - D(img, c.roll(1, dims=0))).abs().max() > 1e-6


def test_minibatch_std_layer_matches_float64_reference():
    x = torch.randn([4, 6, 3, 3], generator=torch.Generator().manual_seed(7))
    layer = stylegan2.MinibatchStdLayer(group_size=2, num_channels=2)
    out = layer(x)
    assert out.shape == (4, 8, 3, 3)
    xd = x.double().numpy()
    for i in range(4):
        # Sample i's group: every sample at the same position modulo N/G (groups are strided).
        members = xd[[j for j in range(4) if j % 2 == i % 2]]
        std = np.sqrt(members.var(axis=0) + 1e-8)  # population std over the group, [C,H,W]
        for f in range(2):
            expect = std[f * 3:(f + 1) * 3].mean()
            np.testing.assert_allclose(out[i, 6 + f].double().numpy(), expect, rtol=1e-5)
    torch.testing.assert_close(out[:, :6], x)

#----------------------------------------------------------------------------
# StyleGAN3.


def test_stylegan3_generator_and_filter_schedule():
    G = nets.stylegan3_generator(res=16, c_dim=0, channels=3, seed=0).eval()
    assert G.num_ws == G.synthesis.num_layers + 2
    img = G(_z(2, G.z_dim), None)
    assert img.shape == (2, 3, 16, 16) and torch.isfinite(img).all() and img.std() > 1e-3
    layers = [getattr(G.synthesis, name) for name in G.synthesis.layer_names]
    last, torgb = layers[-2], layers[-1]
    # Critically sampled end of the stack: cutoff at Nyquist of the output, no margin.
    assert last.out_cutoff == pytest.approx(8.0) and last.out_sampling_rate == 16
    assert list(last.out_size) == [16, 16] and torgb.is_torgb and torgb.up_filter is None
    for layer in layers[:-1]:
        assert layer.up_factor == 2 * layer.out_sampling_rate // layer.in_sampling_rate
        for f, cutoff, half_width in [(layer.up_filter, layer.in_cutoff, layer.in_half_width),
                                      (layer.down_filter, layer.out_cutoff, layer.out_half_width)]:
            # Low-pass by direct DTFT of the taps: unit DC gain, and everything from the stopband
            # (cutoff + half width) up to the Nyquist rate of the upsampled signal suppressed.
            taps = f.double().numpy()
            k = np.arange(len(taps)) - (len(taps) - 1) / 2
            freqs = np.linspace(cutoff + half_width, layer.tmp_sampling_rate / 2, 64)
            resp = np.abs(np.exp(-2j * np.pi * freqs[:, None] / layer.tmp_sampling_rate * k) @ taps)
            assert taps.sum() == pytest.approx(1, abs=1e-5)
            assert resp.max() < 0.06


def test_stylegan3_truncation_and_conditioning():
    G = nets.stylegan3_generator(res=16, c_dim=3, channels=1, seed=1).eval()
    c = torch.eye(3)
    imgs = G(_z(3, G.z_dim), c, truncation_psi=0)
    torch.testing.assert_close(imgs, imgs[:1].expand_as(imgs), rtol=1e-5, atol=1e-5)

#----------------------------------------------------------------------------
# EDM preconditioning against Table 1 of Karras et al. 2022, in float64.


class _KnownBackbone(torch.nn.Module):
    """F(x_in, c_noise) = 0.3 x_in + 0.01 c_noise (+ label term), in every output channel."""

    def __init__(self, out_channels):
        super().__init__()
        self.out_channels = out_channels
        self.seen = {}

    def forward(self, x, noise_labels, class_labels=None, augment_labels=None):
        self.seen = dict(noise_labels=noise_labels, class_labels=class_labels)
        f = 0.3 * x + 0.01 * noise_labels.reshape(-1, 1, 1, 1)
        if class_labels is not None:
            f = f + 0.1 * class_labels.argmax(dim=1).to(x.dtype).reshape(-1, 1, 1, 1)
        reps = self.out_channels // x.shape[1]
        return torch.cat([f] + [torch.full_like(f, 1e3)] * (reps - 1), dim=1)  # extra channels must be ignored


def _iddpm_u(M=1000, C_1=0.001, C_2=0.008):
    alpha_bar = lambda j: math.sin(0.5 * math.pi * j / M / (C_2 + 1)) ** 2  # noqa: E731
    u = [0.0] * (M + 1)
    for j in range(M, 0, -1):
        u[j - 1] = math.sqrt((u[j] ** 2 + 1) / max(alpha_bar(j - 1) / alpha_bar(j), C_1) - 1)
    return np.array(u)


def _table1(kind, sigma, net):
    """(c_skip, c_out, c_in, c_noise) for each preconditioning, float64, from the paper's formulas."""
    s = sigma
    if kind == 'EDMPrecond':
        sd = 0.5
        return sd ** 2 / (s ** 2 + sd ** 2), s * sd / np.sqrt(s ** 2 + sd ** 2), 1 / np.sqrt(s ** 2 + sd ** 2), np.log(s) / 4
    if kind == 'VPPrecond':
        beta_d, beta_min, M = 19.9, 0.1, 1000
        t = (np.sqrt(beta_min ** 2 + 2 * beta_d * np.log(1 + s ** 2)) - beta_min) / beta_d
        return 1.0, -s, 1 / np.sqrt(s ** 2 + 1), (M - 1) * t
    if kind == 'VEPrecond':
        return 1.0, s, 1.0, np.log(0.5 * s)
    u = _iddpm_u()
    j = np.abs(s[:, None] - u[None, :]).argmin(axis=1)
    return 1.0, -s, 1 / np.sqrt(s ** 2 + 1), 999 - j


@pytest.mark.parametrize('kind', nets.EDM_KINDS)
def test_edm_preconditioning_closed_form(kind):
    net = nets.edm_denoiser(kind, res=8, channels=2, label_dim=3, seed=0).eval()
    assert (net.img_resolution, net.img_channels, net.label_dim) == (8, 2, 3)
    assert hasattr(net, 'sigma_data') == (kind == 'EDMPrecond')
    out_channels = 4 if kind == 'iDDPMPrecond' else 2
    net.model = _KnownBackbone(out_channels)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn([4, 2, 8, 8], generator=gen)
    sigma = torch.tensor([0.01, 0.3, 2.0, 40.0])
    labels = torch.eye(3)[[0, 2, 1, 2]]
    got = net(x, sigma, labels)
    assert got.dtype == torch.float32 and got.shape == x.shape

    s = sigma.double().numpy()
    c_skip, c_out, c_in, c_noise = (np.broadcast_to(np.asarray(v, dtype=np.float64), s.shape).reshape(-1, 1, 1, 1)
                                    for v in _table1(kind, s, net))
    xd = x.double().numpy()
    f = 0.3 * (c_in * xd) + 0.01 * c_noise + 0.1 * np.array([0, 2, 1, 2]).reshape(-1, 1, 1, 1)
    want = c_skip * xd + c_out * f
    np.testing.assert_allclose(got.double().numpy(), want, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(net.model.seen['class_labels'], labels)


def test_edm_sigma_ranges_and_rounding():
    vp = nets.edm_denoiser('VPPrecond', res=8, channels=1)
    # sigma(t) = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1) at t = epsilon_t and t = 1.
    # (sigma_min is computed in float32 as upstream does: exp(x) - 1 near x = 1e-6 keeps ~2 digits.)
    assert vp.sigma_min == pytest.approx(math.sqrt(math.expm1(0.5 * 19.9 * 1e-10 + 0.1 * 1e-5)), rel=5e-2)
    assert vp.sigma_max == pytest.approx(math.sqrt(math.expm1(0.5 * 19.9 + 0.1)), rel=1e-5)
    ve = nets.edm_denoiser('VEPrecond', res=8, channels=1)
    assert (ve.sigma_min, ve.sigma_max) == (0.02, 100)
    edm_net = nets.edm_denoiser('EDMPrecond', res=8, channels=1)
    assert (edm_net.sigma_min, edm_net.sigma_max, edm_net.sigma_data) == (0, float('inf'), 0.5)
    iddpm = nets.edm_denoiser('iDDPMPrecond', res=8, channels=1)
    u = _iddpm_u()
    # The table is built in float32 like upstream's; 1000 recursion steps drift ~1e-3 from float64.
    assert iddpm.sigma_min == pytest.approx(u[999], rel=2e-3) and iddpm.sigma_max == pytest.approx(u[0], rel=2e-3)
    query = torch.tensor([0.5, 3.0, 0.01])
    nearest = u[np.abs(query.double().numpy()[:, None] - u[None, :]).argmin(axis=1)]
    np.testing.assert_allclose(iddpm.round_sigma(query).double().numpy(), nearest, rtol=2e-3)


def test_edm_unet_dropout_and_labels():
    net = nets.edm_denoiser('EDMPrecond', res=8, channels=1, label_dim=2, seed=2)
    x = torch.randn([2, 1, 8, 8], generator=torch.Generator().manual_seed(0))
    sigma = torch.tensor([0.5, 1.5])
    labels = torch.eye(2)
    net.eval()
    a, b = net(x, sigma, labels), net(x, sigma, labels)
    assert torch.equal(a, b)
    assert (a - net(x, sigma, labels.flip(0))).abs().max() > 1e-5  # labels reach the backbone
    net.train()
    assert (net(x, sigma, labels) - net(x, sigma, labels)).abs().max() > 1e-6  # dropout active in training
    assert (a - x).abs().max() > 1e-3  # not just c_skip * x: the output layers are live


def test_edm_loss_weighting():
    loss_fn = edm.EDMLoss(P_mean=-1.2, P_std=1.2, sigma_data=0.5)
    images = torch.randn([3, 1, 4, 4])

    def oracle(y, sigma, labels=None, augment_labels=None):
        oracle.sigma = sigma
        return torch.zeros_like(y)
    loss = loss_fn(oracle, images)
    s = oracle.sigma
    lam = (s ** 2 + 0.25) / (s * 0.5) ** 2
    torch.testing.assert_close(loss, lam * images.square())

#----------------------------------------------------------------------------
# Augment pipe.


def test_augment_pipe_identity_at_p0_and_brightness_shift():
    x = torch.randn([4, 3, 8, 8], generator=torch.Generator().manual_seed(0))
    pipe = nets.augment_pipe(channels=3, p=0.0)
    torch.testing.assert_close(pipe(x), x, rtol=1e-6, atol=1e-6)
    bright = augment.AugmentPipe(brightness=1)
    out = bright(x)
    shift = (out - x).reshape(4, -1)
    # Brightness adds one constant per sample to every pixel and channel.
    torch.testing.assert_close(shift, shift[:, :1].expand_as(shift), rtol=1e-5, atol=1e-5)
    geo = nets.augment_pipe(channels=1, p=1.0)
    y = geo(x[:, :1])
    assert y.shape == (4, 1, 8, 8) and torch.isfinite(y).all()

#----------------------------------------------------------------------------
# Pickles.


def _load_recording_globals(data):
    """Unpickle `data`, returning the object and every global name the stream references."""
    names = set()

    class Recorder(pickle.Unpickler):
        def find_class(self, module, name):
            names.add(f'{module}.{name}')
            return super().find_class(module, name)
    return Recorder(io.BytesIO(data)).load(), names


@pytest.mark.parametrize('family', ['stylegan2', 'stylegan3', 'edm'])
def test_pickle_round_trip_identical_outputs(family):
    if family == 'edm':
        module = nets.edm_denoiser('VPPrecond', res=8, channels=1, label_dim=2).eval()
        args = (torch.randn([2, 1, 8, 8]), torch.tensor([0.2, 5.0]), torch.eye(2))
        call = lambda m: m(*args)  # noqa: E731
    else:
        build = nets.stylegan2_generator if family == 'stylegan2' else nets.stylegan3_generator
        module = build(res=16, c_dim=0, channels=1).eval()
        z = _z(2, module.z_dim)
        call = lambda m: m(z, None, noise_mode='const')  # noqa: E731
    data = pickle.dumps(module)
    clone, names = _load_recording_globals(data)
    assert torch.equal(call(clone), call(module))
    assert clone.init_kwargs == module.init_kwargs
    assert 'torch_utils.persistence._reconstruct_persistent_obj' in names
    assert {name.split('.')[0] for name in names} <= {'torch_utils', 'dnnlib', 'torch', 'numpy', 'collections'}
    assert b'gan_refine' not in data


def _assert_saved_module(m):
    assert not m.training and not any(p.requires_grad for p in m.parameters())
    assert all(t.device.type == 'cpu' for t in list(m.parameters()) + list(m.buffers()))


def test_pkl_dict_layouts():
    d2 = nets.stylegan2_pkl_dict(res=8, c_dim=0, channels=1)
    assert list(d2) == ['training_set_kwargs', 'G', 'D', 'G_ema', 'augment_pipe']
    d3 = nets.stylegan3_pkl_dict(res=16, c_dim=2, channels=3)
    assert list(d3) == ['G', 'D', 'G_ema', 'augment_pipe', 'training_set_kwargs']
    de = nets.edm_pkl_dict('EDMPrecond', res=8, channels=1, label_dim=0)
    assert list(de) == ['ema', 'loss_fn', 'augment_pipe', 'dataset_kwargs']
    for d in (d2, d3):
        for key in ('G', 'D', 'G_ema', 'augment_pipe'):
            _assert_saved_module(d[key])
        g, g_ema = d['G'].state_dict(), d['G_ema'].state_dict()
        assert g.keys() == g_ema.keys() and any(not torch.equal(g[k], g_ema[k]) for k in g)
        assert type(d['training_set_kwargs']) is dict  # upstream stores dict(training_set_kwargs)
    assert d3['training_set_kwargs']['use_labels'] and d3['G'].c_dim == 2 and d3['D'].c_dim == 2
    _assert_saved_module(de['ema'])
    assert de['loss_fn'].sigma_data == de['ema'].sigma_data and de['augment_pipe'] is None
    assert de['dataset_kwargs']['resolution'] == 8
    # The whole dict survives a pickle round trip with its persistent objects intact.
    back = pickle.loads(pickle.dumps(d2))
    z = _z(2, back['G'].z_dim)
    assert torch.equal(back['G_ema'](z, None, noise_mode='const'), d2['G_ema'](z, None, noise_mode='const'))
