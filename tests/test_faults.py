"""A clumsy user's paths and files: each ends with one ``<prog>: error:`` line naming what to fix, exit code 2, and
before any long work (a broken symbolic link, a read-only file system, the other model family's checkpoint); a run
saved by a newer version gets a warning line."""

import errno
import os
import warnings

import pytest

from ugatit_jax import cli, export, loading, report, translate
from ugatit_jax.data import DatasetError, emoji


def _read_only(monkeypatch, folder):
    """A read-only file system at ``folder`` as os.access and statvfs report it (the test runs as any user)."""
    folder = str(folder)
    real_access, real_statvfs = os.access, os.statvfs

    def access(path, mode, **kw):
        return not str(path).startswith(folder) if mode & os.W_OK else real_access(path, mode, **kw)

    class Stat:
        f_flag = os.ST_RDONLY

    monkeypatch.setattr(os, "access", access)
    monkeypatch.setattr(os, "statvfs", lambda path: Stat() if str(path).startswith(folder) else real_statvfs(path))


def test_check_writable_names_the_fault(tmp_path, monkeypatch):
    os.symlink("/nonexistent/target", tmp_path / "dangling")
    os.symlink("loop2", tmp_path / "loop1")
    os.symlink("loop1", tmp_path / "loop2")
    (tmp_path / "file").write_text("x")
    cases = {
        (tmp_path / "dangling", False): "is a broken symbolic link (to /nonexistent/target)",
        (tmp_path / "loop1", True): "is a broken symbolic link (to loop2)",
        (tmp_path / "file", True): "is a file; give a folder",
        (tmp_path / "file" / "out.bin", False): "is not a folder",
    }
    for (path, folder), message in cases.items():
        with pytest.raises(cli.UsageError, match=message.replace("(", r"\(").replace(")", r"\)")):
            cli.check_writable(str(path), folder=folder)
    cli.check_writable(str(tmp_path / "new" / "deeper"), folder=True)  # creates nothing
    cli.check_writable(str(tmp_path / "new ü" / "a2b.bin"))
    assert sorted(os.listdir(tmp_path)) == ["dangling", "file", "loop1", "loop2"]
    _read_only(monkeypatch, tmp_path)
    with pytest.raises(cli.UsageError, match=f"cannot write there \\(a read-only file system: {tmp_path}\\)"):
        cli.check_writable(str(tmp_path / "out" / "x.png"), name="--output out")


def test_commands_refuse_an_unwritable_output_before_loading(tmp_path, monkeypatch, capsys):
    os.symlink("/nonexistent/target", tmp_path / "dangling")
    (tmp_path / "in.png").write_bytes(b"")  # never read: the output is refused first
    monkeypatch.setattr(loading, "load_run", lambda *a, **k: pytest.fail("loaded the model"))
    monkeypatch.setattr(translate, "load_model", lambda *a, **k: pytest.fail("loaded the model"))
    run = ["--workdir", str(tmp_path)]
    assert export.main([*run, "--direction", "A2B", "--output", str(tmp_path / "dangling")]) == 2
    assert "--output" in capsys.readouterr().err
    os.mkdir(tmp_path / "checkpoints")  # what translate's cheap checks look for in a run folder
    images = ["--direction", "A2B", "--input", str(tmp_path / "in.png")]
    assert translate.main([*run, *images, "--output", str(tmp_path / "dangling")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is a broken symbolic link" in err
    (tmp_path / "metrics.jsonl").write_text("{}\n")
    _read_only(monkeypatch, tmp_path)
    assert report.main(["--workdir", str(tmp_path)]) == 2
    assert "report.html (the default --output): cannot write there (a read-only file system" in capsys.readouterr().err


def test_an_emoji_build_on_a_broken_link_or_a_read_only_folder(tmp_path, monkeypatch):
    os.symlink("/nonexistent/target", tmp_path / "dangling")
    with pytest.raises(DatasetError, match="is a broken symbolic link"):
        emoji.build_emoji_cache(str(tmp_path / "dangling"), limit=24, progress=False)

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(emoji.tempfile, "mkdtemp", read_only)
    with pytest.raises(DatasetError, match="cannot write the emoji build into .*Read-only file system.*writable"):
        emoji.build_emoji_cache(str(tmp_path / "data"), limit=24, progress=False)


def test_the_other_familys_checkpoint_and_a_newer_runs_config():
    nice = {name: {} for name in ("gen2A", "gen2B", "disA", "disB")}
    ugatit = {name: {} for name in ("genA2B", "genB2A", "disGA", "disGB", "disLA", "disLB")}
    assert loading._other_family(nice, "ugatit") == "nice" and loading._other_family(ugatit, "nice") == "ugatit"
    assert loading._other_family(ugatit, "ugatit") is None and loading._other_family({}, "ugatit") is None
    from ugatit_jax.config import base_config

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loading._warn_unknown_keys(base_config().to_dict(), "runs/x")
        assert not caught
        loading._warn_unknown_keys({**base_config().to_dict(), "option_of_v9": 1}, "runs/x")
    (warning,) = caught
    assert "(option_of_v9): saved by a newer version?" in str(warning.message)
