"""Every entry point answers a bad argument with one ``<prog>: error:`` line and exit status 2, no traceback
(``ugatit_jax/cli.py``): the ``python -m ugatit_jax.<command>`` modules and the scripts that take arguments, for a
usage mistake (argparse) and for a bad value found while running (an ``errors.ExpectedError``).

In-process, to start no process: each ``main(argv)`` is the whole command, and each file's ``__main__`` block only
hands its status to ``sys.exit`` (checked here from the source). That glue is run as a real process by
tests/test_translate.py, test_evaluate.py and test_data_cli.py (``-m`` commands) and tests/test_train_cli.py
(train.py's bad flags and configs: ``test_bad_config_is_one_line``).
"""

import ast
import importlib
import importlib.util
import os
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
MISSING = "{tmp}/missing"  # a run folder or file that does not exist (and must not be created)


# (its file, its prog, bad arguments): a usage mistake, then a bad value found while running.
ENTRY_POINTS = {
    "translate": ("ugatit_jax/translate.py", "python -m ugatit_jax.translate", [
        ["--input", "x", "--bogus"],
        ["--workdir", MISSING, "--direction", "A2B", "--input", "x", "--output", "{tmp}/out"],
    ]),
    "evaluate": ("ugatit_jax/evaluate.py", "python -m ugatit_jax.evaluate", [
        ["--kid-subsets", "x"],
        ["--workdir", MISSING],
    ]),
    "export": ("ugatit_jax/export.py", "python -m ugatit_jax.export", [
        ["--format", "gif"],
        ["--workdir", MISSING, "--direction", "A2B", "--output", "{tmp}/a2b.bin"],
    ]),
    "report": ("ugatit_jax/report.py", "python -m ugatit_jax.report", [
        [],
        ["--workdir", MISSING],
    ]),
    "launch": ("ugatit_jax/launch.py", "python -m ugatit_jax.launch", [
        ["--processes", "x", "--", "train.py"],
        ["--processes", "0", "--", "train.py"],
    ]),
    "data": ("ugatit_jax/data/__main__.py", "python -m ugatit_jax.data", [
        ["describe", "--dataset", "bogus"],
        ["describe", "--dataset", "folder", "--dataset-dir", MISSING],
    ]),
    "plan": ("ugatit_jax/plan.py", "python -m ugatit_jax.plan", [
        ["--devices", "x"],
        ["--config", MISSING],
    ]),
    "gallery": ("scripts/gallery.py", "scripts/gallery.py", [
        ["--count", "x"],
        ["--model", MISSING],
    ]),
    "speckle_vs_content": ("scripts/speckle_vs_content.py", "scripts/speckle_vs_content.py", [
        ["--size", "x"],
        ["--model", MISSING],
    ]),
    "ship_model": ("scripts/ship_model.py", "scripts/ship_model.py", [
        ["--workdir", "x"],
        ["--workdir", MISSING, "--name", "x", "--output", "{tmp}/weights"],
    ]),
}  # fmt: skip


def _main(name: str):
    """The entry point's ``main``: a package module by its name, a script by its path (scripts/ is no package)."""
    file = ENTRY_POINTS[name][0]
    if file.startswith("ugatit_jax/"):
        return importlib.import_module(file.removesuffix(".py").replace("/", ".")).main
    spec = importlib.util.spec_from_file_location(f"script_{name}", ROOT / file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def _assert_one_error_line(err: str, prog: str) -> None:
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    # argparse names a sub-command in its prog ("python -m ugatit_jax.data describe: error: ...")
    assert len(lines) == 1 and re.match(rf"{re.escape(prog)}( \w+)?: error: ", lines[0]), err


@pytest.mark.parametrize("name", sorted(ENTRY_POINTS))
def test_bad_arguments_in_process(name, tmp_path, capsys):
    _, prog, cases = ENTRY_POINTS[name]
    main = _main(name)
    for argv in cases:
        argv = [a.format(tmp=tmp_path) for a in argv]
        try:
            status = main(argv)
        except SystemExit as exit_:  # argparse ends a usage mistake itself
            status = exit_.code
        assert status == 2, (argv, status)
        _assert_one_error_line(capsys.readouterr().err, prog)
    assert os.listdir(tmp_path) == []  # nothing created, not even the mistyped folder


def test_each_main_block_only_exits_with_mains_status():
    """``if __name__ == "__main__": sys.exit(main())``, nothing else, in every entry point's file."""
    for name, (file, _, _) in ENTRY_POINTS.items():
        tree = ast.parse((ROOT / file).read_text(encoding="utf-8"))
        blocks = [n for n in tree.body if isinstance(n, ast.If) and "__main__" in ast.unparse(n.test)]
        assert len(blocks) == 1, name
        assert [ast.unparse(n) for n in blocks[0].body] == ["sys.exit(main())"], (name, ast.unparse(blocks[0]))
