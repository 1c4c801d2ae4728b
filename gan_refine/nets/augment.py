"""A small ADA-style augmentation pipe, so the StyleGAN fixtures carry one as
real pickles do.

Like the networks, the text of this file travels inside pickles and runs in a user's stock
StyleGAN checkout on load: only upstream's top-level imports, nothing of this project.

Each augmentation is applied to a sample with probability `strength * p` (`p` is the buffer
that adaptive discriminator augmentation tunes during training; Karras et al. 2020). Geometric
ones are composed into one homogeneous 3x3 matrix per sample and resampled once, at twice the
resolution to limit aliasing; colour ones into one 4x4 matrix applied to (r, g, b, 1).
"""

import numpy as np
import torch
from torch_utils import misc
from torch_utils import persistence
from torch_utils.ops import upfirdn2d
from torch_utils.ops import grid_sample_gradfix
from torch_utils.ops import conv2d_gradfix

#----------------------------------------------------------------------------


def _mat(rows, device):
    """Stack per-sample entries (tensors [N] or floats) into [N, k, k] matrices."""
    n = next(v.shape[0] for row in rows for v in row if torch.is_tensor(v))
    cols = [v if torch.is_tensor(v) else torch.full([n], float(v), device=device) for row in rows for v in row]
    return torch.stack(cols, dim=1).reshape(n, len(rows), len(rows[0]))


def _where(mask, value, neutral):
    return torch.where(mask, value, torch.full_like(value, neutral))


@persistence.persistent_class
class AugmentPipe(torch.nn.Module):
    def __init__(self, xflip=0, rotate90=0, xint=0, xint_max=0.125, scale=0, rotate=0, aniso=0, xfrac=0,
                 scale_std=0.2, rotate_max=1, aniso_std=0.2, xfrac_std=0.125, brightness=0, contrast=0,
                 lumaflip=0, hue=0, saturation=0, brightness_std=0.2, contrast_std=0.5, hue_max=1,
                 saturation_std=1):
        super().__init__()
        self.register_buffer('p', torch.ones([]))
        self.xflip, self.rotate90, self.xint, self.xint_max = float(xflip), float(rotate90), float(xint), float(xint_max)
        self.scale, self.rotate, self.aniso, self.xfrac = float(scale), float(rotate), float(aniso), float(xfrac)
        self.scale_std, self.rotate_max = float(scale_std), float(rotate_max)
        self.aniso_std, self.xfrac_std = float(aniso_std), float(xfrac_std)
        self.brightness, self.contrast, self.lumaflip = float(brightness), float(contrast), float(lumaflip)
        self.hue, self.saturation = float(hue), float(saturation)
        self.brightness_std, self.contrast_std = float(brightness_std), float(contrast_std)
        self.hue_max, self.saturation_std = float(hue_max), float(saturation_std)
        self.register_buffer('resample_filter', upfirdn2d.setup_filter([1, 3, 3, 1]))

    def _coin(self, strength, n, device):
        return torch.rand([n], device=device) < strength * self.p

    def _geometric(self, images):
        n, c, h, w = images.shape
        dev = images.device
        eye = torch.eye(3, device=dev).repeat(n, 1, 1)
        g = eye.clone()

        def compose(m):
            nonlocal g
            g = g @ m

        if self.xflip > 0:
            sx = _where(self._coin(self.xflip, n, dev), 1 - 2 * torch.randint(0, 2, [n], device=dev).float(), 1)
            compose(_mat([[sx, 0, 0], [0, 1, 0], [0, 0, 1]], dev))
        if self.rotate90 > 0:
            ang = _where(self._coin(self.rotate90, n, dev), torch.randint(0, 4, [n], device=dev).float() * (np.pi / 2), 0)
            compose(_mat([[ang.cos(), -ang.sin(), 0], [ang.sin(), ang.cos(), 0], [0, 0, 1]], dev))
        if self.xint > 0:
            on = self._coin(self.xint, n, dev)
            t = (torch.rand([2, n], device=dev) * 2 - 1) * self.xint_max
            tx, ty = _where(on, torch.round(t[0] * w) / w * 2, 0), _where(on, torch.round(t[1] * h) / h * 2, 0)
            compose(_mat([[1, 0, tx], [0, 1, ty], [0, 0, 1]], dev))
        if self.scale > 0:
            s = _where(self._coin(self.scale, n, dev), torch.exp2(torch.randn([n], device=dev) * self.scale_std), 1)
            compose(_mat([[s, 0, 0], [0, s, 0], [0, 0, 1]], dev))
        if self.rotate > 0:
            ang = _where(self._coin(self.rotate, n, dev), (torch.rand([n], device=dev) * 2 - 1) * np.pi * self.rotate_max, 0)
            compose(_mat([[ang.cos(), -ang.sin(), 0], [ang.sin(), ang.cos(), 0], [0, 0, 1]], dev))
        if self.aniso > 0:
            s = _where(self._coin(self.aniso, n, dev), torch.exp2(torch.randn([n], device=dev) * self.aniso_std), 1)
            compose(_mat([[s, 0, 0], [0, 1 / s, 0], [0, 0, 1]], dev))
        if self.xfrac > 0:
            on = self._coin(self.xfrac, n, dev)
            t = torch.randn([2, n], device=dev) * self.xfrac_std * 2
            compose(_mat([[1, 0, _where(on, t[0], 0)], [0, 1, _where(on, t[1], 0)], [0, 0, 1]], dev))

        if torch.equal(g, eye):
            return images
        # Reflect-pad so content pulled in from outside the frame is mirrored, not black.
        pad = max(h, w) // 2
        x = torch.nn.functional.pad(images, [pad] * 4, mode='reflect')
        x = upfirdn2d.upsample2d(x, self.resample_filter, up=2)
        # affine_grid works in [-1, 1] coordinates of the output frame; scale them to the padded frame.
        theta = g[:, :2, :].clone()
        shrink_x, shrink_y = w / (w + 2 * pad), h / (h + 2 * pad)
        theta[:, 0, :] = theta[:, 0, :] * shrink_x
        theta[:, 1, :] = theta[:, 1, :] * shrink_y
        grid = torch.nn.functional.affine_grid(theta, [n, c, h * 2, w * 2], align_corners=False)
        x = grid_sample_gradfix.grid_sample(x, grid)
        return upfirdn2d.downsample2d(x, self.resample_filter, down=2)

    def _color(self, images):
        n, c, h, w = images.shape
        dev = images.device
        if c != 3 and (self.hue > 0 or self.saturation > 0 or self.lumaflip > 0):
            raise ValueError('hue, saturation and lumaflip need RGB images')
        m = torch.eye(4, device=dev).repeat(n, 1, 1)
        luma = torch.tensor([1, 1, 1, 0], device=dev, dtype=torch.float32) / np.sqrt(3)
        if self.brightness > 0:
            b = _where(self._coin(self.brightness, n, dev), torch.randn([n], device=dev) * self.brightness_std, 0)
            t = torch.eye(4, device=dev).repeat(n, 1, 1)
            t[:, :3, 3] = b.unsqueeze(1)
            m = t @ m
        if self.contrast > 0:
            s = _where(self._coin(self.contrast, n, dev), torch.exp2(torch.randn([n], device=dev) * self.contrast_std), 1)
            m = torch.diag_embed(torch.stack([s, s, s, torch.ones_like(s)], dim=1)) @ m
        if self.lumaflip > 0:
            i = _where(self._coin(self.lumaflip, n, dev), torch.randint(0, 2, [n], device=dev).float(), 0)
            # Householder reflection across the plane orthogonal to the luma axis.
            m = (torch.eye(4, device=dev) - 2 * torch.outer(luma, luma) * i.reshape(n, 1, 1)) @ m
        if self.hue > 0:
            theta = _where(self._coin(self.hue, n, dev), (torch.rand([n], device=dev) * 2 - 1) * np.pi * self.hue_max, 0)
            m = self._rotate_about(luma[:3], theta) @ m
        if self.saturation > 0:
            s = _where(self._coin(self.saturation, n, dev), torch.exp2(torch.randn([n], device=dev) * self.saturation_std), 1)
            ll = torch.outer(luma, luma)
            m = (ll + (torch.eye(4, device=dev) - ll) * s.reshape(n, 1, 1)) @ m
        if c == 1:
            # Grey images: keep only the scalar part (brightness and contrast).
            m = m[:, [0, 3]][:, :, [0, 3]]
        # One grouped 1x1 conv applies every sample's own colour matrix.
        weight = m[:, :c, :c].reshape(n * c, c, 1, 1)
        x = conv2d_gradfix.conv2d(input=images.reshape(1, n * c, h, w), weight=weight.to(images.dtype), groups=n)
        return x.reshape(n, c, h, w) + m[:, :c, c].reshape(n, c, 1, 1).to(images.dtype)

    @staticmethod
    def _rotate_about(axis, theta):
        # Rodrigues' rotation about a unit axis, embedded in a 4x4 homogeneous matrix.
        n = theta.shape[0]
        a = axis / axis.norm()
        k = torch.tensor([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]], device=theta.device)
        s, c = theta.sin().reshape(n, 1, 1), theta.cos().reshape(n, 1, 1)
        r = torch.eye(3, device=theta.device) + s * k + (1 - c) * (k @ k)
        out = torch.eye(4, device=theta.device).repeat(n, 1, 1)
        out[:, :3, :3] = r
        return out

    def forward(self, images, debug_percentile=None):
        misc.assert_shape(images, [None, None, None, None])
        if images.shape[0] == 0:
            return images
        images = self._geometric(images)
        if any(v > 0 for v in (self.brightness, self.contrast, self.lumaflip, self.hue, self.saturation)):
            images = self._color(images)
        return images

#----------------------------------------------------------------------------
