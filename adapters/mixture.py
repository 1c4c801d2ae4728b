"""Several teachers as one: the weighted mixture of their denoisers.

    T = MixtureTeacher([as_teacher(a), as_teacher(b)], weights=[0.7, 0.3])
    T(x, sigma, c) == 0.7 * a(x, sigma, c) + 0.3 * b(x, sigma, c)

Denoisers are linear in the score (D = x + sigma^2 score), so a weighted mean of denoisers is
the denoiser of the weighted geometric mean of the teachers' noisy densities at each sigma;
for Gaussian teachers of one variance that is again a Gaussian, at the weighted mean of their
means (the closed form the tests check). The generator is refined toward it with one fake
score, a copy of the first teacher.
"""

import torch
from torch import nn

from .base import IncompatibleModelsError, TeacherAdapter

__all__ = ["MixtureTeacher"]


class MixtureTeacher(TeacherAdapter):
    family = "mixture"

    def __init__(self, teachers, weights=None):
        teachers = list(teachers)
        if len(teachers) < 2:
            raise ValueError("a teacher mixture needs at least two teachers")
        first = teachers[0]
        for i, t in enumerate(teachers[1:], start=2):
            for attr in ("img_resolution", "img_channels", "label_dim"):
                if getattr(t, attr) != getattr(first, attr):
                    raise IncompatibleModelsError(
                        f"teacher {i} has {attr} {getattr(t, attr)} but teacher 1 has "
                        f"{getattr(first, attr)}; all teachers must agree on resolution, channels "
                        f"and labels")
        if weights is None:
            weights = [1.0] * len(teachers)
        weights = [float(w) for w in weights]
        if len(weights) != len(teachers):
            raise ValueError(f"{len(weights)} teacher weights for {len(teachers)} teachers; give "
                             f"one weight per --teacher")
        if any(not (w >= 0) for w in weights) or not sum(weights) > 0:
            raise ValueError(f"teacher weights must be non-negative with a positive sum, got {weights}")
        total = sum(weights)
        super().__init__(nn.ModuleList(teachers), first.img_resolution, first.img_channels,
                         first.label_dim, sigma_min=max(t.sigma_min for t in teachers),
                         sigma_max=min(t.sigma_max for t in teachers), sigma_data=first.sigma_data)
        self.weights = [w / total for w in weights]

    @property
    def teachers(self):
        return list(self.module)

    def _denoise(self, x, sigma, c):
        out = None
        for w, t in zip(self.weights, self.module):
            if w == 0:
                continue
            d = t(x, sigma, c).to(torch.float32) * w
            out = d if out is None else out + d
        return out

    def summary(self):
        s = super().summary()
        s.update(teachers=[t.summary() for t in self.module], weights=self.weights)
        return s
