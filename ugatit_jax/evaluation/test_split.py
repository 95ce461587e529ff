"""Test mode, as the official ``--phase test``: every test image's 7-tile strip and an ``index.html``
(``python -m ugatit_jax.translate --test-split``; the strips and the page are ``test_strips``'s).

The command checks its flags; this module only reads the test split and writes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import ml_collections

from ugatit_jax.directions import DIRECTIONS, domains, label

if TYPE_CHECKING:
    from ugatit_jax.loading import Translator


def split_source(model: Translator, dataset_dir: str | None = None):
    """The test split of the run's dataset (its saved config; ``dataset_dir`` overrides its folder), or, for a model
    with no config (an official ``.pt``), the folder ``dataset_dir`` (``testA/``, ``testB/``)."""
    from ugatit_jax.data import get_source

    if model.config is None:
        config = ml_collections.ConfigDict({"dataset": "folder", "dataset_dir": dataset_dir})
    else:
        config = ml_collections.ConfigDict(model.config.to_dict())
        if dataset_dir:
            config.dataset_dir = dataset_dir
    return get_source(config)


def write_test_split(model: Translator, source, output: str, *, batch_size: int = 8, progress: bool = False) -> dict:
    """Strips ``A2B/<key>.png`` for testA and ``B2A/<key>.png`` for testB, plus ``index.html``; returns the page's
    path (``index``), the strips written per direction (``counts``) and the unreadable test images (``skipped``).

    One compiled program per direction, reused for every batch.
    """
    import jax
    from tqdm import tqdm

    from ugatit_jax.data import iterate_test
    from ugatit_jax.evaluation import test_strips
    from ugatit_jax.inference import padded_batches

    size = model.img_size
    batch = max(1, min(batch_size, max(len(source.test_a), len(source.test_b))))
    sections, skipped, counts = [], [], {}
    total = len(source.test_a) + len(source.test_b)
    bar = tqdm(total=total, unit="img", disable=None if progress else True, dynamic_ncols=True)
    for direction, split in zip(DIRECTIONS, (source.test_a, source.test_b)):
        from_domain, to_domain = domains(direction)
        heading = f"{label(direction, ' → ')} (test{from_domain} translated to domain {to_domain})"
        batches = iterate_test(split, img_size=size, batch_size=batch)
        images = []
        for real, keys in batches:
            arr, n = next(padded_batches(list(real), batch))
            outputs = jax.device_get(model.cycle(arr, direction))
            written = test_strips.save_strips(test_strips.column_strips(outputs, n), keys, output, direction)
            images += list(zip(written, keys))
            bar.update(n)
        skipped += batches.skipped
        counts[direction] = len(images)
        sections.append((direction, f"{heading}: {len(images)} image(s)", images))
    bar.close()
    notes = []
    if skipped:
        notes.append(f"{len(skipped)} unreadable test image(s) left out: {', '.join(skipped)}")
    index = test_strips.write_index(output, f"test split: {model.name}", sections, notes)
    return {"index": index, "counts": counts, "skipped": skipped}
