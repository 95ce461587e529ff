"""Train U-GAT-IT: ``python train.py --config configs/emoji.py --workdir runs/emoji [--config.key=value ...]``.

Re-running the same command resumes from the latest checkpoint in ``--workdir``. Everything else lives in
``ugatit_jax.training.loop.train_and_evaluate``.
"""

import logging
import sys

from absl import flags
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Path to a config file (configs/*.py).", lock_config=True)
flags.DEFINE_string("workdir", None, "Folder for checkpoints, TensorBoard logs and samples.")


def train(argv: list[str]) -> None:
    from ugatit_jax.cli import UsageError, parse_config_flags

    parse_config_flags(FLAGS, argv)
    if FLAGS.config is None:
        raise UsageError("--config is required, e.g. --config configs/emoji.py")
    if not FLAGS.workdir:
        raise UsageError("--workdir is required, e.g. --workdir runs/emoji")
    # force: loading the config file may already have logged through the root logger, which installs a
    # WARNING-level handler that would silently swallow every progress line below.
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S", force=True
    )
    for noisy in ("absl", "jax", "orbax"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    from ugatit_jax.training.loop import train_and_evaluate

    result = train_and_evaluate(FLAGS.config, FLAGS.workdir)
    summary = ", ".join(f"{k}={v:.4g}" for k, v in result.items() if isinstance(v, float) and not k.startswith("g_"))
    logging.info("done at step %d: %s", result.get("step", 0), summary)


def main(argv: list[str]) -> None:
    """Bad input (a flag, the config, the data, a checkpoint, a diverged run) ends with one ``train.py: error:``
    line and exit code 2 (``ugatit_jax.cli.reported``)."""
    from ugatit_jax.cli import exit_with, reported

    exit_with(reported("train.py", lambda: train(argv)))


if __name__ == "__main__":  # the guard matters: grain worker processes re-import this file
    main(sys.argv)
