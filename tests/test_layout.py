"""The package's import graph: every module imports only from its own layer or below, and nothing outside the training
driver imports it (inference, evaluation and the commands load a run without the training loop).

Read from the source text (``ast``), so imports inside functions count too and nothing is imported to check it.
"""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "ugatit_jax"

# Lowest first; a module belongs to the layer of its longest listed prefix ("" is the package's __init__).
LAYERS = (
    # The ground floor, importing nothing above it: the error base, A2B/B2A, uint8 <-> [-1, 1], Ctrl-C, the run
    # folder's layout, and xla/ (compiling once and fast; compilation_cache.py: its old name, for train/parallel.py)
    ("errors", "directions", "pixels", "interrupts", "run_dir", "xla", "compilation_cache"),
    ("config",),  # every config key (its default cache folder is xla's)
    ("nn", "data"),  # the building blocks a researcher lifts; the input pipeline
    ("models",),  # the two families, built from nn
    ("interop", "train"),  # the official key mapping; the pure train step, its state, Orbax, the mesh
    ("inference",),  # the jitted translation
    ("loading", "evaluation"),  # load(); the evaluator, metrics, the run's page
    ("interop.onnx_export",),  # converts a loaded Translator
    ("cli",),  # the commands' one convention
    ("training",),  # the driver of training (the loop and its pieces): train.py's alone
    ("", "translate", "evaluate", "export", "report", "launch", "plan", "data.__main__"),  # the API and the commands
)
DRIVER = "training"


def _modules() -> dict[str, pathlib.Path]:
    """Module name relative to the package ("nn.norms", "" for ugatit_jax/__init__.py) -> file."""
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


MODULES = _modules()


def _imports(name: str, path: pathlib.Path) -> set[str]:
    """The package modules ``name`` imports (``from ugatit_jax.x import y``: ``x.y`` when y is a module, else ``x``)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [(alias.name, None) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the package
                base = package.split(".")[: len(package.split(".")) - node.level + 1] if package else []
                module = ".".join(p for p in [*base, node.module or ""] if p)
                module = "ugatit_jax" + ("." + module if module else "")
            else:
                module = node.module or ""
            targets = [(module, alias.name) for alias in node.names]
        else:
            continue
        for module, member in targets:
            if module != "ugatit_jax" and not module.startswith("ugatit_jax."):
                continue
            rel = module.removeprefix("ugatit_jax").lstrip(".")
            sub = f"{rel}.{member}".lstrip(".") if member else None
            found.add(sub if sub in MODULES else rel)
    found.discard(name)
    return found


def _layer(name: str) -> int:
    best = None
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if name == prefix or (prefix and name.startswith(prefix + ".")):
                if best is None or len(prefix) > len(best[1]):
                    best = (index, prefix)
    assert best is not None, f"ugatit_jax.{name} is in no layer of LAYERS: place it"
    return best[0]


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def test_the_graph_is_read():
    """Guards the reader itself: known edges are found (a parser that saw nothing would pass the tests below)."""
    assert {"nn.norms", "nn.spectral_norm"} <= GRAPH["models.ugatit"]
    assert "models.family" in GRAPH["loading"] and "evaluation.evaluator" in GRAPH["training.evaluation_hook"]
    assert {"training.steps", "train.checkpoints"} <= GRAPH["training.loop"]
    assert "directions" in GRAPH["translate"] and "cli" in GRAPH["data.__main__"]
    assert len(MODULES) > 50


@pytest.mark.parametrize("name", sorted(MODULES))
def test_imports_only_downwards(name):
    upward = sorted(dep for dep in GRAPH[name] if _layer(dep) > _layer(name))
    assert not upward, f"ugatit_jax.{name} (layer {_layer(name)}) imports from higher layers: {upward}"


def _in_driver(name: str) -> bool:
    return name == DRIVER or name.startswith(DRIVER + ".")


def test_nothing_in_the_package_imports_the_training_driver():
    importers = sorted(name for name, deps in GRAPH.items() if not _in_driver(name) and any(map(_in_driver, deps)))
    assert not importers, f"these import ugatit_jax.{DRIVER}: {importers}; only train.py at the root may"


def test_load_imports_no_input_pipeline():
    """``from ugatit_jax import load`` in a fresh interpreter imports neither grain nor tensorflow-datasets (nor
    the data package): translating needs the pixel conventions (``ugatit_jax.pixels``), not the pipeline."""
    import subprocess
    import sys

    code = (
        "import sys; from ugatit_jax import load; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('grain', 'tensorflow_datasets') "
        "or m.startswith('ugatit_jax.data')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]", out.stdout[:2000]
