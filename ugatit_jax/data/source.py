"""What a dataset is to the rest of the code: four random-access splits.

Every backend (emoji cache, image folders, TFDS) hands out ``SplitSource``
objects, so the pipeline, the test loader and the CLI never need to know
where the pixels come from. Splits are plain picklable sequences so grain can
ship them to worker processes.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Sequence

import numpy as np

from ugatit_jax.data.errors import DatasetError, UnreadableImageWarning

SPLITS = ("trainA", "trainB", "testA", "testB")
_ATTRIBUTES = {"trainA": "train_a", "trainB": "train_b", "testA": "test_a", "testB": "test_b"}

# (file or record, reason) for each unreadable item passed over.
Skipped = tuple[tuple[str, str], ...]


class SplitSource(Sequence):
    """One split as a sequence of (H, W, 3) uint8 RGB images.

    Subclasses set ``name`` (e.g. 'trainA'), ``location`` (for messages) and
    ``keys`` (one stable string per item), and implement ``load``.

    Indexing never fails on a bad file: an unreadable item is replaced by the
    next readable one (wrapping around), which keeps batch shapes fixed and the
    replacement deterministic, and the bad file is warned about once and kept
    in ``skipped``. Corrupt files are therefore found when first read, not at
    listing, so opening a large folder stays cheap.
    """

    name: str
    location: str
    keys: list[str]

    def __len__(self) -> int:
        return len(self.keys)

    def load(self, index: int) -> np.ndarray:
        """Decodes item ``index``; raises whatever the decoder raises."""
        raise NotImplementedError

    def describe(self, index: int) -> str:
        """How messages name item ``index`` (a path where there is one)."""
        return f"{self.location}[{self.keys[index]}]"

    @property
    def skipped(self) -> dict[str, str]:
        """Unreadable items seen by this process so far: name -> reason."""
        return self.__dict__.setdefault("_skipped", {})

    def load_or_next(self, index: int) -> tuple[np.ndarray, Skipped]:
        """The image at ``index``, or the next readable one, and what was passed over."""
        n = len(self)
        if n == 0:
            raise DatasetError(f"{self.location} holds no images")
        bad = self.__dict__.setdefault("_bad_indices", {})
        passed: list[tuple[str, str]] = []
        for step in range(n):
            i = (index + step) % n
            if i in bad:
                passed.append(bad[i])
                continue
            try:
                return self.load(i), tuple(passed)
            except Exception as error:  # noqa: BLE001 - any decoder failure means "unreadable"
                bad[i] = (self.describe(i), f"{type(error).__name__}: {error}")
                passed.append(bad[i])
        raise DatasetError(
            f"none of the {n} images in {self.location} can be read (first: {passed[0][0]}: {passed[0][1]}); "
            "replace or remove the broken files"
        )

    def note_skipped(self, skipped: Skipped) -> int:
        """Records and warns about newly seen unreadable items; returns how many were new."""
        new = 0
        for item, reason in skipped:
            if item not in self.skipped:
                self.skipped[item] = reason
                new += 1
                warnings.warn(
                    f"skipping unreadable image {item} ({reason}); "
                    f"{len(self.skipped)} skipped so far in {self.location}",
                    UnreadableImageWarning,
                    stacklevel=3,
                )
        return new

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {self.location} with {len(self)} images")
        image, skipped = self.load_or_next(index % len(self))
        self.note_skipped(skipped)
        return image


def pairs_by_key(test_a: SplitSource, test_b: SplitSource) -> list[tuple[str, int, int]]:
    """(key, index in A, index in B) for each key present in both splits, sorted by key."""
    index_b = {key: i for i, key in enumerate(test_b.keys)}
    return sorted((key, i, index_b[key]) for i, key in enumerate(test_a.keys) if key in index_b)


@dataclasses.dataclass
class UnpairedSource:
    """The four splits of one dataset, plus the known test pairs (if any).

    ``test_pairs`` lists (key, index in test_a, index in test_b) for test
    images whose true translation is known (the emoji set); it is empty for
    genuinely unpaired data. Training never looks at it.
    """

    name: str
    train_a: SplitSource
    train_b: SplitSource
    test_a: SplitSource
    test_b: SplitSource
    test_pairs: list[tuple[str, int, int]] = dataclasses.field(default_factory=list)

    def split(self, split: str) -> SplitSource:
        """The split called 'trainA' / 'trainB' / 'testA' / 'testB' (or train_a, ...)."""
        attribute = _ATTRIBUTES.get(split, split)
        if attribute not in _ATTRIBUTES.values():
            raise DatasetError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
        return getattr(self, attribute)

    def keys(self, split: str) -> list[str]:
        """Names of the items of ``split`` (file stem, code point or TFDS index), in index order."""
        return list(self.split(split).keys)

    def counts(self) -> dict[str, int]:
        """Number of images per split, in the official folder order."""
        return {split: len(self.split(split)) for split in SPLITS}
