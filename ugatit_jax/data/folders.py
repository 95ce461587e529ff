"""Image-folder datasets in the official layout ``root/{trainA,trainB,testA,testB}``.

Each split folder is searched recursively and listed once, sorted by relative
path, so indices mean the same thing on every host and every run. Hidden
files and folders (names starting with '.') are left out: they are editor or
OS litter (``.DS_Store``, macOS ``._photo.jpg`` forks) that would only show up
later as "corrupt" images.
"""

from __future__ import annotations

import os

import numpy as np

from ugatit_jax.data.errors import DatasetError
from ugatit_jax.data.images import IMAGE_EXTENSIONS, read_rgb
from ugatit_jax.data.source import SPLITS, SplitSource, UnpairedSource, pairs_by_key


def list_images(folder: str) -> list[str]:
    """Relative POSIX paths of the image files under ``folder``, sorted."""
    found = []
    for directory, subdirs, files in os.walk(folder, followlinks=True):
        subdirs[:] = [d for d in subdirs if not d.startswith(".")]
        for file in files:
            if not file.startswith(".") and os.path.splitext(file)[1].lower() in IMAGE_EXTENSIONS:
                found.append(os.path.relpath(os.path.join(directory, file), folder).replace(os.sep, "/"))
    return sorted(found)


class ImageFolder(SplitSource):
    """The image files of one split folder; item keys are relative paths without extension."""

    def __init__(self, folder: str, name: str | None = None):
        self.folder = os.path.abspath(folder)
        self.name = name or os.path.basename(self.folder)
        self.location = self.folder
        if not os.path.isdir(self.folder):
            raise DatasetError(
                f"missing split folder {self.folder}: a folder dataset needs "
                f"{'/, '.join(SPLITS)}/ under its root; create it and put images in it"
            )
        self.files = list_images(self.folder)
        if not self.files:
            raise DatasetError(
                f"split folder {self.folder} holds no images (looked recursively for "
                f"{', '.join(sorted(IMAGE_EXTENSIONS))}); add images or point the dataset at another root"
            )
        self.keys = [os.path.splitext(file)[0] for file in self.files]

    def describe(self, index: int) -> str:
        return os.path.join(self.folder, self.files[index])

    def load(self, index: int) -> np.ndarray:
        return read_rgb(os.path.join(self.folder, self.files[index]))


def folder_source(root: str, *, name: str | None = None, paired: bool = False) -> UnpairedSource:
    """Opens ``root/{trainA,trainB,testA,testB}``.

    With ``paired=True``, test images with the same key in testA and testB are
    listed in ``test_pairs`` (used for the emoji cache, whose files are named
    by code point); ordinary folder datasets are unpaired.
    """
    if not root:
        raise DatasetError("no dataset folder given: set config.dataset_dir (or --dataset-dir) to the dataset root")
    root = os.path.abspath(os.path.expanduser(root))
    if not os.path.isdir(root):
        raise DatasetError(
            f"dataset folder {root} does not exist: point config.dataset_dir (or --dataset-dir) at a folder "
            f"holding {', '.join(SPLITS)}"
        )
    splits = {split: ImageFolder(os.path.join(root, split), split) for split in SPLITS}
    return UnpairedSource(
        name=name or os.path.basename(root),
        train_a=splits["trainA"],
        train_b=splits["trainB"],
        test_a=splits["testA"],
        test_b=splits["testB"],
        test_pairs=pairs_by_key(splits["testA"], splits["testB"]) if paired else [],
    )
