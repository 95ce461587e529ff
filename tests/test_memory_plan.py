"""The train step's memory plan (``train/memory.py``, ``python -m ugatit_jax.plan``, ``throughput.py
--compile-only``) and train.py's pre-flight check against the devices' memory."""

import json

import jax
import pytest
from test_benchmark import ROOT, throughput
from tiny import run_config, tiny_config

from ugatit_jax import plan as plan_cli
from ugatit_jax.cli import UsageError
from ugatit_jax.config import ConfigError, parse_size, validate
from ugatit_jax.train import memory, parallel
from ugatit_jax.training import loop

GIB = 2**30
TINY = dict(ch=4, n_res=1, img_size=32, disc_global_layers=4, disc_local_layers=3, batch_size=8, shard_state=True)
TINY |= dict(light=False)  # the full model: its MLP's (1024, 16) kernel is what the state's split must keep split
TINY_OVERRIDES = [f"{k}={str(v).lower()}" for k, v in TINY.items()]  # on configs/emoji.py, whose EMA stays on


def test_sizes_parse_in_one_place():
    assert parse_size("16GiB") == parse_size("16G") == parse_size("16 gib") == 16 * GIB
    assert parse_size("80GB") == 80 * 10**9 and parse_size("1.5e10") == 15 * 10**9
    assert parse_size("512MiB") == 2**29 and parse_size(".5K") == 512
    for bad in ("lots", "", "0", "-1G", "16 GiBs", "inf", "nan", "1e40"):
        with pytest.raises(ValueError, match="is not a memory size; give one such as 16GiB"):
            parse_size(bad)
    config = tiny_config(device_memory="sixteen")
    with pytest.raises(ConfigError, match="config.device_memory='sixteen': must be a memory size"):
        validate(config)


def _main(argv, capsys):
    assert jax.device_count() == 8  # started before the plan's parser can ask JAX for another device count
    try:
        code = plan_cli.main(["--config", str(ROOT / "configs/emoji.py"), *argv])
    except SystemExit as e:  # argparse's own errors
        code = e.code
    captured = capsys.readouterr()
    return code, captured.out, [line for line in captured.err.splitlines() if line.strip()]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--devices", "0"], "--devices 0: give a device count of at least 1"),
        (["--device-memory", "lots"], "--device-memory: 'lots' is not a memory size"),
        (["--devices", "2", "--processes", "4"], "--processes 4: 2 device(s) cannot be shared evenly"),
        (["--devices", "8", "--config.batch_size=1"], "config.batch_size=1: must be divisible by the number of"),
        (["--variants", "fast"], "--variants: unknown variant 'fast'; join shard_state, bfloat16, remat, light"),
        (["--devices", "16"], "--devices 16: JAX sees 8 cpu device(s)"),
        (["--config.no_such_key=1"], "unknown config key 'no_such_key'"),
    ],
)
def test_bad_input_is_one_line(argv, message, capsys):
    code, _, lines = _main(argv, capsys)
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith("python -m ugatit_jax.plan: error:") and message in lines[0], lines[0]


def test_plan_agrees_with_the_benchmark_and_splits_the_state(tmp_path, capsys):
    """The plan of the tiny full model with its state split over 8 devices: one row as it compiles, the same
    numbers as ``throughput.py --compile-only`` (both compile ``memory.abstract_step``), a fraction of the state
    per device, and no device ever holding the MLP's whole kernel."""
    out = tmp_path / "plan.json"
    argv = [*(f"--config.{o}" for o in TINY_OVERRIDES), "--devices", "8", "--variants", "none"]
    code, text, lines = _main([*argv, "--device-memory", "1GiB", "--json", str(out)], capsys)
    assert code == 0, lines
    assert "full U-GAT-IT, 32 px, ch 4, batch 8 on 8 cpu device(s), float32, shard_state" in text
    assert "| variant | parameters | optimiser | EMA | temporaries | total | fits 1.00 GiB |" in text
    row = json.loads(out.read_text())["rows"][0]
    assert row["variant"] == "as given" and row["fits"] is True and row["ema_bytes"] > 0

    config = throughput.load_config(str(ROOT / "configs/emoji.py"), TINY_OVERRIDES)
    benchmark = throughput.compile_only(config, 8)["memory_analysis"]
    assert benchmark == {k: v for k, v in row.items() if k.endswith("_bytes")}
    jitted, state, batch = memory.abstract_step(config, parallel.make_mesh())
    assert state.params["genA2B"]["fc1"]["kernel"].shape == (1024, 16)
    text = jitted.trace(state, batch).lower().compile().as_text()  # from the persistent cache
    assert not [line for line in text.splitlines() if "f32[1024,16]" in line], "a whole kernel on one device"
    peak = row["argument_bytes"] + row["output_bytes"] - row["alias_bytes"] + row["temp_bytes"]
    assert row["estimated_peak_bytes"] == peak
    config.shard_state = False  # the same state whole on every device
    _, state, _ = memory.abstract_step(config, parallel.make_mesh())
    whole = memory._bytes_per_device((state.g_opt, state.d_opt))
    assert row["optimiser_bytes"] < whole / 3, (row["optimiser_bytes"], whole)


def test_benchmark_refuses_what_cannot_run(capsys):
    """throughput.py: a device count below 1 or above what JAX sees, and a batch that does not split, are one
    line each (cli.run_script prints the UsageError or ConfigError)."""
    with pytest.raises(SystemExit) as e:
        throughput.parse_args(["--devices", "0"])
    assert e.value.code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert err == ["throughput.py: error: --devices 0: give a device count of at least 1 (see --help)"]
    config = throughput.load_config(str(ROOT / "configs/emoji.py"), ["batch_size=1"])
    with pytest.raises(ConfigError, match="config.batch_size=1: must be divisible by the number of devices"):
        throughput.compile_only(config, 8)
    with pytest.raises(UsageError, match="--devices 16: JAX sees 8 cpu device"):
        throughput.devices_and_mesh(config, 16)


# ---------------------------------------------------------------------------------------------- the pre-flight
class _Compiled:
    def __init__(self, temp):
        self.temp = temp

    def memory_analysis(self):
        fields = dict(argument=0, output=0, alias=0, temp=self.temp, generated_code=0)
        return type("Analysis", (), {f"{k}_size_in_bytes": v for k, v in fields.items()})()


class _Step:
    """A jitted step's stand-in whose compiled plan needs ``temp`` bytes."""

    def __init__(self, temp):
        self.temp = temp

    def lower(self, state, batch):
        return type("Lowered", (), {"compile": lambda _: _Compiled(self.temp)})()


def _jitted_step(temp):
    """The trainer's ``jitted_step`` stand-in: its step needs ``temp`` bytes (None: must not be built)."""

    def jitted_step(config, graphdefs, g_tx, d_tx, mesh, shardings):
        assert temp is not None, "the step was built though no device memory is known"
        assert jax.tree.leaves(shardings)[0].mesh == mesh
        return _Step(temp)

    return jitted_step


@pytest.fixture(scope="module")
def abstract():
    """A mesh of 8 devices and the tiny config's state shapes on it (nothing compiled)."""
    mesh = parallel.make_mesh()
    return mesh, memory.abstract_step(tiny_config(batch_size=8), mesh)[1]


def _fake_plans(monkeypatch, need):
    """``memory.plan`` answers ``need(config)`` GiB without compiling; returns the configs it was asked for."""
    asked = []

    def plan(config, mesh):
        asked.append(memory.flags(config, tiny_config()))
        return memory.MemoryPlan(0, 0, 0, 0, 0, 0, int(need(config) * GIB), 0)

    monkeypatch.setattr(memory, "plan", plan)
    return asked


def test_preflight_names_the_cheapest_variant_that_fits(abstract, monkeypatch):
    mesh, _ = abstract
    monkeypatch.delenv(memory.ENV_VAR, raising=False)
    # shard_state alone does not fit, remat does: the message names remat (the cheapest that fits).
    asked = _fake_plans(
        monkeypatch, lambda c: 6 - 1.5 * c.shard_state - 3 * c.remat - 2 * (c.compute_dtype != "float32")
    )
    config = tiny_config(batch_size=8, device_memory="4GiB")
    with pytest.raises(ConfigError) as e:
        memory.preflight(config, mesh, _jitted_step(6 * GIB))
    assert str(e.value) == (
        "the step needs 6.00 GiB per device but the device has 4.00 GiB (config.device_memory=4GiB): "
        "--config.remat=true fits (3.00 GiB)"
    )
    smallest = "--config.shard_state=true --config.compute_dtype=bfloat16 --config.remat=true"
    assert asked == [smallest, "--config.shard_state=true", "--config.remat=true"]  # then it stops

    # Nothing fits: what to try instead (the light model, for the full one).
    _fake_plans(monkeypatch, lambda c: 5.0)
    for light, tries in ((True, "try fewer images"), (False, "try --config.light=true, fewer images")):
        config.light = light
        with pytest.raises(ConfigError) as e:
            memory.preflight(config, mesh, _jitted_step(6 * GIB))
        message = str(e.value)
        assert f"remat fits (the smallest, {smallest}, needs 5.00 GiB); {tries}" in message
        assert f"; {tries} per device (--config.batch_size) or more devices" in message


def test_preflight_passes_or_stays_out_of_the_way(abstract, monkeypatch):
    mesh, _ = abstract
    monkeypatch.delenv(memory.ENV_VAR, raising=False)
    _fake_plans(monkeypatch, lambda c: pytest.fail("a step that fits must not compile variants"))
    fits = memory.preflight(tiny_config(batch_size=8, device_memory="8GiB"), mesh, _jitted_step(2 * GIB))
    assert fits.temp == 2 * GIB and fits.parameters > 0
    no_check = memory.preflight(tiny_config(batch_size=8), mesh, _jitted_step(None))  # a CPU reports no memory
    assert no_check is None
    _fake_plans(monkeypatch, lambda c: 9.0)
    monkeypatch.setenv(memory.ENV_VAR, "1.5GiB")  # the variable stands in for the config key
    with pytest.raises(ConfigError, match=r"but the device has 1.50 GiB \(UGATIT_DEVICE_MEMORY=1.5GiB\)"):
        memory.preflight(tiny_config(batch_size=8), mesh, _jitted_step(2 * GIB))
    monkeypatch.setenv(memory.ENV_VAR, "a lot")
    with pytest.raises(ConfigError, match="UGATIT_DEVICE_MEMORY: 'a lot' is not a memory size"):
        memory.preflight(tiny_config(batch_size=8), mesh, _jitted_step(2 * GIB))


def test_a_run_checks_its_own_step_before_the_first(tmp_path, monkeypatch, caplog):
    """The trainer's pre-flight, on the in-process runs' shared step program (compiled once per session): a run
    that fits trains, one whose memory override is below the step's need stops before it builds anything, naming
    both (train.py prints the ConfigError as its one error line) and the variant that fits."""
    monkeypatch.delenv(memory.ENV_VAR, raising=False)
    _fake_plans(monkeypatch, lambda c: pytest.fail("a step that fits must not compile variants"))
    with caplog.at_level("INFO", logger="ugatit_jax"):
        result = loop.train_and_evaluate(run_config(device_memory="64GiB"), str(tmp_path / "fits"))
    assert result["step"] == run_config().iterations
    assert any("per device (XLA's plan) of 64.00 GiB (config.device_memory=64GiB)" in r.message for r in caplog.records)

    asked = _fake_plans(monkeypatch, lambda c: 0.0009765625 * (1 - c.shard_state / 2))  # 1 MiB, half with shard_state
    with pytest.raises(ConfigError) as e:
        loop.train_and_evaluate(run_config(device_memory="0.6MiB"), str(tmp_path / "stops"))
    message = str(e.value)
    assert message.startswith("the step needs ") and " MiB per device but the device has 0.6 MiB " in message
    assert message.endswith("(config.device_memory=0.6MiB): --config.shard_state=true fits (0.5 MiB)"), message
    assert asked[-1] == "--config.shard_state=true"
    assert not (tmp_path / "stops" / "checkpoints").exists()  # stopped before the model, the data, the checkpoints


def test_variants_plan_in_one_process(abstract, monkeypatch):
    """A plan traces every variant's step from one place (``memory.plan``), and the step's trace guard counts per
    place: the plan lifts its limit (else the plan's second variant stopped with chex's re-trace error)."""
    mesh, state = abstract
    limits = []
    lowered = type("Lowered", (), {"compile": lambda _: _Compiled(1)})()
    jitted = type("Jitted", (), {"trace": lambda _, state, batch: type("Traced", (), {"lower": lambda _: lowered})()})

    def abstract_step(config, mesh, *, max_traces=1):
        limits.append(max_traces)
        return jitted(), state, None

    monkeypatch.setattr(memory, "abstract_step", abstract_step)
    assert [memory.plan(tiny_config(), mesh).temp for _ in range(3)] == [1, 1, 1]
    assert min(limits) > 1000
