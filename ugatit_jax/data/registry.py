"""Choosing a dataset backend from the run config."""

from __future__ import annotations

from ugatit_jax.config import DATASETS  # the names config.dataset takes, checked with the other config keys
from ugatit_jax.data.errors import DatasetError
from ugatit_jax.data.source import UnpairedSource


def _option(config, name: str, default=None):
    value = getattr(config, name, default)
    return default if value is None else value


def get_source(config) -> UnpairedSource:
    """Opens the dataset named by ``config.dataset``.

    ``config.dataset_dir`` is the folder root for 'folder', the folder holding
    the emoji builds, one subfolder per limit and recipe, for 'emoji' ('' =
    default, see ``emoji.default_cache_dir``) and the TFDS
    data_dir for 'tfds' ('' = TFDS's default); ``config.tfds_name`` names the
    TFDS dataset. An optional ``config.emoji_limit`` (0 = all) builds a small
    emoji set, for tests; 'synthetic' is a tiny in-memory toy set for smoke tests.
    """
    dataset = _option(config, "dataset", "")
    dataset_dir = str(_option(config, "dataset_dir", "") or "")
    if dataset == "emoji":
        from ugatit_jax.data.emoji import emoji_source

        return emoji_source(dataset_dir or None, limit=int(_option(config, "emoji_limit", 0)) or None)
    if dataset == "folder":
        from ugatit_jax.data.folders import folder_source

        return folder_source(dataset_dir)
    if dataset == "tfds":
        from ugatit_jax.data.tfds import tfds_source

        return tfds_source(str(_option(config, "tfds_name", "")), data_dir=dataset_dir or None)
    if dataset == "synthetic":
        from ugatit_jax.data.synthetic import synthetic_source

        return synthetic_source()
    raise DatasetError(f"config.dataset={dataset!r} is not a known dataset; use one of {', '.join(DATASETS)}")
