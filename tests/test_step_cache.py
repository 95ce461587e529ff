"""The on-disk traced-step cache (``ugatit_jax.xla.step_cache``): a second start loads the step instead of
tracing it and computes the same numbers; any change of key, or a damaged entry, traces again."""

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import struct

from ugatit_jax.train import parallel
from ugatit_jax.xla import step_cache


@struct.dataclass
class _State:  # a custom pytree node, as TrainState is: exported over its leaves
    step: jax.Array
    params: dict


def _state():
    return _State(step=jnp.zeros((), jnp.int32), params={"w": jnp.arange(6.0).reshape(2, 3), "b": jnp.ones(3)})


def _batch():
    return {"A": jnp.arange(12, dtype=jnp.uint8).reshape(4, 3), "B": jnp.full((4, 3), 7, jnp.uint8)}


def _counting_step(traces: list, scale: float = 0.5):
    def step(state, batch):
        traces.append(1)
        x = (batch["A"].astype(jnp.float32) - batch["B"]) / 255.0  # (4, 3)
        loss = jnp.mean((x @ state.params["w"].T) ** 2) + jnp.sum(state.params["b"])
        grads = jax.grad(lambda p: jnp.mean((x @ p["w"].T) ** 2) + jnp.sum(p["b"]))(state.params)
        params = jax.tree.map(lambda p, g: p - scale * g, state.params, grads)
        return _State(step=state.step + 1, params=params), {"loss": loss, "step": state.step}

    return step


def _run(directory, parts=("tiny",), scale=0.5, steps=2):
    mesh = parallel.make_mesh(jax.devices()[:1])
    traces = []
    jit_fn = lambda fn: jax.jit(fn, donate_argnums=(0,))
    stepper = step_cache.ExportedStep(_counting_step(traces, scale), parts, mesh, jit_fn, str(directory))
    state, outs = _state(), []
    for _ in range(steps):
        state, metrics = stepper(state, _batch())
        outs.append(jax.device_get(metrics))
    return stepper, traces, jax.device_get(state), outs


def _assert_same(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(x, y)


def test_second_start_loads_instead_of_tracing(tmp_path):
    first, traces, state, outs = _run(tmp_path)
    assert first.loaded is False and len(traces) == 1
    assert len(list(tmp_path.glob("step-*.jaxexport"))) == 1
    second, traces2, state2, outs2 = _run(tmp_path)
    assert second.loaded is True and traces2 == [], "the step was traced although its export was on disk"
    _assert_same((state, outs), (state2, outs2))
    plain_traces = []
    plain = jax.jit(_counting_step(plain_traces), donate_argnums=(0,))
    ref = _state()
    for _ in range(2):
        ref, _ = plain(ref, _batch())
    for x, y in zip(jax.tree.leaves(state2), jax.tree.leaves(jax.device_get(ref))):
        np.testing.assert_allclose(x, y, rtol=1e-6)
    assert int(state2.step) == 2 and [int(o["step"]) for o in outs2] == [0, 1]


def test_any_change_of_key_traces_again(tmp_path):
    _run(tmp_path, parts=("tiny", 1e-4))
    other, traces, state, _ = _run(tmp_path, parts=("tiny", 2e-4), scale=0.25)
    assert other.loaded is False and len(traces) == 1
    assert len(list(tmp_path.glob("step-*.jaxexport"))) == 2
    _, _, expected, _ = _run(tmp_path / "fresh", parts=("tiny", 2e-4), scale=0.25)
    _assert_same(state, expected)  # the 0.25 step, not the 0.5 one stored under the other key


def test_damaged_entry_is_traced_and_written_again(tmp_path, caplog):
    _, _, state, _ = _run(tmp_path)
    (entry,) = tmp_path.glob("step-*.jaxexport")
    entry.write_bytes(entry.read_bytes()[:100])
    with caplog.at_level(logging.WARNING, logger="ugatit_jax"):
        again, traces, state2, _ = _run(tmp_path)
    assert again.loaded is False and len(traces) == 1
    assert "unreadable" in caplog.text and entry.name in caplog.text
    _assert_same(state, state2)
    assert _run(tmp_path)[0].loaded is True  # rewritten whole


def test_a_step_export_cannot_serve_is_traced_as_usual(tmp_path):
    def with_host_callback(state, batch):  # host callbacks have no stable serialized form
        total = jax.pure_callback(lambda a: np.float32(a.sum()), jax.ShapeDtypeStruct((), jnp.float32), batch["A"])
        return state.replace(step=state.step + 1), {"loss": total}

    mesh = parallel.make_mesh(jax.devices()[:1])
    stepper = step_cache.ExportedStep(with_host_callback, ("cb",), mesh, jax.jit, str(tmp_path))
    state, metrics = stepper(_state(), _batch())
    assert stepper.loaded is False and float(metrics["loss"]) == float(np.arange(12).sum())
    assert not list(tmp_path.glob("step-*.jaxexport"))


@pytest.mark.parametrize("change", ["parts", "batch_shape"])
def test_key_covers_config_and_shapes(change):
    mesh = parallel.make_mesh(jax.devices()[:1])
    base = step_cache.step_key(("tiny",), _state(), _batch(), mesh)
    assert base == step_cache.step_key(("tiny",), _state(), _batch(), mesh)
    if change == "parts":
        assert base != step_cache.step_key(("tiny", 2), _state(), _batch(), mesh)
    else:
        batch = {k: v[:2] for k, v in _batch().items()}
        assert base != step_cache.step_key(("tiny",), _state(), batch, mesh)
