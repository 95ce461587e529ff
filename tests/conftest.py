"""Shared test set-up: 8 fake CPU devices and discovery of golden fixture folders.

The parity tests read fixture folders from ``UGATIT_GOLDEN_DIR`` when it is set (the folder itself, or every
sub-folder holding a ``config.json``), else from the copy under ``tests/golden``. No folder found is an error,
not a skip.
"""

import os
import pathlib

# Must happen before jax initialises its backends: multi-device tests run on fake CPU devices.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

HERE = pathlib.Path(__file__).parent

# Many tests compile the same small train step (same config, same mesh): a persistent XLA cache turns every
# compile after the first into a cache hit, across pytest-xdist workers and train.py subprocesses too.
XLA_CACHE = os.environ.get("UGATIT_TEST_XLA_CACHE") or os.path.expanduser("~/.cache/ugatit_jax/xla-tests")
jax.config.update("jax_compilation_cache_dir", XLA_CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def golden_dirs() -> list[pathlib.Path]:
    root = pathlib.Path(os.environ.get("UGATIT_GOLDEN_DIR") or HERE / "golden")
    if (root / "config.json").is_file():
        return [root]
    found = sorted(p.parent for p in root.glob("*/config.json"))
    if not found:
        raise FileNotFoundError(
            f"no golden fixture folders (with config.json) under {root}; set UGATIT_GOLDEN_DIR "
            "to a folder of fixtures made by the official implementation"
        )
    return found


def pytest_generate_tests(metafunc):
    if "golden_dir" in metafunc.fixturenames:
        dirs = golden_dirs()
        metafunc.parametrize("golden_dir", dirs, ids=[d.name for d in dirs], scope="module")
