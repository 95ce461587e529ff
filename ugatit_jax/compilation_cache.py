"""Moved to ``ugatit_jax.xla.compilation_cache``. This name remains only because ``train/parallel.py`` still
imports it; delete this file once that import names ``ugatit_jax.xla.compilation_cache``."""

from ugatit_jax.xla.compilation_cache import guard_cross_process_programs

__all__ = ["guard_cross_process_programs"]
