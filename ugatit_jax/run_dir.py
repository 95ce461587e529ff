"""The run folder (``train.py --workdir RUN``): the one module that knows its layout and file names.

::

    RUN/checkpoints/<step>/        Orbax checkpoints (train/checkpoints.py), read by load, evaluate, translate, export
    RUN/tensorboard/               TensorBoard event files
    RUN/metrics.jsonl              one JSON line per log step: {"step": N, "d_loss": ..., ...}
    RUN/eval/step_<N>.json         evaluation records: training's and ``python -m ugatit_jax.evaluate``'s
    RUN/samples/<A2B|B2A>_<train|test>_<NNNNNNN>.png   sample strips (step zero-padded to 7 digits)
    RUN/test/                      ``translate --test-split``'s strips and index.html
    RUN/report.html                the run's page (``evaluation/run_report.py``)
    RUN/.lock                      held while a run trains (train/workdir_lock.py)

The trainer writes through it, and the report, ``evaluate``, ``translate``, ``load`` and the benchmarks read
through it, so a name changes in one place. Evaluation records are written as ``step_<N>.json``; files named
``step_<NNNNNNN>.json`` (zero-padded, as ``benchmarks/official_emoji.py`` once wrote them) are read too, so older
folders still load and report; where a step has both, the unpadded one counts.
"""

from __future__ import annotations

import contextlib
import glob
import json
import math
import os
import re

from ugatit_jax.directions import DIRECTIONS

CHECKPOINTS = "checkpoints"
TENSORBOARD = "tensorboard"
METRICS = "metrics.jsonl"
EVAL = "eval"
SAMPLES = "samples"
TEST = "test"
REPORT = "report.html"
LOCK = ".lock"
SPLITS = ("train", "test")  # the sample strips' image sources

_EVAL_NAME = re.compile(r"step_(\d+)\.json")
_SAMPLE_NAME = re.compile(rf"({'|'.join(DIRECTIONS)})_({'|'.join(SPLITS)})_(\d+)\.png")


def path(workdir: str) -> str:
    """The run folder as an absolute path (``~`` expanded); every path below is absolute too."""
    return os.path.abspath(os.path.expanduser(workdir))


def checkpoints_dir(workdir: str) -> str:
    return os.path.join(path(workdir), CHECKPOINTS)


def tensorboard_dir(workdir: str) -> str:
    return os.path.join(path(workdir), TENSORBOARD)


def metrics_file(workdir: str) -> str:
    return os.path.join(path(workdir), METRICS)


def eval_file(workdir: str, step: int) -> str:
    """Where the evaluation record of ``step`` is written."""
    return os.path.join(path(workdir), EVAL, f"step_{step}.json")


def sample_file(workdir: str, direction: str, split: str, step: int) -> str:
    return os.path.join(path(workdir), SAMPLES, f"{direction}_{split}_{step:07d}.png")


def test_dir(workdir: str) -> str:
    """``translate --test-split``'s default output folder."""
    return os.path.join(path(workdir), TEST)


def report_file(workdir: str) -> str:
    return os.path.join(path(workdir), REPORT)


def lock_file(workdir: str) -> str:
    return os.path.join(path(workdir), LOCK)


def has_outputs(workdir: str) -> bool:
    """Whether training (or ``evaluate``) wrote anything the report shows: metrics, evaluations or samples."""
    return any(os.path.exists(os.path.join(path(workdir), name)) for name in (METRICS, EVAL, SAMPLES))


# ----------------------------------------------------------------------------
# Evaluation records and sample strips: found by their file names
# ----------------------------------------------------------------------------


def _eval_paths(workdir: str) -> list[tuple[int, bool, str]]:
    """(step, zero-padded, path) of every evaluation record file, padded or not."""
    found = []
    for file in glob.glob(os.path.join(glob.escape(path(workdir)), EVAL, "step_*.json")):
        match = _EVAL_NAME.fullmatch(os.path.basename(file))
        if match:
            digits = match.group(1)
            found.append((int(digits), digits != str(int(digits)), file))
    return found


def eval_files(workdir: str) -> list[tuple[int, str]]:
    """(step, path) of each step's evaluation record, by step; the unpadded name where a step has both."""
    chosen: dict[int, tuple[bool, str]] = {}
    for step, padded, file in _eval_paths(workdir):
        if step not in chosen or (chosen[step][0] and not padded):
            chosen[step] = (padded, file)
    return [(step, chosen[step][1]) for step in sorted(chosen)]


def _read_record(file: str) -> dict | None:
    """An evaluation record, or None for a file that is unreadable, half written or not a record."""
    try:
        with open(file, encoding="utf-8") as f:
            record = json.load(f)
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and isinstance(record.get("scores"), dict) else None


def read_evaluations(workdir: str) -> list[dict]:
    """Every evaluation record (training's and ``evaluate``'s), by step; ``step`` is the file name's."""
    records = []
    for step, file in eval_files(workdir):
        record = _read_record(file)
        if record is not None:
            records.append({**record, "step": step})
    return records


def latest_evaluation(workdir: str) -> dict | None:
    """The record of the highest step that reads back, or None."""
    for _, file in reversed(eval_files(workdir)):
        record = _read_record(file)
        if record is not None:
            return record
    return None


def sample_files(workdir: str) -> list[tuple[int, str, str, str]]:
    """(step, split, direction, path) of every sample strip."""
    found = []
    for file in glob.glob(os.path.join(glob.escape(path(workdir)), SAMPLES, "*.png")):
        match = _SAMPLE_NAME.fullmatch(os.path.basename(file))
        if match:
            found.append((int(match.group(3)), match.group(2), match.group(1), file))
    return found


# ----------------------------------------------------------------------------
# metrics.jsonl
# ----------------------------------------------------------------------------


def append_metrics(workdir: str, step: int, values: dict[str, float]) -> None:
    """One JSON line for a log step, non-finite values left out: the loss curves of the run's report."""
    line = json.dumps({"step": step, **{k: v for k, v in values.items() if math.isfinite(v)}})
    with open(metrics_file(workdir), "a", encoding="utf-8") as f:
        f.write(line + "\n")


def read_metrics(workdir: str) -> list[dict]:
    """The metrics lines by step; unparseable lines (a crash mid-write) are skipped. Should a step appear twice (a
    file written before resumes dropped replayed lines), its last line wins."""
    rows = {}
    file = metrics_file(workdir)
    if os.path.exists(file):
        with open(file, encoding="utf-8") as f:
            for line in f:
                try:
                    row = json.loads(line)
                    rows[int(row["step"])] = row
                except (ValueError, TypeError, KeyError):
                    continue
    return [rows[step] for step in sorted(rows)]


def forget_after(workdir: str, step: int) -> None:
    """Drop what a run logged past ``step`` (the restored checkpoint): metrics lines and evaluation records (both
    name formats). The resumed run logs those steps again, so curves never double back."""
    file = metrics_file(workdir)
    if os.path.exists(file):
        kept = []
        with open(file, encoding="utf-8") as f:
            for line in f:
                with contextlib.suppress(ValueError, TypeError, AttributeError):
                    if int(json.loads(line)["step"]) <= step:
                        kept.append(line if line.endswith("\n") else line + "\n")
        tmp = file + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(kept)
        os.replace(tmp, file)
    for logged, _, record in _eval_paths(workdir):
        if logged > step:
            os.remove(record)
