"""The README's first API example runs as written, on a saved run of the tiny config instead of runs/emoji."""

import pathlib
import re

import numpy as np
from tiny import save_tiny_run

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"


def test_load_and_translate_example_runs(tmp_path):
    text = README.read_text()
    block = re.search(r"## Load a trained model and translate\n+```python\n(.*?)```", text, re.S).group(1)
    assert 'load("runs/emoji")' in block
    workdir = tmp_path / "run"
    config, _ = save_tiny_run(str(workdir), 2)
    scope = {}
    exec(compile(block.replace('"runs/emoji"', repr(str(workdir))), "README.md", "exec"), scope)  # noqa: S102
    size = config.img_size
    assert scope["image"].shape == (2, size, size, 3) and np.all(np.abs(np.asarray(scope["image"])) <= 1)
    assert scope["cam_logit"].shape == (2, 2) and scope["heatmap"].shape == (2, size // 4, size // 4, 1)
    assert set(scope["rows"]) >= {"identity", "fake", "cycle", "fake_heatmap"}
