"""TFDS datasets through tfds.data_source (no TensorFlow), mocked so nothing is downloaded."""

import subprocess
import sys
import types

import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds

from ugatit_jax.data import DatasetError, get_source, iterate_test, make_train_iterator
from ugatit_jax.data import tfds as tfds_backend

NAME = "cycle_gan/horse2zebra"


@pytest.fixture
def mocked():
    # USE_CODE generates random records from the feature spec, including
    # images of small random sizes, and works without TensorFlow.
    with tfds.testing.mock_data(num_examples=5, policy=tfds.testing.MockPolicy.USE_CODE):
        yield


def test_reading_never_imports_tensorflow():
    # A fresh interpreter, so nothing else in the test session can have imported it.
    script = (
        "import sys\n"
        "import tensorflow_datasets as tfds\n"
        "from ugatit_jax.data.tfds import tfds_source\n"
        "with tfds.testing.mock_data(num_examples=2, policy=tfds.testing.MockPolicy.USE_CODE):\n"
        f"    print(tfds_source({NAME!r}).train_b[1].shape[-1], 'tensorflow' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["3", "False"]


def test_reads_all_four_splits_as_rgb_uint8(mocked):
    source = tfds_backend.tfds_source(NAME)
    assert source.name == NAME and source.counts() == {"trainA": 5, "trainB": 5, "testA": 5, "testB": 5}
    assert source.keys("testB") == ["0", "1", "2", "3", "4"] and source.test_pairs == []
    shapes = set()
    for index in range(5):
        image = source.train_a[index]
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[-1] == 3
        shapes.add(image.shape)
    assert len(shapes) > 1  # the mock's random sizes really are exercised


def test_trains_and_evaluates_from_tiny_random_sized_images(mocked):
    config = ml_collections.ConfigDict(dict(dataset="tfds", dataset_dir="", tfds_name=NAME))
    source = get_source(config)
    iterator = make_train_iterator(source, img_size=16, global_batch_size=2, seed=0, process_index=0, process_count=1)
    for _ in range(4):
        batch = next(iterator)
        assert batch["A"].shape == batch["B"].shape == (2, 16, 16, 3)
    batches = list(iterate_test(source.test_a, img_size=12, batch_size=2))
    assert [images.shape[0] for images, _ in batches] == [2, 2, 1]
    assert [key for _, keys in batches for key in keys] == ["0", "1", "2", "3", "4"]


def test_unprepared_dataset_says_how_to_prepare_and_never_downloads(tmp_path):
    with pytest.raises(DatasetError) as error:
        tfds_backend.tfds_source(NAME, data_dir=str(tmp_path))
    message = str(error.value)
    assert "not prepared" in message and "never downloaded" in message
    assert "pip install 'ugatit-jax[tfds-prepare]'" in message
    assert f"tfds build {NAME} --file_format=array_record --data_dir={tmp_path}" in message
    assert list(tmp_path.rglob("*.array_record*")) == []


def test_tfrecord_preparation_is_explained(monkeypatch):
    prepared = types.SimpleNamespace(
        is_prepared=lambda: True,
        data_path="/data/cycle_gan/horse2zebra/3.0.0",
        info=types.SimpleNamespace(file_format="FileFormat.TFRECORD"),
    )
    monkeypatch.setattr(tfds, "builder", lambda *args, **kwargs: prepared)
    message = str(tfds_backend._explain(NAME, "trainA", None, NotImplementedError("tfrecord")))
    assert "ArrayRecord" in message and "--file_format=array_record" in message and "TFRECORD" in message


def test_unknown_or_missing_name_names_the_option():
    with pytest.raises(DatasetError, match=r"config.tfds_name='no_such_dataset_xyz' is not a TFDS dataset"):
        tfds_backend.tfds_source("no_such_dataset_xyz")
    with pytest.raises(DatasetError, match="config.tfds_name is empty"):
        get_source(ml_collections.ConfigDict(dict(dataset="tfds", dataset_dir="", tfds_name="")))


def test_wrong_image_feature_is_reported(mocked):
    with pytest.raises(DatasetError, match=r"no 'picture' feature .*'image'"):
        tfds_backend.tfds_source(NAME, image_key="picture")
