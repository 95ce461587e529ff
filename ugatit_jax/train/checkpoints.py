"""Orbax checkpoints of a training run: the whole TrainState, the data pipeline's position and the config.

Saves are asynchronous (training continues while the arrays are written) and atomic: Orbax writes into a
temporary directory and renames it when complete, so a crash or ``kill -9`` mid-save leaves the previous
checkpoint as the latest one. Restores target the *current* mesh, so a run saved on 8 devices resumes on 1.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be restored into the current run."""


def checkpoint_dir(workdir: str) -> str:
    return os.path.join(os.path.abspath(os.path.expanduser(workdir)), "checkpoints")


class Checkpointer:
    """Thin wrapper over ``ocp.CheckpointManager`` with the three items of a run."""

    def __init__(self, workdir: str, *, keep: int = 3, async_save: bool = True, read_only: bool = False):
        self.directory = checkpoint_dir(workdir)
        if read_only and not os.path.isdir(self.directory):
            raise CheckpointError(f"no checkpoints in {self.directory}: is --workdir the folder of a training run?")
        options = ocp.CheckpointManagerOptions(
            max_to_keep=None if read_only else keep,
            create=not read_only,
            read_only=read_only,
            enable_async_checkpointing=async_save and not read_only,
            cleanup_tmp_directories=not read_only,
        )
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "data", "config"))

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def save(self, step: int, state, data_state: dict | None, config: ml_collections.ConfigDict, *, force=False):
        """Start an asynchronous save; returns at once (call ``wait`` before reading the files)."""
        return self.manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                data=ocp.args.JsonSave(data_state or {}),
                config=ocp.args.JsonSave(json.loads(config.to_json())),
            ),
            force=force,
        )

    def restore(self, abstract_state, step: int | None = None) -> tuple[Any, dict, dict]:
        """Restore (state, data_state, config dict) onto the shardings given by ``abstract_state``.

        ``abstract_state`` is a pytree of ``jax.ShapeDtypeStruct`` with ``sharding`` set (see ``abstract_like``).
        """
        step = self.latest_step() if step is None else step
        if step is None:
            raise CheckpointError(f"no checkpoint in {self.directory}")
        try:
            restored = self.manager.restore(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract_state),
                    data=ocp.args.JsonRestore(),
                    config=ocp.args.JsonRestore(),
                ),
            )
        except (ValueError, KeyError, TypeError) as e:
            raise CheckpointError(
                f"checkpoint {self.directory}/{step} does not fit this run's model (change the config back to the "
                f"one saved in {self.directory}/{step}/config, or use a new --workdir): {e}"
            ) from e
        return restored.state, dict(restored.data or {}), dict(restored.config or {})

    def read_config(self, step: int | None = None) -> dict:
        step = self.latest_step() if step is None else step
        if step is None:
            raise CheckpointError(f"no checkpoint in {self.directory}")
        restored = self.manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
        return dict(restored.config)

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()  # also on an error: an asynchronous save still in flight completes


def abstract_like(state, sharding) -> Any:
    """Shape/dtype/sharding description of ``state`` for restoring onto ``sharding`` (e.g. replicated)."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), state)
