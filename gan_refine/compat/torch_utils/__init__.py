# Top-level `torch_utils` name used by network pickles; see gan_refine/compat/__init__.py.
