"""A small alias-free (StyleGAN3-T-like) generator written for this project's
test fixtures and model zoo.

The full text of this file is stored inside every network pickle made from it and executed
again on load, possibly in a stock StyleGAN3 checkout where this project is not installed:
it imports only the top-level names upstream network code imports, nothing of this project.

Design from Karras et al., "Alias-Free Generative Adversarial Networks" (NeurIPS 2021): a
Fourier-feature input that the mapping network can rotate and translate, then a stack of layers
that each modulate-convolve, up-sample, apply the leaky ReLU at the higher rate and low-pass back
down (`filtered_lrelu`), with Kaiser low-pass filters whose cutoff and stopband grow
geometrically from the first to the last layer; the last layers are critically sampled.
Radial (StyleGAN3-R) filters are not implemented.
"""

import numpy as np
import scipy.signal
import torch
from torch_utils import misc
from torch_utils import persistence
from torch_utils.ops import conv2d_gradfix
from torch_utils.ops import filtered_lrelu
from torch_utils.ops import bias_act

#----------------------------------------------------------------------------


def normalize_2nd_moment(x, dim=1, eps=1e-8):
    return x * (x.square().mean(dim=dim, keepdim=True) + eps).rsqrt()


def modulated_conv2d(x, w, s, demodulate=True, padding=0, input_gain=None):
    """Per-sample modulated convolution as one grouped conv. x [N,I,H,W], w [O,I,k,k], s [N,I]."""
    n = x.shape[0]
    out_ch, in_ch, kh, kw = w.shape
    misc.assert_shape(w, [out_ch, in_ch, kh, kw])
    misc.assert_shape(x, [n, in_ch, None, None])
    misc.assert_shape(s, [n, in_ch])

    if demodulate:
        # Demodulation removes any global scale, so rescale both factors to unit RMS first:
        # keeps the per-sample kernels representable in fp16.
        w = w * w.square().mean(dim=[1, 2, 3], keepdim=True).rsqrt()
        s = s * s.square().mean().rsqrt()

    kernels = w.unsqueeze(0) * s.reshape(n, 1, in_ch, 1, 1)
    if demodulate:
        kernels = kernels * (kernels.square().sum(dim=[2, 3, 4], keepdim=True) + 1e-8).rsqrt()
    if input_gain is not None:
        # Applied after demodulation: it rescales the input, not the kernel's shape.
        kernels = kernels * input_gain.expand(n, in_ch).reshape(n, 1, in_ch, 1, 1)

    x = x.reshape(1, -1, *x.shape[2:])
    kernels = kernels.reshape(-1, in_ch, kh, kw)
    x = conv2d_gradfix.conv2d(input=x, weight=kernels.to(x.dtype), padding=padding, groups=n)
    return x.reshape(n, -1, *x.shape[2:])

#----------------------------------------------------------------------------


@persistence.persistent_class
class FullyConnectedLayer(torch.nn.Module):
    def __init__(self, in_features, out_features, activation='linear', bias=True, lr_multiplier=1,
                 weight_init=1, bias_init=0):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.activation = activation
        self.weight = torch.nn.Parameter(torch.randn([out_features, in_features]) * (weight_init / lr_multiplier))
        init = np.broadcast_to(np.asarray(bias_init, dtype=np.float32), [out_features])
        self.bias = torch.nn.Parameter(torch.from_numpy(init / lr_multiplier)) if bias else None
        self.weight_gain = lr_multiplier / np.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def forward(self, x):
        w = self.weight.to(x.dtype) * self.weight_gain
        b = self.bias
        if b is not None:
            b = b.to(x.dtype)
            if self.bias_gain != 1:
                b = b * self.bias_gain
        if self.activation == 'linear' and b is not None:
            return torch.addmm(b.unsqueeze(0), x, w.t())
        return bias_act.bias_act(x.matmul(w.t()), b, act=self.activation)

    def extra_repr(self):
        return f'in_features={self.in_features:d}, out_features={self.out_features:d}, activation={self.activation:s}'

#----------------------------------------------------------------------------


@persistence.persistent_class
class MappingNetwork(torch.nn.Module):
    def __init__(self, z_dim, c_dim, w_dim, num_ws, num_layers=2, lr_multiplier=0.01, w_avg_beta=0.998):
        super().__init__()
        self.z_dim = z_dim
        self.c_dim = c_dim
        self.w_dim = w_dim
        self.num_ws = num_ws
        self.num_layers = num_layers
        self.w_avg_beta = w_avg_beta

        self.embed = FullyConnectedLayer(c_dim, w_dim) if c_dim > 0 else None
        widths = [z_dim + (w_dim if c_dim > 0 else 0)] + [w_dim] * num_layers
        for idx in range(num_layers):
            setattr(self, f'fc{idx}', FullyConnectedLayer(widths[idx], widths[idx + 1], activation='lrelu',
                                                          lr_multiplier=lr_multiplier))
        self.register_buffer('w_avg', torch.zeros([w_dim]))

    def forward(self, z, c, truncation_psi=1, truncation_cutoff=None, update_emas=False):
        misc.assert_shape(z, [None, self.z_dim])
        if truncation_cutoff is None:
            truncation_cutoff = self.num_ws
        x = normalize_2nd_moment(z.to(torch.float32))
        if self.c_dim > 0:
            misc.assert_shape(c, [None, self.c_dim])
            y = normalize_2nd_moment(self.embed(c.to(torch.float32)))
            x = torch.cat([x, y], dim=1)
        for idx in range(self.num_layers):
            x = getattr(self, f'fc{idx}')(x)

        if update_emas:
            self.w_avg.copy_(x.detach().mean(dim=0).lerp(self.w_avg, self.w_avg_beta))
        x = x.unsqueeze(1).repeat([1, self.num_ws, 1])
        if truncation_psi != 1:
            x[:, :truncation_cutoff] = self.w_avg.lerp(x[:, :truncation_cutoff], truncation_psi)
        return x

    def extra_repr(self):
        return f'z_dim={self.z_dim:d}, c_dim={self.c_dim:d}, w_dim={self.w_dim:d}, num_ws={self.num_ws:d}'

#----------------------------------------------------------------------------


@persistence.persistent_class
class SynthesisInput(torch.nn.Module):
    def __init__(self, w_dim, channels, size, sampling_rate, bandwidth):
        super().__init__()
        self.w_dim = w_dim
        self.channels = channels
        self.size = np.broadcast_to(np.asarray(size), [2])
        self.sampling_rate = sampling_rate
        self.bandwidth = bandwidth

        # Random frequencies inside the disc of radius `bandwidth`, denser towards the centre.
        direction = torch.randn([channels, 2])
        direction = direction / direction.norm(dim=1, keepdim=True)
        radius = torch.rand([channels, 1]) * bandwidth
        self.register_buffer('freqs', direction * radius)
        self.register_buffer('phases', torch.rand([channels]) - 0.5)
        self.weight = torch.nn.Parameter(torch.randn([channels, channels]))
        # Starts as the identity transform: unit rotation (1, 0), zero translation.
        self.affine = FullyConnectedLayer(w_dim, 4, weight_init=0, bias_init=[1, 0, 0, 0])
        # A user-set extra transform (e.g. to translate or rotate the output by hand).
        self.register_buffer('transform', torch.eye(3, 3))

    def forward(self, w):
        n = w.shape[0]
        t = self.affine(w)
        # Scale so (t0, t1) is a unit vector: a pure rotation, and the shift shares that scale.
        t = t / t[:, :2].norm(dim=1, keepdim=True)
        cos, sin, tx, ty = t.unbind(dim=1)
        zero, one = torch.zeros_like(cos), torch.ones_like(cos)
        rot = torch.stack([cos, -sin, zero, sin, cos, zero, zero, zero, one], dim=1).reshape(n, 3, 3)
        shift = torch.stack([one, zero, -tx, zero, one, -ty, zero, zero, one], dim=1).reshape(n, 3, 3)
        transforms = rot @ shift @ self.transform.unsqueeze(0)

        phases = self.phases.unsqueeze(0) + (self.freqs.unsqueeze(0) @ transforms[:, :2, 2:]).squeeze(2)
        freqs = self.freqs.unsqueeze(0) @ transforms[:, :2, :2]  # [N, C, 2]
        # Fade out any frequency the transform pushed past the band limit.
        amps = (1 - (freqs.norm(dim=2) - self.bandwidth) / (self.sampling_rate / 2 - self.bandwidth)).clamp(0, 1)

        width, height = int(self.size[0]), int(self.size[1])
        xs = (torch.arange(width, device=w.device, dtype=torch.float32) + 0.5 - width / 2) / self.sampling_rate
        ys = (torch.arange(height, device=w.device, dtype=torch.float32) + 0.5 - height / 2) / self.sampling_rate
        grid = torch.stack(torch.meshgrid(xs, ys, indexing='xy'), dim=-1)  # [H, W, 2] as (x, y)
        arg = torch.einsum('hwd,ncd->nhwc', grid, freqs) + phases.reshape(n, 1, 1, -1)
        x = torch.sin(arg * (2 * np.pi)) * amps.reshape(n, 1, 1, -1)
        x = x @ (self.weight / np.sqrt(self.channels)).t()
        x = x.permute(0, 3, 1, 2)
        misc.assert_shape(x, [n, self.channels, height, width])
        return x.contiguous()

    def extra_repr(self):
        return (f'w_dim={self.w_dim:d}, channels={self.channels:d}, size={list(self.size)}, '
                f'sampling_rate={self.sampling_rate:g}, bandwidth={self.bandwidth:g}')

#----------------------------------------------------------------------------


@persistence.persistent_class
class SynthesisLayer(torch.nn.Module):
    def __init__(self, w_dim, is_torgb, is_critically_sampled, use_fp16, in_channels, out_channels,
                 in_size, out_size, in_sampling_rate, out_sampling_rate, in_cutoff, out_cutoff,
                 in_half_width, out_half_width, conv_kernel=3, filter_size=6, lrelu_upsampling=2,
                 use_radial_filters=False, conv_clamp=256, magnitude_ema_beta=0.999):
        super().__init__()
        if use_radial_filters:
            raise NotImplementedError('radial (StyleGAN3-R) filters are not implemented in this network')
        self.w_dim = w_dim
        self.is_torgb = is_torgb
        self.is_critically_sampled = is_critically_sampled
        self.use_fp16 = use_fp16
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.in_size = np.broadcast_to(np.asarray(in_size), [2])
        self.out_size = np.broadcast_to(np.asarray(out_size), [2])
        self.in_sampling_rate = in_sampling_rate
        self.out_sampling_rate = out_sampling_rate
        self.in_cutoff = in_cutoff
        self.out_cutoff = out_cutoff
        self.in_half_width = in_half_width
        self.out_half_width = out_half_width
        self.conv_kernel = 1 if is_torgb else conv_kernel
        self.conv_clamp = conv_clamp
        self.magnitude_ema_beta = magnitude_ema_beta

        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = torch.nn.Parameter(torch.randn([out_channels, in_channels, self.conv_kernel, self.conv_kernel]))
        self.bias = torch.nn.Parameter(torch.zeros([out_channels]))
        self.register_buffer('magnitude_ema', torch.ones([]))

        # The nonlinearity runs at `lrelu_upsampling` times the higher of the two rates so the
        # harmonics it creates can be filtered out before resampling to the output rate.
        self.tmp_sampling_rate = max(in_sampling_rate, out_sampling_rate) * (1 if is_torgb else lrelu_upsampling)
        self.up_factor = int(np.rint(self.tmp_sampling_rate / in_sampling_rate))
        self.down_factor = int(np.rint(self.tmp_sampling_rate / out_sampling_rate))
        assert in_sampling_rate * self.up_factor == self.tmp_sampling_rate
        assert out_sampling_rate * self.down_factor == self.tmp_sampling_rate
        self.up_taps = filter_size * self.up_factor if (self.up_factor > 1 and not is_torgb) else 1
        self.down_taps = filter_size * self.down_factor if (self.down_factor > 1 and not is_torgb) else 1
        self.register_buffer('up_filter', self.design_lowpass_filter(
            numtaps=self.up_taps, cutoff=in_cutoff, width=in_half_width * 2, fs=self.tmp_sampling_rate))
        self.register_buffer('down_filter', self.design_lowpass_filter(
            numtaps=self.down_taps, cutoff=out_cutoff, width=out_half_width * 2, fs=self.tmp_sampling_rate))

        # Padding so that full convolution, up-sampling, both FIR filters and down-sampling land
        # exactly on out_size: (out-1)*down + 1 = (in+k-1)*up + pad - (up_taps-1) - (down_taps-1).
        pad_total = (self.out_size - 1) * self.down_factor + 1
        pad_total = pad_total - (self.in_size + self.conv_kernel - 1) * self.up_factor
        pad_total = pad_total + self.up_taps + self.down_taps - 2
        # Zero insertion leaves up-1 trailing zeros per sample; shift by half of that to stay centred.
        pad_lo = (pad_total + self.up_factor) // 2
        pad_hi = pad_total - pad_lo
        self.padding = [int(pad_lo[0]), int(pad_hi[0]), int(pad_lo[1]), int(pad_hi[1])]

    def forward(self, x, w, noise_mode='random', force_fp32=False, update_emas=False):
        assert noise_mode in ['random', 'const', 'none']  # accepted for API parity; these layers have no noise
        misc.assert_shape(x, [None, self.in_channels, int(self.in_size[1]), int(self.in_size[0])])
        misc.assert_shape(w, [x.shape[0], self.w_dim])

        if update_emas:
            with torch.autograd.profiler.record_function('update_magnitude_ema'):
                magnitude = x.detach().to(torch.float32).square().mean()
                self.magnitude_ema.copy_(magnitude.lerp(self.magnitude_ema, self.magnitude_ema_beta))
        input_gain = self.magnitude_ema.rsqrt()

        styles = self.affine(w)
        if self.is_torgb:
            styles = styles * (1 / np.sqrt(self.in_channels * self.conv_kernel ** 2))

        half = self.use_fp16 and not force_fp32 and x.device.type == 'cuda'
        dtype = torch.float16 if half else torch.float32
        x = modulated_conv2d(x=x.to(dtype), w=self.weight, s=styles, padding=self.conv_kernel - 1,
                             demodulate=(not self.is_torgb), input_gain=input_gain)

        gain = 1 if self.is_torgb else np.sqrt(2)
        slope = 1 if self.is_torgb else 0.2
        x = filtered_lrelu.filtered_lrelu(x=x, fu=self.up_filter, fd=self.down_filter, b=self.bias.to(x.dtype),
                                          up=self.up_factor, down=self.down_factor, padding=self.padding,
                                          gain=gain, slope=slope, clamp=self.conv_clamp)
        misc.assert_shape(x, [None, self.out_channels, int(self.out_size[1]), int(self.out_size[0])])
        assert x.dtype == dtype
        return x

    @staticmethod
    def design_lowpass_filter(numtaps, cutoff, width, fs):
        if numtaps == 1:
            return None
        # Kaiser-window FIR; firwin derives the window's beta from the transition width.
        f = scipy.signal.firwin(numtaps=numtaps, cutoff=cutoff, width=width, fs=fs)
        return torch.as_tensor(f, dtype=torch.float32)

    def extra_repr(self):
        return (f'w_dim={self.w_dim:d}, is_torgb={self.is_torgb}, is_critically_sampled={self.is_critically_sampled}, '
                f'in_size={list(self.in_size)}, out_size={list(self.out_size)}, in_channels={self.in_channels:d}, '
                f'out_channels={self.out_channels:d}, up={self.up_factor}, down={self.down_factor}')

#----------------------------------------------------------------------------


def _filter_schedule(img_resolution, num_layers, num_critical, first_cutoff, first_stopband,
                     last_stopband_rel, margin_size, channel_base, channel_max, img_channels):
    """Per-layer (index 0 = input, num_layers = toRGB) cutoff, stopband, rate, size and width."""
    assert num_layers > num_critical
    last_cutoff = img_resolution / 2
    last_stopband = last_cutoff * last_stopband_rel
    rows = []
    for idx in range(num_layers + 1):
        # Geometric progression up to the critically sampled tail, then constant.
        frac = min(idx / (num_layers - num_critical), 1.0)
        cutoff = first_cutoff * (last_cutoff / first_cutoff) ** frac
        stopband = first_stopband * (last_stopband / first_stopband) ** frac
        rate = 2.0 ** np.ceil(np.log2(min(2 * stopband, img_resolution)))
        rows.append(dict(
            cutoff=cutoff, stopband=stopband, sampling_rate=int(rate),
            half_width=max(stopband, rate / 2) - cutoff,
            size=int(rate + 2 * margin_size) if idx < num_layers - 1 else img_resolution,
            channels=int(np.rint(min(channel_base / 2 / cutoff, channel_max))) if idx < num_layers else img_channels))
    return rows


@persistence.persistent_class
class SynthesisNetwork(torch.nn.Module):
    def __init__(self, w_dim, img_resolution, img_channels, channel_base=32768, channel_max=512,
                 num_layers=14, num_critical=2, first_cutoff=2, first_stopband=2 ** 2.1,
                 last_stopband_rel=2 ** 0.3, margin_size=10, output_scale=0.25, num_fp16_res=4,
                 **layer_kwargs):
        super().__init__()
        self.w_dim = w_dim
        self.num_ws = num_layers + 2
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        self.num_layers = num_layers
        self.num_critical = num_critical
        self.margin_size = margin_size
        self.output_scale = output_scale
        self.num_fp16_res = num_fp16_res

        rows = _filter_schedule(img_resolution, num_layers, num_critical, first_cutoff, first_stopband,
                                last_stopband_rel, margin_size, channel_base, channel_max, img_channels)
        self.input = SynthesisInput(w_dim=w_dim, channels=rows[0]['channels'], size=rows[0]['size'],
                                    sampling_rate=rows[0]['sampling_rate'], bandwidth=rows[0]['cutoff'])
        self.layer_names = []
        for idx in range(num_layers + 1):
            src, dst = rows[max(idx - 1, 0)], rows[idx]
            layer = SynthesisLayer(
                w_dim=w_dim, is_torgb=(idx == num_layers), is_critically_sampled=(idx >= num_layers - num_critical),
                use_fp16=(dst['sampling_rate'] * 2 ** num_fp16_res > img_resolution),
                in_channels=src['channels'], out_channels=dst['channels'], in_size=src['size'], out_size=dst['size'],
                in_sampling_rate=src['sampling_rate'], out_sampling_rate=dst['sampling_rate'],
                in_cutoff=src['cutoff'], out_cutoff=dst['cutoff'], in_half_width=src['half_width'],
                out_half_width=dst['half_width'], **layer_kwargs)
            name = f'L{idx}_{dst["size"]}_{dst["channels"]}'
            setattr(self, name, layer)
            self.layer_names.append(name)

    def forward(self, ws, **layer_kwargs):
        misc.assert_shape(ws, [None, self.num_ws, self.w_dim])
        ws = ws.to(torch.float32).unbind(dim=1)
        x = self.input(ws[0])
        for name, w in zip(self.layer_names, ws[1:]):
            x = getattr(self, name)(x, w, **layer_kwargs)
        if self.output_scale != 1:
            x = x * self.output_scale
        misc.assert_shape(x, [None, self.img_channels, self.img_resolution, self.img_resolution])
        return x.to(torch.float32)

    def extra_repr(self):
        return (f'w_dim={self.w_dim:d}, num_ws={self.num_ws:d}, img_resolution={self.img_resolution:d}, '
                f'img_channels={self.img_channels:d}, num_layers={self.num_layers:d}, '
                f'num_critical={self.num_critical:d}, margin_size={self.margin_size:d}')

#----------------------------------------------------------------------------


@persistence.persistent_class
class Generator(torch.nn.Module):
    def __init__(self, z_dim, c_dim, w_dim, img_resolution, img_channels, mapping_kwargs={}, **synthesis_kwargs):
        super().__init__()
        self.z_dim = z_dim
        self.c_dim = c_dim
        self.w_dim = w_dim
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        self.synthesis = SynthesisNetwork(w_dim=w_dim, img_resolution=img_resolution, img_channels=img_channels,
                                          **synthesis_kwargs)
        self.num_ws = self.synthesis.num_ws
        self.mapping = MappingNetwork(z_dim=z_dim, c_dim=c_dim, w_dim=w_dim, num_ws=self.num_ws, **mapping_kwargs)

    def forward(self, z, c, truncation_psi=1, truncation_cutoff=None, update_emas=False, **synthesis_kwargs):
        ws = self.mapping(z, c, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff,
                          update_emas=update_emas)
        return self.synthesis(ws, update_emas=update_emas, **synthesis_kwargs)

#----------------------------------------------------------------------------
