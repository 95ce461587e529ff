"""Orbax checkpoints of a training run: the whole TrainState, the data pipeline's position and the config.

Saves are asynchronous (training continues while the arrays are written) and atomic: Orbax writes into a
temporary directory and renames it when complete, so a crash or ``kill -9`` mid-save leaves the previous
checkpoint as the latest one. Restores target the *current* mesh and layout, so a run saved on 8 devices
resumes on 1, a replicated state resumes sharded (``config.shard_state``) and the other way round, and a
2-process checkpoint resumes in 1 process.

Multi-host: every process takes part in each save and restore (Orbax writes each array shard once, from the
process holding it; JSON items are written by process 0). Each host's data-pipeline position is gathered into
the ``data`` item as ``{"processes": [state of process 0, ...]}`` (a single process saves its state as is), and
``host_data_state`` hands every host its own on resume.

A damaged checkpoint (unparsable metadata, truncated or missing array files) is told apart from one that does
not fit the model: restoring the latest checkpoint moves a damaged one aside to ``checkpoints/damaged/<step>-<time>``
(never deleting it), logs why, and resumes from the newest intact one.

A save that fails (a full disk: ENOSPC, EDQUOT, or any other OSError of the writer, synchronous or surfacing from
the asynchronous save at the next save or at ``close``) raises ``SaveError``: one line with the error, the free
space and the last complete checkpoint. The incomplete save stays in Orbax's temporary directory
(``<step>.orbax-checkpoint-tmp``), which no restore reads and the next run's manager deletes; Orbax's own
tracebacks of it are dropped from the log (the error is reported once, in our words).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import logging
import os
import re
import shutil
import sys
import time
import warnings
from collections import Counter
from collections.abc import Iterator
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp

from ugatit_jax import run_dir
from ugatit_jax.errors import ExpectedError
from ugatit_jax.train import parallel

log = logging.getLogger("ugatit_jax")

DAMAGED_DIR = "damaged"
# Pipeline-state fields that may differ when the host layout changes; the rest must match to continue.
_LAYOUT_KEYS = ("process_index", "process_count")


class CheckpointError(ExpectedError, RuntimeError):
    """A checkpoint that cannot be restored into the current run."""


class DamagedCheckpointError(CheckpointError):
    """A checkpoint whose files are incomplete or corrupt (as opposed to one saved for another model)."""

    def __init__(self, step: int, reason: str):
        super().__init__(f"checkpoint {step} is damaged: {reason}")
        self.step = step
        self.reason = reason


class SaveError(CheckpointError):
    """A checkpoint (or another file of the run) could not be written: a full disk, a quota, a failing device."""


# Errors of writers that are not OSErrors (TensorStore's) but report one in their text.
_OS_ERROR_TEXT = re.compile(r"No space left on device|Disk quota exceeded|Read-only file system|Input/output error")


def is_write_error(error: BaseException) -> bool:
    """An error of the storage (full, over quota, read-only, failing), as opposed to a bug in what was saved."""
    return isinstance(error, OSError) or bool(_OS_ERROR_TEXT.search(str(error)))


def _size(n: float) -> str:
    if n < 1024:
        return f"{n:.0f} bytes"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        n /= 1024
        if n < 1024 or unit == "TiB":
            break
    return f"{n:.1f} {unit}"


def free_space(path: str) -> str:
    """``12.3 MiB free`` on the filesystem of ``path`` (or of its nearest existing parent)."""
    path = os.path.abspath(path)
    while not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    try:
        return f"{_size(shutil.disk_usage(path).free)} free"
    except OSError:
        return "free space unknown"


def complete_steps(directory: str) -> list[int]:
    """The steps of the finished checkpoints in ``directory`` (Orbax renames a save's temporary directory to its
    step only once every file is written), oldest first."""
    with contextlib.suppress(OSError):
        return sorted(int(name) for name in os.listdir(directory) if name.isdigit())
    return []


def _storage_error(error: BaseException) -> str:
    """``No space left on device (ENOSPC)``, with the file where known, from an OSError or TensorStore's text."""
    text = str(error)
    if isinstance(error, OSError) and error.errno is not None:
        code, message, file = error.errno, error.strerror or os.strerror(error.errno), error.filename
    elif match := _OS_ERROR_TEXT.search(text):
        number = re.search(r"os_error_code='?(\d+)", text)
        written = re.search(r'writing local file "([^"]+)"', text)
        code, message, file = int(number[1]) if number else None, match[0], written[1] if written else None
    else:
        return _first_line(error)
    name = f" ({errno.errorcode[code]})" if code in errno.errorcode else ""
    return f"{message}{name}" + (f", writing {file}" if file else "")


def write_failure(error: BaseException, directory: str, what: str) -> SaveError:
    """SaveError for ``what`` (``checkpoint 10``) that could not be written in the run of checkpoint ``directory``:
    the error, the free space, and the checkpoint a re-run resumes from."""
    steps = complete_steps(directory)
    if steps:
        then = (
            f"the last complete checkpoint is step {steps[-1]} ({directory}/{steps[-1]}): free some space and run the "
            "same command again to resume from it (an incomplete save is never resumed from)"
        )
    else:
        then = "there is no complete checkpoint yet: free some space and run the same command again to start over"
    return SaveError(f"could not write {what}: {_storage_error(error)}; {free_space(directory)} there; {then}")


@contextlib.contextmanager
def disk_errors(workdir: str) -> Iterator[None]:
    """Turn a full disk's OSError from any write of a run (metrics, samples, logs) into SaveError."""
    try:
        yield
    except OSError as error:
        if error.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise write_failure(error, run_dir.checkpoints_dir(workdir), f"to {os.path.abspath(workdir)}") from None


def _drop_save_tracebacks() -> None:
    """Orbax logs a failed asynchronous save from each of its threads, traceback included (four tracebacks for
    one full disk), before the error reaches ``Checkpointer``, which reports it once as SaveError. This drops
    those records, and only those: Orbax's records with a storage error attached. Installed once, for the rest
    of the process (the records come from Orbax's threads at moments this module does not control), with
    ``_drop_abandoned_read_reports``."""
    logger = logging.getLogger("absl")  # Orbax's logger
    if any(getattr(f, "drops_save_tracebacks", False) for f in logger.filters):
        return

    def keep(record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        from_orbax = f"{os.sep}orbax{os.sep}" in (record.pathname or "")
        return not (from_orbax and error is not None and is_write_error(error))

    keep.drops_save_tracebacks = True
    logger.addFilter(keep)
    # A save that fails part-way leaves TensorStore writes running, whose callbacks then find Orbax's event loop
    # closed: hundreds of "Event loop is closed" tracebacks, reported as unraisable exceptions, as after a failed read.
    _drop_abandoned_read_reports()


def _first_line(error: BaseException) -> str:
    text = next((line.strip() for line in str(error).splitlines() if line.strip()), "")
    return f"{type(error).__name__}: {text[:300]}"


def _drop_abandoned_read_reports() -> None:
    """When one array read fails, Orbax gives up on the checkpoint's other reads, and each abandoned read reports
    its own failure when it is collected, which happens later, at no moment this module controls: an "Exception
    ignored in: <coroutine _read_array_index_and_device_put>" traceback (or "Event loop is closed" from its
    callback), hundreds of lines on stderr around the one warning that says which checkpoint is damaged and where
    it went. Installed before the first restore, for the rest of the process (some reports come from Orbax's
    threads while the read is failing), this drops those reports, and only those: every other unraisable
    exception reaches the previous hook."""
    if getattr(sys.unraisablehook, "drops_abandoned_reads", False):
        return
    previous = sys.unraisablehook

    def hook(unraisable):
        code = getattr(unraisable.object, "cr_code", None)
        if getattr(code, "co_name", "") == "_read_array_index_and_device_put":
            return
        if isinstance(unraisable.exc_value, RuntimeError) and str(unraisable.exc_value) == "Event loop is closed":
            return
        previous(unraisable)

    hook.drops_abandoned_reads = True
    sys.unraisablehook = hook


def _sync(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def _read_only_notices(record: logging.LogRecord) -> bool:
    """Drops the two warnings Orbax logs for every read-only manager (translate, evaluate, export open runs so):
    what was asked for is no news, and they stood before a bad-input command's one ``error:`` line."""
    message = record.getMessage()
    return not message.startswith(("CheckpointManagerOptions.read_only=True", "Given directory is read only"))


class Checkpointer:
    """Thin wrapper over ``ocp.CheckpointManager`` with the three items of a run."""

    def __init__(self, workdir: str, *, keep: int = 3, async_save: bool = True, read_only: bool = False):
        self.directory = run_dir.checkpoints_dir(workdir)
        self.read_only = read_only
        self._saving: int | None = None  # the step of the asynchronous save in flight
        if not read_only:
            _drop_save_tracebacks()
        if read_only and not os.path.isdir(self.directory):
            raise CheckpointError(f"no checkpoints in {self.directory}: is --workdir the folder of a training run?")
        absl_log = logging.getLogger("absl")  # Orbax's logger
        absl_log.addFilter(_read_only_notices)
        try:
            options = ocp.CheckpointManagerOptions(
                max_to_keep=None if read_only else keep,
                create=not read_only,
                read_only=read_only,
                enable_async_checkpointing=async_save and not read_only,
                cleanup_tmp_directories=not read_only,
            )
            items = ("state", "data", "config")
            self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=items)
        finally:
            absl_log.removeFilter(_read_only_notices)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def save(self, step: int, state, data_state: dict | None, config: ml_collections.ConfigDict, *, force=False):
        """Start an asynchronous save; returns at once (call ``wait`` before reading the files).

        Every process calls it with its own ``data_state``; with several, all of them are stored. Raises SaveError
        if the previous save failed, or this one cannot start.
        """
        self._finish_save()
        data = data_state or {}
        if jax.process_count() > 1:
            data = {"processes": parallel.allgather_json(data)}
        try:
            saved = self.manager.save(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardSave(_stored(state)),
                    data=ocp.args.JsonSave(data),
                    config=ocp.args.JsonSave(json.loads(config.to_json())),
                ),
                force=force,
            )
        except Exception as e:  # noqa: BLE001 - the writers raise OSError, TensorStore's errors and more
            if not is_write_error(e):
                raise
            self._abandon()
            raise write_failure(e, self.directory, f"checkpoint {step}") from None
        self._saving = step
        return saved

    def _finish_save(self) -> None:
        """Wait for the save in flight; SaveError if it failed."""
        step, self._saving = self._saving, None
        try:
            self.manager.wait_until_finished()
        except Exception as e:  # noqa: BLE001
            if not is_write_error(e):
                raise
            self._abandon()
            what = f"checkpoint {step}" if step is not None else "a checkpoint"
            raise write_failure(e, self.directory, what) from None

    def _abandon(self) -> None:
        """After a failed save: end Orbax's background work (its threads would otherwise still run, and fail, while
        the interpreter shuts down) without raising again. The array writes the failed save had scheduled are never
        run; their coroutines are dropped without the "coroutine ... was never awaited" warning each would print
        when collected (at exit, after the run's one error line)."""
        warnings.filterwarnings("ignore", message=r"coroutine '.*' was never awaited", category=RuntimeWarning)
        with contextlib.suppress(Exception):
            self.manager.close()

    def restore(self, abstract_state, step: int | None = None) -> tuple[Any, dict, dict]:
        """Restore (state, data item, config dict) onto the shardings given by ``abstract_state``.

        ``abstract_state`` is a pytree of ``jax.ShapeDtypeStruct`` with ``sharding`` set (see ``abstract_like``).
        The data item is what ``save`` stored; pass it through ``host_data_state`` for this host's position.
        Without ``step``: the latest checkpoint, after moving any damaged newer ones aside (see the module
        docstring). With ``step``: that one, or DamagedCheckpointError.
        """
        if step is not None:
            return self._restore(abstract_state, step)
        while True:
            step = self.latest_step()
            if step is None:
                damaged = os.path.join(self.directory, DAMAGED_DIR)
                moved = f" (damaged ones were moved to {damaged})" if os.path.isdir(damaged) else ""
                raise CheckpointError(f"no intact checkpoint in {self.directory}{moved}")
            try:
                return self._restore(abstract_state, step)
            except DamagedCheckpointError as e:
                if self.read_only:
                    raise
                self.move_aside(step, e.reason)

    def damage(self, step: int) -> str | None:
        """Why checkpoint ``step`` is damaged, from its metadata files alone; None if they read back."""
        folder = os.path.join(self.directory, str(step))
        checks = [("_CHECKPOINT_METADATA", True), ("state/_METADATA", True)]
        checks += [(f"{item}/metadata", True) for item in ("data", "config")]
        for name, required in checks:
            path = os.path.join(folder, name)
            if not os.path.exists(path):
                if required:
                    return f"{name} is missing"
                continue
            try:
                with open(path, "rb") as f:
                    value = json.loads(f.read().decode())
            except (OSError, UnicodeDecodeError, ValueError) as e:
                return f"{name} does not parse ({_first_line(e)})"
            if name != "data/metadata" and not isinstance(value, dict):
                return f"{name} is not a JSON object"
        return None

    def _saved_arrays(self, step: int) -> dict[str, tuple[int, ...]]:
        """Shape of every array of checkpoint ``step``'s state, by path (``params/genA2B/stem/kernel``), from its
        metadata alone."""
        from etils import epath

        path = epath.Path(os.path.join(self.directory, str(step), "state"))
        metadata = ocp.StandardCheckpointHandler().metadata(path)
        return _shapes_by_path(metadata)

    def _check(self, step: int) -> dict[str, tuple[int, ...]]:
        """Checkpoint ``step`` exists and its metadata reads back (else CheckpointError / DamagedCheckpointError);
        returns ``_saved_arrays``."""
        if step not in self.all_steps():
            raise CheckpointError(f"no checkpoint {step} in {self.directory}; available: {self.all_steps()}")
        reason = self.damage(step)
        if reason:
            raise DamagedCheckpointError(step, reason)
        try:
            return self._saved_arrays(step)
        except Exception as meta_error:  # noqa: BLE001 - orbax/tensorstore raise many types for unreadable files
            raise DamagedCheckpointError(step, f"array metadata unreadable ({_first_line(meta_error)})") from None

    def _restore(self, abstract_state, step: int) -> tuple[Any, dict, dict]:
        # Damage or a different model? The saved array shapes (from metadata) against the run's, checked before
        # any array is read: a restore that fails part-way leaves Orbax's reads running, whose callbacks print
        # tracebacks ("Event loop is closed") while the error unwinds.
        saved_arrays = self._check(step)
        saved = sorted(saved_arrays.values())
        wanted = sorted(tuple(leaf.shape) for leaf in jax.tree.leaves(abstract_state))
        if saved != wanted:
            detail = _shape_difference(saved, wanted)
            if _has_ema(saved_arrays) != (getattr(abstract_state, "ema", None) is not None):
                detail = _ema_misfit(_has_ema(saved_arrays))
            raise CheckpointError(self._misfit(step, detail))
        restored = self._read(
            step,
            state=ocp.args.StandardRestore(_stored(abstract_state)),
            data=ocp.args.JsonRestore(),
            config=ocp.args.JsonRestore(),
        )
        return _unstored(abstract_state, restored.state), dict(restored.data or {}), dict(restored.config or {})

    def restore_part(self, abstract_part, step: int) -> Any:
        """Some of checkpoint ``step``'s state arrays, read alone: ``abstract_part`` is a subtree of the state
        (e.g. ``{"params": {"genA2B": ...}, "sn": {"genA2B": ...}}``) of ``jax.ShapeDtypeStruct`` with shardings.

        For inference, which needs neither every network nor the optimisers' moments (three times the parameters).
        """
        saved = self._check(step)
        wanted = _shapes_by_path(abstract_part)
        misfits = [f"{k}: saved {saved.get(k, 'nothing')}, model {v}" for k, v in wanted.items() if saved.get(k) != v]
        if misfits:
            shown = "; ".join(misfits[:3]) + ("; ..." if len(misfits) > 3 else "")
            raise CheckpointError(self._misfit(step, f"{len(misfits)} of {len(wanted)} arrays differ: {shown}"))
        restore_args = ocp.checkpoint_utils.construct_restore_args(abstract_part)
        return self._read(step, state=ocp.args.PyTreeRestore(abstract_part, restore_args, partial_restore=True)).state

    def _read(self, step: int, **items):
        """``manager.restore`` of ``items`` once their shapes are known to fit; an array that does not read back
        is damage (e.g. a truncated file) or another dtype, named in the message either way."""
        _drop_abandoned_read_reports()
        try:
            return self.manager.restore(step, args=ocp.args.Composite(**items))
        except Exception as e:  # noqa: BLE001 - TensorStore read errors are bare Exceptions
            raise DamagedCheckpointError(step, f"arrays unreadable ({_first_line(e)})") from e

    def _misfit(self, step: int, detail: str) -> str:
        folder = f"{self.directory}/{step}"
        return (
            f"checkpoint {folder} does not fit this run's model (change the config back to the one saved in "
            f"{folder}/config, or use a new --workdir): {detail}"
        )

    def move_aside(self, step: int, reason: str) -> str:
        """Move damaged checkpoint ``step`` to ``damaged/<step>-<time>`` (process 0; all processes wait)."""
        base = target = os.path.join(self.directory, DAMAGED_DIR, f"{step}-{time.strftime('%Y%m%d-%H%M%S')}")
        for i in range(1, 1000):
            if not os.path.exists(target):
                break
            target = f"{base}-{i}"
        _sync(f"ugatit_damaged_checked_{step}")
        if jax.process_index() == 0:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            shutil.move(os.path.join(self.directory, str(step)), target)
        _sync(f"ugatit_damaged_moved_{step}")
        if jax.process_index() == 0:
            log.warning(
                "checkpoint %d is damaged (%s): moved to %s; resuming from the newest intact one", step, reason, target
            )
        self.manager.reload()
        return target

    def read_config(self, step: int | None = None) -> dict:
        step = self.latest_step() if step is None else step
        if step is None:
            raise CheckpointError(f"no checkpoint in {self.directory}")
        reason = self.damage(step)
        if reason:
            raise DamagedCheckpointError(step, reason)
        restored = self.manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
        return dict(restored.config)

    def wait(self) -> None:
        self._finish_save()

    def close(self) -> None:
        self._finish_save()
        self.manager.close()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is None:
            self.close()
            return
        # An error is on its way out: the save in flight completes (or fails) and the manager closes, quietly, so
        # that error stays the one reported.
        with contextlib.suppress(Exception):
            self._finish_save()
        self._abandon()


def _shape_difference(saved: list[tuple[int, ...]], wanted: list[tuple[int, ...]], shown: int = 3) -> str:
    """The array shapes only the checkpoint has and only the model has (a few of each), for the misfit message."""
    only_saved, only_wanted = Counter(saved) - Counter(wanted), Counter(wanted) - Counter(saved)
    listed = lambda c: (
        ", ".join(str(shape) for shape in sorted(c.elements())[:shown]) + (", ..." if c.total() > shown else "")
    )
    return (
        f"{len(saved)} arrays saved, {len(wanted)} in the model; shapes only saved: {listed(only_saved) or 'none'}; "
        f"only in the model: {listed(only_wanted) or 'none'}"
    )


def _stored(state):
    """The tree Orbax stores for a train state: its array fields by name, without an absent parameter average
    (``ema`` None), so a run without EMA writes and reads exactly the checkpoints written before EMA existed.
    Any other tree is stored as it is."""
    if not dataclasses.is_dataclass(state):
        return state
    fields = (f.name for f in dataclasses.fields(state) if f.metadata.get("pytree_node", True))
    return {name: getattr(state, name) for name in fields if getattr(state, name) is not None}


def _unstored(like, stored):
    """``_stored``'s inverse: the restored fields back in a state of ``like``'s type and static fields."""
    return like.replace(**stored) if dataclasses.is_dataclass(like) else stored


def _has_ema(saved_arrays: dict) -> bool:
    return any(path.startswith("ema/") for path in saved_arrays)


def _ema_misfit(saved_has_ema: bool) -> str:
    if saved_has_ema:
        return "it keeps a parameter average (EMA) and this run does not: add --config.ema_decay=<its value>"
    return "this run keeps a parameter average (EMA) and the checkpoint does not: resume with --config.ema_decay=0"


def _shapes_by_path(tree) -> dict[str, tuple[int, ...]]:
    """``{"params/genA2B/res_blocks/0/conv1/kernel": shape}``: the same names for a state and for Orbax's metadata
    of it (whose keys are all strings)."""
    leaves = jax.tree_util.tree_leaves_with_path(tree, is_leaf=lambda x: hasattr(x, "shape"))
    name = lambda key: str(getattr(key, "key", getattr(key, "idx", getattr(key, "name", key))))
    return {"/".join(name(k) for k in path): tuple(leaf.shape) for path, leaf in leaves}


def abstract_like(state, sharding) -> Any:
    """Shape/dtype/sharding description of ``state`` for restoring onto ``sharding``: one sharding for every leaf
    (e.g. replicated) or a pytree of them like ``state`` (e.g. ``parallel.state_shardings``)."""
    if isinstance(sharding, jax.sharding.Sharding):
        return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), state)
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, sharding)


def host_data_state(saved: dict | None, current: dict) -> dict | None:
    """This host's pipeline position from a checkpoint's data item; ``current`` is the fresh pipeline's state.

    Same host layout: each host continues exactly where it was. Another number of processes (e.g. a 2-process
    run resumed by 1): the images each host reads change by construction, so the pipeline continues at the same
    batch count in the new layout's order (logged). Anything else (another seed, dataset, image size or global
    batch) is returned unchanged, for the pipeline's ``set_state`` to reject with its own message.
    """
    if not saved:
        return None
    hosts = saved["processes"] if isinstance(saved.get("processes"), list) else [saved]
    if not all(isinstance(h, dict) for h in hosts) or not any(hosts):
        return None  # saved without a pipeline (e.g. an exported model)
    index, count = current.get("process_index", 0), current.get("process_count", 1)
    if len(hosts) == count and hosts[index].get("process_count", 1) == count:
        return hosts[index]
    first = hosts[0]
    same = {k: v for k, v in first.items() if k not in _LAYOUT_KEYS and k != "step"}
    if all(current.get(k) == v for k, v in same.items()) and "step" in first:
        steps = {h.get("step") for h in hosts}
        log.warning(
            "the checkpoint was written by %d process(es), this run has %d: the data pipeline continues at batch %s "
            "in this layout's order (the model state is restored exactly)",
            len(hosts),
            count,
            first["step"],
        )
        if len(steps) > 1:
            log.warning("the saved hosts were at different batches %s; continuing at %s", sorted(steps), first["step"])
        return {**current, "step": first["step"]}
    return first
