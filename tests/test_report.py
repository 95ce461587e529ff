"""A tiny training run with evaluation: eval JSON, metrics.jsonl, the end-of-run table, the run report; the
evaluate CLI on the same checkpoint gives the same keys and numbers; resume bookkeeping; spread sample indices."""

import json
import logging
import os
import re

import numpy as np
import pytest
from tiny import run_config, tiny_config

from ugatit_jax import evaluate, report, run_dir
from ugatit_jax.evaluation import domain_classifier as dc
from ugatit_jax.models.family import get_family
from ugatit_jax.training import loop, samples

STEPS = run_config().iterations  # the in-process runs' shared step program


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """(workdir, returned metrics, captured log) of a STEPS-step run evaluating and sampling at its last step."""
    workdir = str(tmp_path_factory.mktemp("run"))
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("ugatit_jax")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(dc, "STEPS", 10)  # a shortened classifier recipe (its own cache key) in a temporary cache
        mp.setenv("UGATIT_DATA_DIR", str(tmp_path_factory.mktemp("data")))
        # Earlier tests in the same process may have disabled logging (absl / logging.config do); re-enable it here.
        mp.setattr(logger, "disabled", False)
        mp.setattr(logging.root.manager, "disable", logging.NOTSET)
        logger.addHandler(handler)
        old_level = logger.level
        logger.setLevel(logging.INFO)  # setLevel, not .level =: it clears the enabled-for cache of earlier tests
        try:
            config = run_config(eval_every=STEPS, sample_every=1)
            result = loop.train_and_evaluate(config, workdir)
            # the evaluate CLI on the checkpoint the run just saved, while the same classifier cache is in place
            output = os.path.join(workdir, "cli.json")
            assert evaluate.main(["--workdir", workdir, "--output", output]) == 0
        finally:
            logger.removeHandler(handler)
            logger.setLevel(old_level)
    return workdir, result, "\n".join(r.getMessage() for r in records)


def test_training_writes_the_evaluation_and_logs_the_table(run):
    workdir, result, log_text = run
    record = json.load(open(os.path.join(workdir, "eval", f"step_{STEPS}.json")))
    assert record["step"] == STEPS and record["dataset"] == "synthetic"
    assert {"eval/A2B/target_rate", "eval/A2B/target_rate_input", "eval/B2A/top5_input"} <= set(record["scores"])
    assert all(result[k] == v for k, v in record["scores"].items())  # returned by train_and_evaluate too
    assert "each number beside the untranslated input" in log_text and "target_rate" in log_text
    assert "run report:" in log_text


def test_evaluate_cli_gives_the_same_keys_and_numbers_as_training(run):
    workdir, _, _ = run
    trained = json.load(open(os.path.join(workdir, "eval", f"step_{STEPS}.json")))
    cli = json.load(open(os.path.join(workdir, "cli.json")))
    assert set(cli["scores"]) == set(trained["scores"])
    for k, v in trained["scores"].items():
        assert cli["scores"][k] == pytest.approx(v, rel=1e-5, abs=1e-6), k
    assert cli["step"] == trained["step"] and cli["classifier"]["key"] == trained["classifier"]["key"]


def test_metrics_jsonl_has_one_line_per_log_step(run):
    workdir, _, _ = run
    rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1)) and all("d_loss" in r for r in rows)


def test_report_exists_and_links_only_existing_files(run):
    workdir, _, _ = run
    page = open(os.path.join(workdir, "report.html"), encoding="utf-8").read()
    links = re.findall(r'(?:src|href)="([^"#][^"]*)"', page)
    assert links, "the report should show the sample strips"
    for link in links:
        assert not re.match(r"^[a-z]+:|^/", link), link  # relative only
        assert os.path.isfile(os.path.join(workdir, *link.split("/"))), link
    assert f"samples/A2B_test_{STEPS:07d}.png" in links
    assert page.count("<svg") >= 8 and "target_rate" in page and "d_loss" in page and "untranslated input" in page
    assert "hf_ratio: high-frequency energy over real targets" in page and "above: speckled, below: blurred" in page
    # the CLI rewrites the same page
    os.remove(os.path.join(workdir, "report.html"))
    assert report.main(["--workdir", workdir]) == 0
    assert open(os.path.join(workdir, "report.html"), encoding="utf-8").read() == page


def test_figures_are_the_pages_evaluation_plots(run, tmp_path, capsys):
    workdir, _, _ = run
    page = open(os.path.join(workdir, "report.html"), encoding="utf-8").read()
    assert report.main(["--workdir", workdir, "--figures", str(tmp_path / "figures")]) == 0
    files = sorted(os.listdir(tmp_path / "figures"))
    assert {"target_rate.svg", "kid_domain.svg", "hf_ratio.svg", "top5.svg"} <= set(files), files
    for name in files:
        svg = (tmp_path / "figures" / name).read_text(encoding="utf-8")
        assert svg.startswith("<svg") and svg in page, name
    blocked = tmp_path / "file"
    blocked.write_text("")
    capsys.readouterr()
    assert report.main(["--workdir", workdir, "--figures", str(blocked / "sub")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"{report.PROG}: error: --figures="), err


def test_report_cli_bad_workdir_is_one_line(tmp_path, capsys):
    assert report.main(["--workdir", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"{report.PROG}: error: --workdir=") and "does not exist" in err
    assert report.main(["--workdir", str(tmp_path)]) == 2
    assert "holds no metrics.jsonl" in capsys.readouterr().err


def test_resume_forgets_what_was_logged_past_the_restored_step(tmp_path):
    (tmp_path / "eval").mkdir()
    for step in (2, 4, 6):
        run_dir.append_metrics(str(tmp_path), step, {"d_loss": float(step), "nan": float("nan")})
        (tmp_path / "eval" / f"step_{step}.json").write_text("{}")
    (tmp_path / "eval" / "step_0000006.json").write_text("{}")  # the zero-padded name older files have
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 7, "d_lo')  # a crash mid-line
    run_dir.forget_after(str(tmp_path), 4)
    rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert rows == [{"step": 2, "d_loss": 2.0}, {"step": 4, "d_loss": 4.0}]  # non-finite values are not written
    assert sorted(os.listdir(tmp_path / "eval")) == ["step_2.json", "step_4.json"]


def test_evaluation_files_of_both_name_formats_are_read(tmp_path):
    """New records are ``step_<N>.json``; the zero-padded ``step_<NNNNNNN>.json`` of older folders (the official
    benchmark's) still load and report, and where a step has both, the unpadded one counts."""
    (tmp_path / "eval").mkdir()
    for name, which in (("step_0000600.json", "padded"), ("step_900.json", "new"), ("step_0000900.json", "old")):
        (tmp_path / "eval" / name).write_text(json.dumps({"scores": {}, "which": which}))
    (tmp_path / "eval" / "step_x.json").write_text("{}")
    assert run_dir.eval_file(str(tmp_path), 600) == str(tmp_path / "eval" / "step_600.json")
    assert [(r["step"], r["which"]) for r in run_dir.read_evaluations(str(tmp_path))] == [(600, "padded"), (900, "new")]
    assert run_dir.latest_evaluation(str(tmp_path))["which"] == "new"


def test_sample_indices_spread_over_the_split():
    assert samples.spread_indices(389, 5) == [0, 97, 194, 291, 388]  # 388 * i / 4
    assert samples.spread_indices(3, 5) == [0, 1, 2] and samples.spread_indices(10, 1) == [5]
    assert samples.spread_indices(0, 5) == []
    for n, k in ((3540, 5), (7, 4), (100, 100)):
        idx = samples.spread_indices(n, k)
        assert len(set(idx)) == len(idx) == min(n, k) and idx == sorted(idx) and idx[0] == 0 and idx[-1] == n - 1


def test_sampler_images_are_spread_over_each_split(tmp_path):
    from ugatit_jax.data import ArraySplit, UnpairedSource

    def split(name, n):  # image i is flat grey level i
        return ArraySplit([np.full((8, 8, 3), i, np.uint8) for i in range(n)], name=name)

    source = UnpairedSource("s", split("trainA", 50), split("trainB", 40), split("testA", 21), split("testB", 11))
    # make_cycle_fn only jits lazily: the images can be checked without generators
    config = tiny_config(num_samples=3, img_size=8)
    sampler = samples.Sampler(config, get_family(config), source, {}, "")
    levels = {key: images[:, 0, 0, 0].tolist() for key, images in sampler.images.items()}
    assert levels == {
        ("train", "A2B"): [0, 24, 49],
        ("train", "B2A"): [0, 20, 39],
        ("test", "A2B"): [0, 10, 20],
        ("test", "B2A"): [0, 5, 10],
    }
