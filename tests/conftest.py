"""Shared test set-up: 8 fake CPU devices and discovery of golden fixture folders.

The parity tests read fixture folders from ``UGATIT_GOLDEN_DIR`` when it is set (the folder itself, or every
sub-folder holding a ``config.json``), else from the copy under ``tests/golden``. No folder found is an error,
not a skip.
"""

import importlib.metadata
import json
import os
import pathlib
import re

# Tests compile far more than they run (tiny shapes, a few steps): LLVM's lowest optimisation level halves XLA's
# CPU compile time (cold cache, 2-core Xeon: the forward parity tests 75 -> 37 s, the train-step tests 269 ->
# 146 s). It runs no HLO pass differently, so every number and tolerance stays as it was. Subprocesses the tests
# start get it too (tiny.subprocess_xla_flags).
TEST_XLA_FLAGS = "--xla_backend_optimization_level=0"
# XLA's older loop emitters for fusions compile faster still (cold, 2-core Xeon, jax 0.10.2: the tiny train step
# 15.2-15.9 -> 9.6-9.9 s, the golden full U-GAT-IT step 26.0 -> 19.9 s). The XLA in jax >= 0.11 no longer knows
# the flag, and an unknown XLA flag is fatal, so it is set for older jax only (found without importing jax: the
# flags must be in place before jax starts its backend). Its code differs from the new emitters' only in float
# rounding; every parity tolerance holds with either.
# One LLVM module per program instead of several compiled on parallel threads: on the 2 test cores, busy with two
# pytest-xdist workers and their subprocesses, the split only adds work (cold cache, 2-core EPYC: the golden light
# U-GAT-IT step 19.0-20.8 -> 12.8-18.7 s, 31-32 -> 27-29 s of CPU). It changes how the code is cut, not what it
# computes.
TEST_XLA_FLAGS += " --xla_cpu_parallel_codegen_split_count=1"
JAX_VERSION = re.match(r"(\d+)\.(\d+)", importlib.metadata.version("jax"))
if JAX_VERSION and (int(JAX_VERSION[1]), int(JAX_VERSION[2])) < (0, 11):
    TEST_XLA_FLAGS += " --xla_cpu_use_fusion_emitters=false"
# Must happen before jax initialises its backends: multi-device tests run on fake CPU devices.
os.environ.setdefault("XLA_FLAGS", f"--xla_force_host_platform_device_count=8 {TEST_XLA_FLAGS}")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import pytest  # noqa: E402

HERE = pathlib.Path(__file__).parent

# Many tests compile the same small train step (same config, same mesh): a persistent XLA cache turns every
# compile after the first into a cache hit, across pytest-xdist workers and train.py subprocesses too.
XLA_CACHE = os.environ.get("UGATIT_TEST_XLA_CACHE") or os.path.expanduser("~/.cache/ugatit_jax/xla-tests")
jax.config.update("jax_compilation_cache_dir", XLA_CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


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


def golden_model(folder: pathlib.Path) -> str:
    """The family a fixture folder was made by: ``config.json``'s ``model`` ("nice"), else U-GAT-IT."""
    return json.loads((folder / "config.json").read_text()).get("model", "ugatit")


# Each parity test asks for the fixtures of one family: ``golden_dir`` (U-GAT-IT) or ``nice_golden_dir``.
GOLDEN_FIXTURES = {"golden_dir": "ugatit", "nice_golden_dir": "nice"}


def pytest_generate_tests(metafunc):
    for fixture, model in GOLDEN_FIXTURES.items():
        if fixture in metafunc.fixturenames:
            dirs = [d for d in golden_dirs() if golden_model(d) == model]
            if dirs:
                metafunc.parametrize(fixture, dirs, ids=[d.name for d in dirs], scope="module")
            elif os.environ.get("UGATIT_GOLDEN_DIR"):  # the user's folder holds the other family only
                skip = pytest.mark.skip(reason=f"UGATIT_GOLDEN_DIR holds no {model} fixtures")
                metafunc.parametrize(fixture, [pytest.param(None, marks=skip)], ids=[f"no-{model}"], scope="module")
            else:  # the project's own copy must hold both families
                raise FileNotFoundError(f"no {model} golden fixture folders under {HERE / 'golden'}")


# pytest-xdist runs each file on one worker (``--dist loadfile`` in pyproject.toml: a module fixture, such as a
# multi-process run or a golden step, is then computed once, not once per worker) and hands out files in
# collection order (``--no-loadscope-reorder``). The slowest files (cold cache, 2-core CPU) go first, so no long
# file starts last and runs alone.
SLOWEST_FIRST = (
    "test_multiprocess.py",
    "test_train_cli.py",
    "test_nice_training.py",
    "test_checkpoints_damaged.py",
    "test_parity_nice.py",
    "test_parity_step.py",
    "test_networks.py",
    "test_nice_networks.py",
    "test_mixed_precision.py",
    "test_train_step.py",
    "test_shard_state.py",
    "test_train_faults.py",
)


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each file's own order is kept
