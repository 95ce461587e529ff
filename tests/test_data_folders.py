"""Folder datasets: listing, any image mode, and skipping corrupt files."""

import os
import warnings

import numpy as np
import pytest
from PIL import Image

from ugatit_jax.data import DatasetError, UnreadableImageWarning, make_train_iterator
from ugatit_jax.data.folders import ImageFolder, folder_source, list_images


def _save(path, image):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    image.save(path)


def _rgb(width=40, height=30, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), np.uint8))


def _truncated_jpeg(path):
    _save(path, _rgb(64, 64, seed=9))
    with open(path, "rb") as file:
        data = file.read()
    with open(path, "wb") as file:
        file.write(data[:400])  # the header parses, decoding fails


@pytest.fixture
def mixed_root(tmp_path):
    """The acceptance folder: one corrupt file among odd-but-valid ones, plus litter."""
    root = tmp_path / "mixed"
    a = root / "trainA"
    _save(str(a / "a_rgb.jpg"), _rgb())
    _save(str(a / "b_gray.JPG"), _rgb(seed=1).convert("L"))
    rgba = np.zeros((20, 24, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:10, :, 3] = 255
    _save(str(a / "c_rgba.png"), Image.fromarray(rgba))
    _save(str(a / "d_small.png"), _rgb(16, 16, seed=2))
    _truncated_jpeg(str(a / "e_corrupt.jpg"))
    (a / "notes.txt").write_text("not an image")
    _save(str(a / "sub" / "f_nested.jpeg"), _rgb(seed=3))
    _save(str(a / ".hidden.jpg"), _rgb(seed=4))
    for split, count in (("trainB", 3), ("testA", 2), ("testB", 2)):
        for i in range(count):
            _save(str(root / split / f"{i}.png"), _rgb(24, 20, seed=10 + i))
    return str(root)


def test_listing_is_recursive_sorted_case_insensitive_and_ignores_litter(mixed_root):
    files = list_images(os.path.join(mixed_root, "trainA"))
    assert files == ["a_rgb.jpg", "b_gray.JPG", "c_rgba.png", "d_small.png", "e_corrupt.jpg", "sub/f_nested.jpeg"]
    split = ImageFolder(os.path.join(mixed_root, "trainA"))
    assert split.keys == ["a_rgb", "b_gray", "c_rgba", "d_small", "e_corrupt", "sub/f_nested"]
    assert split.name == "trainA" and len(split) == 6


def test_every_mode_reads_as_rgb_uint8(mixed_root):
    split = ImageFolder(os.path.join(mixed_root, "trainA"))
    for index in (0, 1, 2, 3, 5):
        image = split.load(index)
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[-1] == 3
    assert split.load(3).shape == (16, 16, 3)
    rgba = split.load(2)
    assert tuple(rgba[0, 0]) == (200, 0, 0) and tuple(rgba[-1, -1]) == (255, 255, 255)


def test_corrupt_file_is_replaced_by_the_next_one_and_counted(mixed_root):
    split = ImageFolder(os.path.join(mixed_root, "trainA"))
    with pytest.warns(UnreadableImageWarning, match="e_corrupt.jpg"):
        image = split[4]
    np.testing.assert_array_equal(image, split.load(5))  # deterministic replacement: the next index
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once per file, not per read
        split[4]
    assert list(split.skipped) == [os.path.join(mixed_root, "trainA", "e_corrupt.jpg")]
    with pytest.raises(OSError):
        split.load(4)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_mixed_folder_trains_and_reports_exactly_one_skipped_file(mixed_root, num_workers):
    source = folder_source(mixed_root)
    assert source.counts() == {"trainA": 6, "trainB": 3, "testA": 2, "testB": 2}
    assert source.test_pairs == []  # folders are unpaired unless asked
    with pytest.warns(UnreadableImageWarning) as caught:
        with make_train_iterator(
            source, img_size=16, global_batch_size=3, seed=0, num_workers=num_workers, process_index=0, process_count=1
        ) as iterator:
            batches = [next(iterator) for _ in range(8)]  # 4 epochs of trainA
    for batch in batches:
        assert batch["A"].shape == (3, 16, 16, 3) and batch["B"].shape == (3, 16, 16, 3)
        assert batch["A"].dtype == np.uint8
    # Found in a worker process or not, the skip is reported here, once.
    assert list(iterator.skipped) == [os.path.join(mixed_root, "trainA", "e_corrupt.jpg")]
    assert list(source.train_a.skipped) == list(iterator.skipped)
    assert len([w for w in caught if issubclass(w.category, UnreadableImageWarning)]) == 1


def test_all_files_corrupt_is_an_error(tmp_path):
    folder = tmp_path / "trainA"
    folder.mkdir()
    (folder / "x.png").write_bytes(b"garbage")
    split = ImageFolder(str(folder))
    with pytest.raises(DatasetError, match="none of the 1 images"):
        split.load_or_next(0)


def test_missing_split_names_the_folder(tmp_path):
    for split in ("trainA", "trainB", "testA"):
        _save(str(tmp_path / split / "x.png"), _rgb())
    with pytest.raises(DatasetError, match=r"missing split folder .*testB"):
        folder_source(str(tmp_path))


def test_empty_split_names_the_folder(tmp_path):
    for split in ("trainA", "trainB", "testA", "testB"):
        (tmp_path / split).mkdir()
    (tmp_path / "trainA" / "readme.txt").write_text("no images")
    with pytest.raises(DatasetError, match=r"trainA holds no images"):
        folder_source(str(tmp_path))


def test_missing_root_and_empty_option(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        folder_source(str(tmp_path / "nope"))
    with pytest.raises(DatasetError, match="dataset_dir"):
        folder_source("")
    assert issubclass(DatasetError, ValueError)
