"""Train U-GAT-IT: ``python train.py --config configs/emoji.py --workdir runs/emoji [--config.key=value ...]``.

Re-running the same command resumes from the latest checkpoint in ``--workdir``. Everything else lives in
``ugatit_jax.train.trainer.train_and_evaluate``.
"""

import logging
import sys

from absl import flags
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Path to a config file (configs/*.py).", lock_config=True)
flags.DEFINE_string("workdir", None, "Folder for checkpoints, TensorBoard logs and samples.")


def fail(message: str) -> None:
    """One line on stderr and exit code 2: bad input is the user's to fix, a traceback would only hide that."""
    print(f"train.py: error: {message}", file=sys.stderr)
    # Said once is enough: a failed restore leaves Orbax's abandoned array reads behind, and on the way out Python
    # would print each one's traceback ("Exception ignored in: <coroutine ...>"), or asyncio would log it.
    sys.unraisablehook = lambda unraisable: None
    sys.excepthook = lambda *exc_info: None  # tensorstore callbacks report errors of a closed event loop through it
    logging.disable(logging.CRITICAL)
    sys.exit(2)


def main(argv: list[str]) -> None:
    from ugatit_jax.cli import UsageError, parse_config_flags

    try:
        parse_config_flags(FLAGS, argv)
    except UsageError as e:
        fail(str(e))
    if FLAGS.config is None:
        fail("--config is required, e.g. --config configs/emoji.py")
    if not FLAGS.workdir:
        fail("--workdir is required, e.g. --workdir runs/emoji")
    # force: loading the config file may already have logged through the root logger, which installs a
    # WARNING-level handler that would silently swallow every progress line below.
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S", force=True
    )
    for noisy in ("absl", "jax", "orbax"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    from ugatit_jax.config import ConfigError
    from ugatit_jax.data import DatasetError
    from ugatit_jax.interop.torch_import import CheckpointMismatchError
    from ugatit_jax.train.checkpoints import CheckpointError
    from ugatit_jax.train.trainer import DivergedError, train_and_evaluate

    try:
        result = train_and_evaluate(FLAGS.config, FLAGS.workdir)
    except (ConfigError, DatasetError, CheckpointError, CheckpointMismatchError, FileNotFoundError, DivergedError) as e:
        fail(str(e))
    summary = ", ".join(f"{k}={v:.4g}" for k, v in result.items() if isinstance(v, float) and not k.startswith("g_"))
    logging.info("done at step %d: %s", result.get("step", 0), summary)


if __name__ == "__main__":  # the guard matters: grain worker processes re-import this file
    main(sys.argv)
