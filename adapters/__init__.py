"""Model-family adapters behind one interface; installed as gan_refine.adapters.

The interface is described in docs/design.md, "The one interface".

    from gan_refine.adapters import as_generator, as_teacher, check_compatible
    G = as_generator(pickle_dict)          # StyleGAN G_ema, or any nn.Module with z_dim=...
    T = as_teacher(edm_pickle_dict)        # EDM 'ema', or any callable (x, sigma, c) -> x0
    check_compatible(G, T)                 # IncompatibleModelsError before any work starts
"""

from .base import (GeneratorAdapter, IncompatibleModelsError, TeacherAdapter, force_fp32,
                   normalize_labels, normalize_sigma)
from .edm import EDM_PRECOND_CLASSES, EDMTeacherAdapter, is_edm_denoiser
from .generic import GenericGeneratorAdapter, GenericTeacherAdapter
from .mixture import MixtureTeacher
from .registry import (ENTRY_POINT_GROUP, Family, as_generator, as_teacher, check_compatible,
                       discover_entry_points, generator_families, register_generator,
                       register_teacher, teacher_families, unregister)
from .stylegan import StyleGANGeneratorAdapter, is_stylegan_generator

__all__ = [
    "GeneratorAdapter", "TeacherAdapter", "IncompatibleModelsError",
    "StyleGANGeneratorAdapter", "EDMTeacherAdapter",
    "GenericGeneratorAdapter", "GenericTeacherAdapter",
    "as_generator", "as_teacher", "check_compatible",
    "register_generator", "register_teacher", "unregister", "Family",
    "generator_families", "teacher_families", "discover_entry_points", "ENTRY_POINT_GROUP",
    "is_stylegan_generator", "is_edm_denoiser", "EDM_PRECOND_CLASSES",
    "normalize_sigma", "normalize_labels", "force_fp32", "MixtureTeacher",
]
