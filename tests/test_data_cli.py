"""``python -m ugatit_jax.data`` and ``get_source``: counts, pairs, builds, benchmark, errors."""

import glob
import os
import subprocess
import sys

import ml_collections
import pytest

from ugatit_jax.data import DatasetError, emoji, get_source
from ugatit_jax.data.__main__ import main


def test_describe_emoji_prints_counts_and_pairs_by_code_point(tmp_path, capsys):
    cache = str(tmp_path / "emoji")
    assert main(["describe", "--dataset", "emoji", "--dataset-dir", cache, "--emoji-limit", "40"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0] == "dataset: emoji"
    assert lines[2].split()[:3] == ["trainA", "A", "37"] and lines[5].split()[:3] == ["testB", "B", "3"]
    assert "test pairs: 3" in out and lines[-1] == "1f1e6 1f1e6-1f1e8 1f1e7-1f1e6"
    assert lines[2].split()[-1] == os.path.join(cache, emoji.cache_key(40), "trainA")
    assert main(["describe", "--dataset-dir", cache, "--emoji-limit", "40", "--list-pairs"]) == 0
    assert capsys.readouterr().out.splitlines()[-3:] == [
        "1f1e6\ttestA[1]\ttestB[1]",
        "1f1e6-1f1e8\ttestA[0]\ttestB[0]",
        "1f1e7-1f1e6\ttestA[2]\ttestB[2]",
    ]


def test_build_builds_once_and_force_keeps_the_old_build(tmp_path, capsys):
    cache = str(tmp_path / "emoji")
    folder = os.path.join(cache, emoji.cache_key(24))
    assert main(["build", "--dataset", "emoji", "--dataset-dir", cache, "--emoji-limit", "24"]) == 0
    assert capsys.readouterr().out.startswith(f"built emoji dataset in {folder} in ")
    assert main(["build", "--dataset", "emoji", "--dataset-dir", cache, "--emoji-limit", "24"]) == 0
    out = capsys.readouterr().out
    assert out == f"emoji dataset in {folder}: trainA 22, trainB 22, testA 2, testB 2; 2 test pairs\n"
    assert main(["build", "--dataset-dir", cache, "--emoji-limit", "24", "--force"]) == 0
    assert capsys.readouterr().out.startswith(f"built emoji dataset in {folder} in ")
    assert len(glob.glob(os.path.join(cache, ".*.old-*", emoji.cache_key(24), "trainA", "*.png"))) == 22


def test_benchmark_reports_images_per_second(tmp_path, capsys):
    root = str(tmp_path / "bench")
    argv = [
        "benchmark",
        "--dataset-dir",
        root,
        "--generate",
        "3",
        "--img-size",
        "16",
        "--batch-size",
        "2",
        "--steps",
        "2",
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "images/s (A+B)" in out and float(out.split(" images/s")[0].split()[-1]) > 0
    assert sorted(os.listdir(os.path.join(root, "trainA"))) == ["00000.jpg", "00001.jpg", "00002.jpg"]


def test_bad_input_exits_non_zero_with_one_line(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "ugatit_jax.data",
            "describe",
            "--dataset",
            "folder",
            "--dataset-dir",
            str(tmp_path / "x"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith("python -m ugatit_jax.data: error: dataset folder")
    assert main(["build", "--dataset", "folder"]) == 2
    with pytest.raises(SystemExit) as exit_info:
        main(["describe", "--dataset", "bogus"])
    assert exit_info.value.code == 2


def test_unknown_dataset_names_the_option_and_choices():
    with pytest.raises(DatasetError, match=r"config.dataset='imagenet' .* emoji, folder, tfds"):
        get_source(ml_collections.ConfigDict(dict(dataset="imagenet", dataset_dir="", tfds_name="")))


def test_synthetic_dataset_is_paired_and_in_memory():
    source = get_source(ml_collections.ConfigDict(dict(dataset="synthetic", dataset_dir="", tfds_name="")))
    assert source.counts() == {"trainA": 8, "trainB": 8, "testA": 2, "testB": 2}
    key, index_a, index_b = source.test_pairs[0]
    assert (source.test_a[index_a] == 255 - source.test_b[index_b]).all()
