"""The grain training pipeline: determinism, restore, hosts, prefetch, and the test loader."""

import json
import os

import jax
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from PIL import Image

from ugatit_jax.data import (
    ArraySplit,
    DatasetError,
    UnpairedSource,
    iterate_test,
    make_train_iterator,
    prefetch_to_device,
    synthetic_source,
)

SIZE = 8  # output img_size; inputs are 10x10 so the resize is real


def _ids(count, offset):
    """Images whose every pixel is their id, so a batch shows which items it holds."""
    return [np.full((10, 10, 3), offset + i, np.uint8) for i in range(count)]


def _source(n_a=12, n_b=9):
    return UnpairedSource(
        name="ids",
        train_a=ArraySplit(_ids(n_a, 0), name="trainA"),
        train_b=ArraySplit(_ids(n_b, 100), name="trainB"),
        test_a=ArraySplit(_ids(5, 200), name="testA"),
        test_b=ArraySplit(_ids(5, 200), name="testB"),
    )


def _iterator(source, **overrides):
    kwargs = dict(img_size=SIZE, global_batch_size=4, seed=0, process_index=0, process_count=1)
    kwargs.update(overrides)
    return make_train_iterator(source, **kwargs)


def _take(iterator, count):
    return [next(iterator) for _ in range(count)]


def _item_ids(batches, domain):
    return [int(v) for batch in batches for v in batch[domain][:, 0, 0, 0]]


def _assert_same(first, second):
    assert len(first) == len(second)
    for x, y in zip(first, second, strict=True):
        np.testing.assert_array_equal(x["A"], y["A"])
        np.testing.assert_array_equal(x["B"], y["B"])


def test_batches_have_the_promised_layout():
    batch = next(_iterator(synthetic_source()))
    assert set(batch) == {"A", "B"}
    for domain in "AB":
        assert isinstance(batch[domain], np.ndarray)
        assert batch[domain].shape == (4, SIZE, SIZE, 3) and batch[domain].dtype == np.uint8


def test_same_seed_same_batches_other_seed_other_batches():
    source = synthetic_source(num_train=6)
    first = _take(_iterator(source, seed=3), 5)
    _assert_same(first, _take(_iterator(source, seed=3), 5))
    other = _take(_iterator(source, seed=4), 5)
    assert any(not np.array_equal(x["A"], y["A"]) for x, y in zip(first, other, strict=True))


def test_each_epoch_visits_every_image_once_in_a_new_order():
    source = _source(n_a=12, n_b=8)
    ids_a = _item_ids(_take(_iterator(source), 6), "A")  # 24 = two epochs of A
    ids_b = _item_ids(_take(_iterator(source), 6), "B")  # 24 = three epochs of B
    assert sorted(ids_a[:12]) == sorted(ids_a[12:]) == list(range(12))
    assert ids_a[:12] != ids_a[12:]
    assert all(sorted(ids_b[i : i + 8]) == list(range(100, 108)) for i in (0, 8, 16))


def test_batch_size_one_the_official_default_streams_and_restores():
    """Batch 1 once overflowed grain's length arithmetic on the endless stream (a traceback on the first step)."""
    source = _source(n_a=5, n_b=3)
    reference = _take(_iterator(source, global_batch_size=1), 11)
    assert sorted(_item_ids(reference[:5], "A")) == list(range(5))  # one epoch of A, one image per batch
    restored = _iterator(source, global_batch_size=1)
    restored.set_state(json.loads(json.dumps({**restored.get_state(), "step": 7})))
    _assert_same(_take(restored, 4), reference[7:])


def test_domains_are_shuffled_independently():
    twins = _ids(16, 0)
    source = UnpairedSource(
        name="twins",
        train_a=ArraySplit(twins, name="trainA"),
        train_b=ArraySplit(twins, name="trainB"),
        test_a=ArraySplit(twins[:1], name="testA"),
        test_b=ArraySplit(twins[:1], name="testB"),
    )
    batches = _take(_iterator(source), 4)
    assert _item_ids(batches, "A") != _item_ids(batches, "B")


def test_restore_continues_the_exact_sequence():
    source = _source()
    reference = _take(_iterator(source), 9)
    iterator = _iterator(source)
    _take(iterator, 4)
    state = json.loads(json.dumps(iterator.get_state()))  # must survive a JSON checkpoint
    assert state["step"] == 4
    _take(iterator, 2)
    restored = _iterator(source)
    restored.set_state(state)
    _assert_same(_take(restored, 5), reference[4:])
    iterator.set_state(state)  # rewinding a live iterator works too
    _assert_same(_take(iterator, 5), reference[4:])


def test_worker_processes_give_the_same_sequence_and_restore_across_worker_counts():
    source = _source()
    reference = _take(_iterator(source), 6)
    with _iterator(source, num_workers=2) as workers:
        _assert_same(_take(workers, 3), reference[:3])
        state = workers.get_state()
    with _iterator(source, num_workers=0) as restored:
        restored.set_state(state)
        _assert_same(_take(restored, 3), reference[3:])


def test_threads_give_the_same_sequence():
    source = _source()
    _assert_same(_take(_iterator(source, num_threads=3), 5), _take(_iterator(source), 5))


def test_restore_refuses_a_state_from_another_pipeline():
    state = _iterator(_source()).get_state()
    with pytest.raises(DatasetError, match="seed"):
        _iterator(_source(), seed=1).set_state(state)
    # Other images under the same settings (an emoji run saved on the v2 build): the message says the data changed.
    with pytest.raises(DatasetError, match=r"not the ones this run was saved with \(sizes: saved \[\d+, \d+\] vs now"):
        _iterator(_source(n_a=13)).set_state(state)
    with pytest.raises(DatasetError, match="different pipeline .*seed.*sizes"):
        _iterator(_source(n_a=13), seed=1).set_state(state)
    with pytest.raises(DatasetError, match="version"):
        _iterator(_source()).set_state({"step": 3})
    with pytest.raises(DatasetError, match="crop_margin"):
        _iterator(_source(), crop_margin=8).set_state(state)


def test_a_position_saved_before_crop_margin_existed_restores_with_the_official_margin():
    old = _iterator(_source()).get_state()
    del old["crop_margin"]
    _iterator(_source()).set_state(old)
    with pytest.raises(DatasetError, match="crop_margin"):
        _iterator(_source(), crop_margin=8).set_state(old)


def test_two_hosts_get_disjoint_halves_of_the_global_batch():
    source = _source(n_a=12, n_b=10)
    seen = []
    for host in range(2):
        iterator = _iterator(source, global_batch_size=6, process_index=host, process_count=2)
        batches = _take(iterator, 4)
        assert all(batch["A"].shape[0] == 3 and batch["B"].shape[0] == 3 for batch in batches)
        seen.append({d: set(_item_ids(batches, d)) for d in "AB"})
    assert not seen[0]["A"] & seen[1]["A"] and not seen[0]["B"] & seen[1]["B"]
    assert seen[0]["A"] | seen[1]["A"] == set(range(12))  # 4 x 3 = 12 draws per host cover its 6 items
    assert seen[0]["B"] | seen[1]["B"] == set(range(100, 110))


def test_bad_arguments_are_clear_errors():
    with pytest.raises(DatasetError, match="global_batch_size 5 .* hosts"):
        _iterator(_source(), global_batch_size=5, process_count=2)
    with pytest.raises(DatasetError, match="process_index"):
        _iterator(_source(), process_index=2, process_count=2)
    with pytest.raises(DatasetError, match="fewer than the 4 hosts"):
        _iterator(_source(n_b=3), process_count=4)


def test_prefetch_to_device_yields_global_arrays_and_the_consumed_state():
    mesh = Mesh(np.array(jax.devices()), ("data",))
    sharding = NamedSharding(mesh, PartitionSpec("data"))
    source = _source()
    reference = _take(_iterator(source, global_batch_size=jax.device_count() * 2), 7)

    prefetched = prefetch_to_device(_iterator(source, global_batch_size=jax.device_count() * 2), sharding, size=3)
    assert prefetched.get_state()["step"] == 0
    first = _take(prefetched, 2)
    assert isinstance(first[0]["A"], jax.Array) and first[0]["A"].sharding == sharding
    np.testing.assert_array_equal(np.asarray(first[1]["B"]), reference[1]["B"])
    state = prefetched.get_state()
    assert state["step"] == 2  # what was consumed, although 3 more batches are already read

    resumed = prefetch_to_device(_iterator(source, global_batch_size=jax.device_count() * 2), sharding)
    resumed.set_state(state)
    for batch, expected in zip(_take(resumed, 5), reference[2:], strict=True):
        np.testing.assert_array_equal(np.asarray(batch["A"]), expected["A"])
        np.testing.assert_array_equal(np.asarray(batch["B"]), expected["B"])


def test_iterate_test_keeps_order_names_and_the_short_last_batch():
    source = _source()
    batches = list(iterate_test(source.test_a, img_size=6, batch_size=2))
    assert [images.shape for images, _ in batches] == [(2, 6, 6, 3), (2, 6, 6, 3), (1, 6, 6, 3)]
    assert [keys for _, keys in batches] == [["0", "1"], ["2", "3"], ["4"]]
    assert [int(images[i, 0, 0, 0]) for images, _ in batches for i in range(len(images))] == [200, 201, 202, 203, 204]


def test_iterate_test_leaves_out_unreadable_files(tmp_path):
    from ugatit_jax.data import UnreadableImageWarning
    from ugatit_jax.data.folders import ImageFolder

    for i in range(3):
        Image.new("RGB", (5, 5), (i, i, i)).save(tmp_path / f"{i}.png")
    (tmp_path / "1b.png").write_bytes(b"broken")
    loader = iterate_test(ImageFolder(str(tmp_path)), img_size=4, batch_size=2)
    with pytest.warns(UnreadableImageWarning) as caught:
        batches = list(loader)
    messages = [str(w.message) for w in caught]
    assert len(messages) == 2 and "1b.png" in messages[0] and "1 unreadable image" in messages[1]
    assert [keys for _, keys in batches] == [["0", "1"], ["2"]]
    assert loader.skipped == [os.path.join(str(tmp_path), "1b.png")]
