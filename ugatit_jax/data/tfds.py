"""TFDS datasets (e.g. ``cycle_gan/horse2zebra``) read through ``tfds.data_source``.

``data_source`` reads prepared ArrayRecord files with random access and needs
no TensorFlow; only *preparing* a dataset (download + convert) does, which is
the optional ``tfds-prepare`` extra. Nothing here ever downloads: a dataset
that is not prepared is an error that says how to prepare it.
"""

from __future__ import annotations

import numpy as np

from ugatit_jax.data.errors import DatasetError
from ugatit_jax.data.images import array_to_rgb
from ugatit_jax.data.source import SPLITS, SplitSource, UnpairedSource


class TfdsSplit(SplitSource):
    """One TFDS split; item keys are the record indices as strings."""

    def __init__(self, data_source, *, dataset: str, split: str, image_key: str = "image"):
        self.source = data_source
        self.name = split
        self.location = f"tfds:{dataset}[{split}]"
        self.image_key = image_key
        self.keys = [str(i) for i in range(len(data_source))]
        if self.keys:
            record = data_source[0]
            if image_key not in record:
                raise DatasetError(
                    f"{self.location} records have no {image_key!r} feature (they have {sorted(record)}); "
                    "pass the name of the image feature as image_key"
                )

    def load(self, index: int) -> np.ndarray:
        return array_to_rgb(self.source[index][self.image_key])


def _prepare_hint(name: str, data_dir: str | None) -> str:
    target = f" --data_dir={data_dir}" if data_dir else ""
    return (
        f"prepare it once (this needs TensorFlow and network access): "
        f"pip install 'ugatit-jax[tfds-prepare]' && tfds build {name} --file_format=array_record{target}"
    )


def _explain(name: str, split: str, data_dir: str | None, error: Exception) -> DatasetError:
    """Turns TFDS's failure into a message that says what to do."""
    import tensorflow_datasets as tfds

    if isinstance(error, tfds.core.registered.DatasetNotFoundError):
        first_line = str(error).splitlines()[0]
        return DatasetError(f"config.tfds_name={name!r} is not a TFDS dataset ({first_line}); check the name")
    try:
        builder = tfds.builder(name, data_dir=data_dir)
        prepared = builder.is_prepared()
        where = str(builder.data_path)
        file_format = str(getattr(builder.info, "file_format", "")) if prepared else ""
    except Exception:  # noqa: BLE001 - fall back to TFDS's own message below
        prepared, where, file_format = None, data_dir or "the TFDS data dir", ""
    if prepared is False:
        return DatasetError(
            f"TFDS dataset {name} is not prepared under {where}, and it is never downloaded at run time; "
            + _prepare_hint(name, data_dir)
        )
    if prepared and "array_record" not in file_format.lower():
        return DatasetError(
            f"TFDS dataset {name} at {where} is stored as {file_format or 'an unknown format'}, but reading without "
            f"TensorFlow needs ArrayRecord files; rebuild it with --file_format=array_record --overwrite: "
            + _prepare_hint(name, data_dir)
        )
    return DatasetError(f"cannot open split {split!r} of TFDS dataset {name}: {type(error).__name__}: {error}")


def tfds_source(name: str, *, data_dir: str | None = None, image_key: str = "image") -> UnpairedSource:
    """Opens the trainA / trainB / testA / testB splits of a prepared TFDS dataset."""
    if not name:
        raise DatasetError("config.tfds_name is empty; set it to a TFDS dataset name such as 'cycle_gan/horse2zebra'")
    import tensorflow_datasets as tfds

    data_dir = data_dir or None
    splits = {}
    for split in SPLITS:
        try:
            source = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
        except Exception as error:  # noqa: BLE001 - re-raised with advice
            raise _explain(name, split, data_dir, error) from error
        splits[split] = TfdsSplit(source, dataset=name, split=split, image_key=image_key)
        if not len(splits[split]):
            raise DatasetError(f"split {split!r} of TFDS dataset {name} is empty; the dataset cannot be trained on")
    return UnpairedSource(
        name=name,
        train_a=splits["trainA"],
        train_b=splits["trainB"],
        test_a=splits["testA"],
        test_b=splits["testB"],
    )
