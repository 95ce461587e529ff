"""The grain training pipeline and the in-order test loader.

Training: each domain is sharded by host, shuffled with its own seed (so the
model never sees which A goes with which B), augmented with per-element seeds
derived by grain from the element index, and repeated forever with a fresh
order each epoch. Everything is a pure function of (seed, batch number), so
the iterator's position is one integer: ``get_state`` saves it, ``set_state``
rebuilds the grain pipeline from that batch on. That makes restored runs
continue the exact sequence, independent of ``num_workers``.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Iterator

import grain
import grain.experimental
import numpy as np

from ugatit_jax.data.errors import DatasetError, UnreadableImageWarning
from ugatit_jax.data.source import SplitSource, UnpairedSource
from ugatit_jax.data.transforms import CROP_MARGIN, test_transform, train_transform

# Below this many images a split is shuffled by numpy: grain's index_shuffle walks cycles of a fixed-width
# permutation, so its cost per index grows as the split shrinks (milliseconds per index for a few images; the
# measurements are in docs/speed.md), which made the data a third of a tiny step.
SMALL_SPLIT = 1000
STATE_VERSION = 1
# Fields of the state that must match for a restore to mean the same sequence.
_IDENTITY = ("seed", "img_size", "crop_margin", "global_batch_size", "process_index", "process_count", "sizes")


def derive_seed(seed: int, *tags: int) -> int:
    """Independent 32-bit seeds per domain and purpose from one user seed."""
    return int(np.random.SeedSequence([seed, *tags]).generate_state(1)[0])


@functools.lru_cache(maxsize=4)
def _permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n)


class _SmallSplitShuffle(grain.MapDataset):
    """``MapDataset.shuffle``'s contract for a small split: index ``epoch * n + i`` reads element ``perm_epoch[i]``
    of epoch ``epoch``, a fresh permutation per epoch, a pure function of (seed, index)."""

    def __init__(self, parent: grain.MapDataset, seed: int):
        super().__init__(parent)
        self._seed = seed

    def __len__(self) -> int:
        return len(self._parent)

    def __str__(self) -> str:
        return "SmallSplitShuffle"

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.slice(index)
        n = len(self._parent)
        epoch, i = divmod(index, n)
        return self._parent[int(_permutation(self._seed, epoch, n)[i]) + epoch * n]


def _let_grain_read_unparsed_flags() -> None:
    """Works around google/grain#1355 (present in grain 0.2.18, fixed upstream by google/grain#1362).

    ``mp_prefetch`` reads an absl flag, which raises ``UnparsedFlagAccessError``
    in programs that do not start through ``absl.app``. Marking just that flag
    as present (grain does the same for its debug flags) keeps its default.
    """
    from absl import flags

    if not flags.FLAGS.is_parsed() and "grain_enable_multiprocess_worker_profiling" in flags.FLAGS:
        flags.FLAGS["grain_enable_multiprocess_worker_profiling"].present = True


_ENDLESS = 2**62  # pairs per endless stream: see ``_dataset``


class _WithSkips:
    """Grain source returning (image, skipped) so skips reach the main process even from workers."""

    def __init__(self, split: SplitSource):
        self.split = split

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int):
        return self.split.load_or_next(index)


def _augment(item, rng: np.random.Generator, img_size: int, crop_margin: int):
    image, skipped = item
    return train_transform(image, rng, img_size, crop_margin), skipped


def _collate(elements) -> dict:
    return {
        "A": np.stack([a[0] for a, _ in elements]),
        "B": np.stack([b[0] for _, b in elements]),
        "skipped_A": tuple(dict.fromkeys(s for a, _ in elements for s in a[1])),
        "skipped_B": tuple(dict.fromkeys(s for _, b in elements for s in b[1])),
    }


class TrainIterator(Iterator):
    """Endless host-local batches ``{'A': uint8 (B, H, W, 3), 'B': ...}`` with a saveable position.

    Call ``close()`` (or use it as a context manager) to stop worker processes early.
    """

    def __init__(
        self,
        source: UnpairedSource,
        *,
        img_size: int,
        global_batch_size: int,
        seed: int,
        crop_margin: int = CROP_MARGIN,
        num_workers: int = 0,
        num_threads: int = 0,
        process_index: int | None = None,
        process_count: int | None = None,
    ):
        if process_index is None or process_count is None:
            import jax

            process_index = jax.process_index() if process_index is None else process_index
            process_count = jax.process_count() if process_count is None else process_count
        if img_size <= 0:
            raise DatasetError(f"img_size must be positive, got {img_size}")
        if crop_margin < 0:
            raise DatasetError(f"crop_margin must be >= 0, got {crop_margin}")
        if seed < 0:
            raise DatasetError(f"seed must be a non-negative integer, got {seed}")
        if num_workers < 0 or num_threads < 0:
            raise DatasetError(f"num_workers and num_threads must be >= 0, got {num_workers} and {num_threads}")
        if not 0 <= process_index < process_count:
            raise DatasetError(f"process_index {process_index} must lie in [0, process_count={process_count})")
        if global_batch_size <= 0 or global_batch_size % process_count:
            raise DatasetError(
                f"global_batch_size {global_batch_size} must be a positive multiple of the number of hosts "
                f"({process_count}) so every host gets the same share"
            )
        self._splits = {"A": source.train_a, "B": source.train_b}
        for split in self._splits.values():
            if len(split) < process_count:
                raise DatasetError(
                    f"{split.location} has {len(split)} images, fewer than the {process_count} hosts sharing it; "
                    "add images or use fewer hosts"
                )
        self.local_batch_size = global_batch_size // process_count
        self._num_workers = num_workers
        self._num_threads = num_threads
        self._identity = {
            "seed": int(seed),
            "img_size": int(img_size),
            "crop_margin": int(crop_margin),
            "global_batch_size": int(global_batch_size),
            "process_index": int(process_index),
            "process_count": int(process_count),
            "sizes": [len(source.train_a), len(source.train_b)],
        }
        self._step = 0
        self._iterator = None

    def _domain(self, domain: int, split: SplitSource) -> grain.MapDataset:
        seed, host, hosts = (self._identity[k] for k in ("seed", "process_index", "process_count"))
        dataset = grain.MapDataset.source(_WithSkips(split))[host::hosts]
        # Seeds differ per domain (independent orders) and per host (no shared crops).
        shuffle_seed = derive_seed(seed, host, domain, 0)
        if len(dataset) >= SMALL_SPLIT:
            dataset = dataset.shuffle(seed=shuffle_seed)
        else:
            dataset = _SmallSplitShuffle(dataset, shuffle_seed)
        augment = functools.partial(
            _augment, img_size=self._identity["img_size"], crop_margin=self._identity["crop_margin"]
        )
        dataset = dataset.random_map(augment, seed=derive_seed(seed, host, domain, 1))
        return dataset.repeat()  # reseeds shuffle and augmentation every epoch

    def _dataset(self, start: int) -> grain.IterDataset:
        domains = [self._domain(i, split) for i, split in enumerate(self._splits.values())]
        # repeat() makes each domain sys.maxsize long; grain's batch() divides that length in floating point, which
        # rounds past sys.maxsize for batch size 1. Cutting the zipped stream at 2**62 pairs (exact in a float; more
        # than any run draws) keeps every index, so saved positions stay valid.
        zipped = grain.experimental.ZipMapDataset(domains)[:_ENDLESS]
        dataset = zipped.batch(self.local_batch_size, batch_fn=_collate)
        dataset = dataset[start:].to_iter_dataset(
            grain.ReadOptions(num_threads=self._num_threads, prefetch_buffer_size=max(2, self._num_threads))
        )
        if self._num_workers:
            _let_grain_read_unparsed_flags()
            dataset = dataset.mp_prefetch(grain.MultiprocessingOptions(num_workers=self._num_workers))
        return dataset

    @property
    def step(self) -> int:
        """Number of batches handed out so far."""
        return self._step

    @property
    def skipped(self) -> dict[str, str]:
        """Unreadable training files met so far (file -> reason), from all workers."""
        return {**self._splits["A"].skipped, **self._splits["B"].skipped}

    def __next__(self) -> dict[str, np.ndarray]:
        if self._iterator is None:
            self._iterator = iter(self._dataset(self._step))
        batch = next(self._iterator)
        self._step += 1
        for domain, split in self._splits.items():
            split.note_skipped(batch[f"skipped_{domain}"])
        return {"A": batch["A"], "B": batch["B"]}

    def get_state(self) -> dict:
        """JSON-serialisable position: the batch count plus what it must be replayed with."""
        return {"version": STATE_VERSION, "step": self._step, **self._identity, "sizes": list(self._identity["sizes"])}

    def set_state(self, state: dict) -> None:
        """Continues after the batch at which ``state`` was taken (worker count may differ)."""
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION or "step" not in state:
            raise DatasetError(f"not a training data state of version {STATE_VERSION}: {state!r}")
        state = {"crop_margin": CROP_MARGIN, **state}  # saved before crop_margin existed: the official margin
        different = {k: (state.get(k), self._identity[k]) for k in _IDENTITY if state.get(k) != self._identity[k]}
        if different:
            details = ", ".join(f"{k}: saved {saved!r} vs now {now!r}" for k, (saved, now) in different.items())
            if set(different) == {"sizes"}:  # same settings, other images: the data changed under the run
                raise DatasetError(
                    f"the training images are not the ones this run was saved with ({details} per domain): "
                    "the dataset changed since (emoji runs saved before the emoji set's format 3 meet this: "
                    "docs/demo.md, 'Runs saved on the v2 build'); resume with the images it was saved with, "
                    "or start a new --workdir"
                )
            raise DatasetError(
                f"the saved data position belongs to a different pipeline ({details}); "
                "restore with the same dataset, seed, image size, crop margin, batch size and host layout"
            )
        self.close()
        self._step = int(state["step"])

    def close(self) -> None:
        """Stops worker processes / threads; iteration can resume later from the same step."""
        if self._iterator is not None:
            close = getattr(self._iterator, "close", None)
            if close:
                close()
            self._iterator = None

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


# TrainIterator's options that a run config sets, and the config keys they come from.
CONFIG_OPTIONS = {
    "img_size": "img_size",
    "global_batch_size": "batch_size",
    "seed": "seed",
    "crop_margin": "crop_margin",
    "num_workers": "num_workers",
}


def config_options(config) -> dict:
    """TrainIterator's options as the config sets them: one reading for the trainer and the data benchmark, which
    times the pipeline a run would build."""
    return {option: config[key] for option, key in CONFIG_OPTIONS.items()}


def make_train_iterator(source: UnpairedSource, **options) -> TrainIterator:
    """This host's endless training batches of ``global_batch_size // process_count`` images per domain.

    ``options`` are ``TrainIterator``'s: ``img_size``, ``global_batch_size``, ``seed`` (required), ``crop_margin``,
    ``num_workers`` (> 0 decodes in that many grain worker processes, 0 in this process), ``num_threads``
    (decoding threads inside each), ``process_index`` / ``process_count`` (default: JAX's). Hosts read disjoint
    shards (every ``process_count``-th file from ``process_index``).
    """
    return TrainIterator(source, **options)


class TestBatches:
    """In-order test batches ``(uint8 (n, H, W, 3), keys)``; the last one may be short.

    Unreadable files are left out (not replaced: every key must be a real
    image), each warned about once; ``skipped`` lists them after iterating.
    """

    __test__ = False  # not a pytest test class, despite the name

    def __init__(self, split: SplitSource, *, img_size: int, batch_size: int):
        if batch_size <= 0 or img_size <= 0:
            raise DatasetError(f"batch_size and img_size must be positive, got {batch_size} and {img_size}")
        self.split = split
        self.img_size = img_size
        self.batch_size = batch_size
        self.skipped: list[str] = []

    def __iter__(self):
        self.skipped = []
        images, keys = [], []
        for index in range(len(self.split)):
            try:
                image = self.split.load(index)
            except Exception as error:  # noqa: BLE001 - any decoder failure means "unreadable"
                item = self.split.describe(index)
                self.skipped.append(item)
                self.split.note_skipped(((item, f"{type(error).__name__}: {error}"),))
                continue
            images.append(test_transform(image, self.img_size))
            keys.append(self.split.keys[index])
            if len(images) == self.batch_size:
                yield np.stack(images), keys
                images, keys = [], []
        if images:
            yield np.stack(images), keys
        if self.skipped:
            warnings.warn(
                f"{len(self.skipped)} unreadable image(s) left out of {self.split.location}",
                UnreadableImageWarning,
                stacklevel=2,
            )


def iterate_test(split_source: SplitSource, *, img_size: int, batch_size: int) -> TestBatches:
    """All of one split, unshuffled, resized to ``img_size``, with the key of every image."""
    return TestBatches(split_source, img_size=img_size, batch_size=batch_size)
