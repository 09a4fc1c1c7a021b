"""grain pipelines: sharding, seeded order, padding, normalisation, resumable state."""
import itertools

import numpy as np
import pytest

from seqtrain.data import pipeline, sources
from seqtrain.data.pipeline import Normalizer, ShardInfo, eval_dataset, train_dataset
from seqtrain.data.ts import SeriesDataset


def _toy(n=37, channels=2, seed=0, variable=True):
  rng = np.random.default_rng(seed)
  lengths = rng.integers(3, 20, n) if variable else np.full(n, 12)
  series = [rng.normal(size=(int(t), channels)).astype(np.float32) + np.arange(channels)
            for t in lengths]
  return SeriesDataset(series, rng.integers(0, 3, n), ("a", "b", "c"), "toy")


def _take(ds, k, state=None):
  it = iter(ds)
  if state is not None:
    it.set_state(state)
  return [next(it) for _ in range(k)], it


def test_two_processes_equal_one_process_global_batches():
  data = _toy()
  kw = dict(global_batch_size=8, seed=5, num_epochs=3)
  single, _ = _take(train_dataset(data, **kw), 12)
  shards = [_take(train_dataset(data, shard=ShardInfo(p, 2), **kw), 12)[0] for p in range(2)]
  for step, batch in enumerate(single):
    host0, host1 = shards[0][step], shards[1][step]
    assert host0["inputs"].shape == host1["inputs"].shape  # same padded length on both hosts
    for key in batch:
      np.testing.assert_array_equal(np.concatenate([host0[key], host1[key]]), batch[key])
  # within an epoch (first 4 steps = 32 of 37 examples) the shards are disjoint
  seen = [np.concatenate([b["index"] for b in shards[p][:4]]) for p in range(2)]
  assert not set(seen[0]) & set(seen[1])
  assert len(set(seen[0]) | set(seen[1])) == 32


def test_epoch_covers_split_and_reshuffles():
  data = _toy(n=32)
  batches, _ = _take(train_dataset(data, global_batch_size=8, seed=1), 8)
  first = np.concatenate([b["index"] for b in batches[:4]])
  second = np.concatenate([b["index"] for b in batches[4:]])
  assert sorted(first) == list(range(32)) and sorted(second) == list(range(32))
  assert not np.array_equal(first, second)
  other, _ = _take(train_dataset(data, global_batch_size=8, seed=2), 4)
  assert not np.array_equal(first, np.concatenate([b["index"] for b in other]))


def test_restore_mid_epoch_gives_same_batches():
  data = _toy()
  ds = train_dataset(data, global_batch_size=6, seed=3, shard=ShardInfo(1, 2))
  reference, _ = _take(ds, 15)
  _, it = _take(ds, 7)
  state = it.get_state()
  resumed, _ = _take(train_dataset(data, global_batch_size=6, seed=3, shard=ShardInfo(1, 2)), 8,
                     state)
  for a, b in zip(reference[7:], resumed):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])


def test_padding_lengths_and_normalisation():
  data = _toy()
  norm = Normalizer.fit(data)
  all_steps = np.concatenate(data.series)
  np.testing.assert_allclose(norm.mean, all_steps.mean(0), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(norm.std, all_steps.std(0), rtol=1e-5)
  batch = next(iter(train_dataset(data, global_batch_size=4, seed=0, normalizer=norm)))
  assert batch["inputs"].shape == (4, int(data.lengths.max()), 2)
  for row in range(4):
    i, n = batch["index"][row], batch["lengths"][row]
    assert n == data.lengths[i] and batch["labels"][row] == data.labels[i]
    np.testing.assert_allclose(batch["inputs"][row, :n], norm(data.series[i]), rtol=1e-6, atol=1e-6)
    assert not batch["inputs"][row, n:].any()


def test_missing_values_become_zero_after_normalising():
  x = np.array([[1.0], [np.nan], [3.0]], np.float32)
  data = SeriesDataset([x, x + 1], [0, 1], ("a", "b"))
  norm = Normalizer.fit(data)
  assert norm.mean[0] == pytest.approx(2.5)
  assert norm(x)[1, 0] == 0.0 and np.isfinite(norm(x)).all()


def test_bucketing_pads_to_boundaries_and_groups_lengths():
  data = _toy(n=64)
  ds = train_dataset(data, global_batch_size=8, seed=0, bucket_boundaries=(8, 12, 16),
                     bucket_window=4, shard=ShardInfo(0, 2))
  batches, _ = _take(ds, 8)
  for b in batches:
    assert b["inputs"].shape[1] in (8, 12, 16, int(data.lengths.max()))
  spread = np.mean([np.ptp(data.lengths[b["index"]]) for b in batches])
  plain, _ = _take(train_dataset(data, global_batch_size=8, seed=0, shard=ShardInfo(0, 2)), 8)
  assert spread < np.mean([np.ptp(data.lengths[b["index"]]) for b in plain])


@pytest.mark.parametrize("processes", [1, 2, 4])
def test_eval_counts_every_example_once(processes):
  data = _toy(n=37)
  rows = []
  for p in range(processes):
    host = list(eval_dataset(data, global_batch_size=8, shard=ShardInfo(p, processes)))
    assert len(host) == pipeline.num_eval_batches(37, 8) == 5
    rows.append(host)
  index = np.concatenate([b["index"] for host in rows for b in host])
  mask = np.concatenate([b["mask"] for host in rows for b in host])
  assert sorted(index[mask > 0]) == list(range(37)) and np.all(index[mask == 0] == -1)
  assert mask.sum() == 37


def test_errors():
  data = _toy()
  with pytest.raises(ValueError, match="not a positive multiple of the process count 2"):
    train_dataset(data, global_batch_size=5, seed=0, shard=ShardInfo(0, 2))
  with pytest.raises(ValueError, match="process index 2 outside"):
    ShardInfo(2, 2)
  with pytest.raises(ValueError, match="hold no full global batch"):
    train_dataset(_toy(n=3), global_batch_size=8, seed=0, num_epochs=1)
  with pytest.raises(ValueError, match="3 channels"):
    Normalizer.fit(data)(np.zeros((4, 3), np.float32))


def test_japanese_vowels_end_to_end():
  s = sources.load_splits("JapaneseVowels", seed=0)
  norm = Normalizer.fit(s.train)
  batches = list(itertools.islice(train_dataset(s.train, global_batch_size=16, seed=0,
                                                normalizer=norm), 3))
  assert all(b["inputs"].shape == (16, 26, 12) for b in batches)
  test = list(eval_dataset(s.test, global_batch_size=64, normalizer=norm))
  assert sum(int(b["mask"].sum()) for b in test) == 370


def test_normalizer_statistics_survive_a_large_offset():
  """Per-series moments combined pairwise: a channel at 1e6 +- 1 keeps std 1 (the sum of
  squares minus the squared mean cancels to 0 or garbage there)."""
  rng = np.random.default_rng(0)
  series = [np.stack([1e6 + rng.normal(size=200), rng.normal(size=200) * 3.0], -1)
            for _ in range(20)]
  source = [{"series": s.astype(np.float64)} for s in series]
  norm = Normalizer.fit(source)
  ref = np.concatenate(series)
  np.testing.assert_allclose(norm.mean, ref.mean(0), rtol=1e-12)
  np.testing.assert_allclose(norm.std, ref.std(0), rtol=1e-6)
