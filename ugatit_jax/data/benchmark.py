"""Measures training-pipeline throughput (see ``synthetic.write_random_images`` for test folders).

Throughput is reported in images per second counting both domains (each
step yields ``batch_size`` A images and ``batch_size`` B images), after a
warm-up that absorbs worker start-up, which is reported separately.
"""

from __future__ import annotations

import time

from ugatit_jax.data.pipeline import config_options, make_train_iterator
from ugatit_jax.data.source import UnpairedSource


def benchmark(source: UnpairedSource, config, *, num_threads: int = 0, steps: int, warmup: int = 3) -> dict[str, float]:
    """Times ``steps`` batches after ``warmup`` batches of the pipeline ``config`` sets (``config_options``) on one
    host; returns the measurements."""
    start = time.perf_counter()
    options = config_options(config) | dict(num_threads=num_threads, process_index=0, process_count=1)
    with make_train_iterator(source, **options) as iterator:
        for _ in range(warmup):
            next(iterator)
        warm = time.perf_counter()
        for _ in range(steps):
            next(iterator)
        end = time.perf_counter()
    seconds = end - warm
    return {
        "startup_s": warm - start,
        "seconds": seconds,
        "steps": steps,
        "batches_per_s": steps / seconds,
        "images_per_s": 2 * config.batch_size * steps / seconds,
    }
