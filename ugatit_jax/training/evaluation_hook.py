"""The evaluation during training: the networks the run's outputs translate with, and the shared evaluator on
them, each record written where ``python -m ugatit_jax.evaluate`` writes a checkpoint's."""

from __future__ import annotations

import os

import jax

from ugatit_jax import run_dir
from ugatit_jax.evaluation.evaluator import Evaluator, make_translators, write_record
from ugatit_jax.inference import translation_state
from ugatit_jax.models.family import Family
from ugatit_jax.train import parallel
from ugatit_jax.train.state import TrainState, translating_params


def translation_nets(family: Family, state: TrainState, mesh) -> dict:
    """The networks the sample strips and the evaluation translate with (``inference.translation_state`` of the
    averaged or trained parameters of the run's ``family``), readable on the host of process 0. With
    ``config.shard_state`` over several processes they are gathered to a replicated copy
    (``parallel.host_readable``): a collective, so every process calls this at the same steps, though only
    process 0 reads the result."""
    return parallel.host_readable(translation_state(family, translating_params(state), state.sn), mesh)


class RunEvaluator:
    """The shared ``evaluation.evaluator.Evaluator`` on the train state; each record goes to
    ``run_dir.eval_file``, the file ``python -m ugatit_jax.evaluate`` writes for a checkpoint. ``family``: the
    run's."""

    def __init__(self, config, family: Family, source, graphdefs, workdir: str):
        self.evaluator = Evaluator(source, config.img_size, classifier_steps=config.classifier_steps)
        self.family = family
        self.bind = make_translators(self.family, graphdefs)
        self.workdir = workdir

    def __call__(self, nets: dict, step: int, averaged: bool) -> dict:
        """``nets``: ``translation_nets`` of the state at ``step``; ``averaged``: they are the parameter average."""
        record = self.evaluator(self.bind(jax.device_get(nets)))
        averaged = " (EMA)" if averaged else ""  # as ``load`` names a run's averaged model
        record = {"model": f"{os.path.basename(self.workdir)} step {step}{averaged}", "step": step, **record}
        write_record(record, run_dir.eval_file(self.workdir, step))
        return record
