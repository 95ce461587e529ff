"""Datasets, augmentation and the input pipeline (host side, uint8 NHWC)."""

from ugatit_jax.data.errors import DatasetError, UnreadableImageWarning
from ugatit_jax.data.pipeline import TrainIterator, config_options, iterate_test, make_train_iterator
from ugatit_jax.data.prefetch import prefetch_to_device
from ugatit_jax.data.registry import DATASETS, get_source
from ugatit_jax.data.source import SPLITS, SplitSource, UnpairedSource
from ugatit_jax.data.synthetic import ArraySplit, synthetic_source
from ugatit_jax.data.transforms import test_transform, to_model_range, to_uint8, train_transform

__all__ = [
    "ArraySplit",
    "DATASETS",
    "SPLITS",
    "DatasetError",
    "SplitSource",
    "TrainIterator",
    "UnpairedSource",
    "UnreadableImageWarning",
    "config_options",
    "get_source",
    "iterate_test",
    "make_train_iterator",
    "prefetch_to_device",
    "synthetic_source",
    "test_transform",
    "to_model_range",
    "to_uint8",
    "train_transform",
]
