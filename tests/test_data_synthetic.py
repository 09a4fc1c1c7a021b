"""Synthetic tasks: determinism, splits, cheap labels, balance, oracle accuracy, scale, errors."""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from seqtrain.data.synthetic import (DEFAULT_SIZES, TASKS, MotifTask, OrderTask, SpectralTask,
                                     SyntheticTask, make_task, task_options)

NAMES = sorted(TASKS)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _digest(example: dict) -> str:
  """Hash of one example's bytes (series and label)."""
  h = hashlib.sha256(example["series"].tobytes())
  h.update(np.asarray(example["label"]).tobytes())
  return h.hexdigest()


def test_registry():
  assert {"motif", "spectral", "order"} <= set(TASKS)
  for name, cls in TASKS.items():
    assert issubclass(cls, SyntheticTask) and cls.name == name and cls.__doc__


@pytest.mark.parametrize("name", NAMES)
def test_protocol_shapes_and_defaults(name):
  task = make_task(name, split="train", length=300, channels=2)
  assert task.name == name and len(task) == DEFAULT_SIZES["train"] == 1024
  assert task.num_channels == 2 and len(task.class_names) == task.num_classes >= 2
  assert len(set(task.class_names)) == task.num_classes
  ex = task[5]
  assert set(ex) == {"series", "label"}
  assert ex["series"].shape == (300, 2) and ex["series"].dtype == np.float32
  assert isinstance(ex["label"], np.int32) and 0 <= ex["label"] < task.num_classes
  assert task.lengths.dtype == np.int64 and task.lengths.shape == (1024,)
  assert np.all(task.lengths == 300)
  assert task.labels.dtype == np.int32 and task.labels.shape == (1024,)
  assert len(make_task(name, split="validation", length=300)) == 256
  assert len(make_task(name, split="test", length=300, size=7)) == 7


@pytest.mark.parametrize("name", NAMES)
def test_determinism_across_order_and_objects(name):
  a = make_task(name, split="train", length=512, size=20, seed=3)
  b = make_task(name, split="train", length=512, size=20, seed=3)
  forward = [_digest(a[i]) for i in range(20)]
  backward = [_digest(b[i]) for i in reversed(range(20))][::-1]
  assert forward == backward
  assert _digest(a[-1]) == forward[19] and _digest(a[-20]) == forward[0]
  assert len(set(forward)) == 20  # examples differ from one another
  # A different seed changes the examples.
  c = make_task(name, split="train", length=512, size=20, seed=4)
  assert sum(_digest(c[i]) == forward[i] for i in range(20)) == 0
  # Size does not change example i (examples are indexed, not drawn in sequence).
  d = make_task(name, split="train", length=512, size=1000, seed=3)
  assert [_digest(d[i]) for i in range(20)] == forward
  np.testing.assert_array_equal(d.labels[:20], a.labels)


def test_determinism_across_processes():
  """Another interpreter (different hash seed) reproduces the same bytes."""
  code = ("from seqtrain.data.synthetic import make_task; import hashlib\n"
          "for n in ('motif', 'spectral', 'order'):\n"
          "  e = make_task(n, split='test', length=257, seed=11, channels=2)[9]\n"
          "  print(hashlib.sha256(e['series'].tobytes()).hexdigest(), int(e['label']))\n")
  env = dict(os.environ, PYTHONHASHSEED="12345", PYTHONPATH=ROOT)
  out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       check=True, timeout=60).stdout.split()
  here = []
  for n in ("motif", "spectral", "order"):
    e = make_task(n, split="test", length=257, seed=11, channels=2)[9]
    here += [hashlib.sha256(e["series"].tobytes()).hexdigest(), str(int(e["label"]))]
  assert out == here


@pytest.mark.parametrize("name", NAMES)
def test_splits_differ(name):
  tasks = {s: make_task(name, split=s, length=256, size=32) for s in ("train", "validation", "test")}
  digests = {s: {_digest(t[i]) for i in range(32)} for s, t in tasks.items()}
  assert not digests["train"] & digests["validation"]
  assert not digests["train"] & digests["test"]
  assert not digests["validation"] & digests["test"]
  labels = {s: t.labels for s, t in tasks.items()}
  assert not np.array_equal(labels["train"], labels["test"])
  assert not np.array_equal(labels["validation"], labels["test"])


@pytest.mark.parametrize("name", NAMES)
def test_labels_property_matches_examples(name):
  task = make_task(name, split="validation", length=128, size=64, seed=1)
  np.testing.assert_array_equal(task.labels, [task[i]["label"] for i in range(64)])
  np.testing.assert_array_equal(task.lengths, [len(task[i]["series"]) for i in range(64)])


def test_labels_do_not_generate_series(monkeypatch):
  task = make_task("motif", split="train", length=10**6, size=10**5)

  def boom(*args, **kwargs):
    raise AssertionError("series generated")

  monkeypatch.setattr(MotifTask, "_signal", boom)
  monkeypatch.setattr(SyntheticTask, "_rng", boom)
  t0 = time.perf_counter()
  labels, lengths = task.labels, task.lengths
  assert time.perf_counter() - t0 < 1.0  # vectorised: ~1 ms for 10^5 labels
  assert labels.shape == lengths.shape == (10**5,)
  with pytest.raises(AssertionError, match="series generated"):
    task[0]  # the patch is effective


def test_pickle_roundtrip():
  """Tasks travel to data-loader worker processes."""
  import pickle
  for name in NAMES:
    task = make_task(name, split="train", length=128, size=4, seed=2)
    task[0]  # populate cached motifs
    clone = pickle.loads(pickle.dumps(task))
    assert clone == task and _digest(clone[3]) == _digest(task[3])


@pytest.mark.parametrize("name,classes", [("motif", 4), ("spectral", 4), ("spectral", 7),
                                          ("order", 2)])
def test_class_balance(name, classes):
  options = {} if name == "order" else {"num_classes": classes}
  task = make_task(name, split="train", length=256, size=1024, **options)
  counts = np.bincount(task.labels, minlength=classes)
  assert len(counts) == classes
  expected = 1024 / classes
  # ~4.5 binomial standard deviations: fails only for a broken label stream.
  assert np.all(np.abs(counts - expected) < 4.5 * np.sqrt(expected)), counts
  # Labels are not in a trivial pattern (e.g. i % K).
  assert not np.array_equal(task.labels, np.arange(1024) % classes)


@pytest.mark.parametrize("name", NAMES)
def test_oracle_accuracy(name):
  task = make_task(name, split="test", length=4096, size=64, seed=0)
  correct = [task.oracle(task[i]["series"]) == task[i]["label"] for i in range(64)]
  assert np.mean(correct) >= 0.98


@pytest.mark.parametrize("name,options", [("motif", {"amplitude": 0.0}),
                                          ("spectral", {"snr": 0.0}),
                                          ("order", {"amplitude": 0.0})])
def test_oracle_at_chance_without_signal(name, options):
  """Pure noise: the oracle can only guess, so the labels are not leaking."""
  task = make_task(name, split="test", length=512, size=64, **options)
  acc = np.mean([task.oracle(task[i]["series"]) == task[i]["label"] for i in range(64)])
  assert acc < 0.8


def test_motif_is_where_example_info_says():
  task = make_task("motif", split="train", length=2048, size=256, amplitude=3.0, channels=2)
  m = task.motifs
  assert m.shape == (4, 32, 2)
  gram = np.einsum("kjc,ljc->kl", m.astype(np.float64), m.astype(np.float64))
  np.testing.assert_allclose(gram, np.eye(4) * 9.0 * 64, rtol=1e-5, atol=1e-3)  # orthogonal
  positions = []
  for i in range(256):
    info = task.example_info(i)
    positions.append(info["position"])
    if i < 16:
      ex = task[i]
      assert info["label"] == ex["label"] and info["length"] == 2048
      x = ex["series"].astype(np.float64)
      corr = sum(np.correlate(x[:, c], m[info["label"], :, c], "valid") for c in range(2))
      assert int(np.argmax(corr)) == info["position"]
  positions = np.array(positions)
  last = 2048 - 32
  assert positions.min() >= 0 and positions.max() <= last
  assert np.sum(positions < last / 4) >= 32 and np.sum(positions > 3 * last / 4) >= 32
  assert positions.min() < last / 20 and positions.max() > last * 19 / 20


def test_motifs_shared_across_splits_and_fixed_by_seed():
  a = make_task("motif", split="train", length=64).motifs
  np.testing.assert_array_equal(a, make_task("motif", split="test", length=64).motifs)
  assert not np.allclose(a, make_task("motif", split="train", length=64, seed=1).motifs)


def test_order_positions_and_labels():
  task = make_task("order", split="train", length=200, size=400, motif_length=16)
  gaps = []
  for i in range(400):
    p1, p2 = task.example_info(i)["positions"]
    assert 0 <= p1 and p1 + 16 <= p2 and p2 <= 200 - 16
    gaps.append(p2 - p1)
  assert min(gaps) < 20  # near-adjacent pairs occur
  assert max(gaps) > 150
  ex, info = task[0], task.example_info(0)
  first = task.motifs[0] if info["label"] == 0 else task.motifs[1]
  p1 = info["positions"][0]
  noise = ex["series"][p1:p1 + 16] - first
  assert np.std(noise) < 2.0  # the first motif sits at p1


def test_spectral_frequencies():
  task = make_task("spectral", split="train", length=1024)
  f = task.frequencies
  np.testing.assert_allclose(f, [1 / 64, 16 ** (1 / 3) / 64, 16 ** (2 / 3) / 64, 1 / 4])
  assert np.all(np.diff(np.log(f)) > 0.9) and f.max() < 0.5
  assert task.class_names[0] == "f=0.01562"
  # High SNR, one example: the periodogram peak is the labelled frequency.
  loud = make_task("spectral", split="train", length=1024, size=8, snr=1.0, num_classes=6)
  for i in range(8):
    ex = loud[i]
    power = np.abs(np.fft.rfft(ex["series"][:, 0])) ** 2
    peak = np.argmax(power[1:]) + 1
    assert abs(peak / 1024 - loud.frequencies[ex["label"]]) < 2 / 1024


def test_variable_lengths():
  task = make_task("motif", split="train", length=500, min_length=100, size=300)
  lengths = task.lengths
  assert lengths.min() >= 100 and lengths.max() <= 500 and len(np.unique(lengths)) > 100
  for i in (0, 7, 299):
    assert task[i]["series"].shape == (lengths[i], 1)
    assert task.example_info(i)["position"] <= lengths[i] - 32


@pytest.mark.parametrize("name", NAMES)
def test_million_steps(name):
  task = make_task(name, split="train", length=1_000_000, size=4)
  task[0]
  t0 = time.perf_counter()
  ex = task[1]
  elapsed = time.perf_counter() - t0
  x = ex["series"]
  assert x.shape == (1_000_000, 1) and x.dtype == np.float32
  assert np.all(np.isfinite(x)) and 0 <= ex["label"] < task.num_classes
  assert 0.9 < float(np.std(x)) < 1.5
  assert elapsed < 1.0, f"{elapsed:.3f} s for one example (target ~0.1 s)"


def test_indexing():
  task = make_task("motif", split="test", length=64, size=5)
  assert _digest(task[np.int64(2)]) == _digest(task[2]) == _digest(task[-3])
  for bad in (5, -6, 100):
    with pytest.raises(IndexError):
      task[bad]
  with pytest.raises(TypeError):
    task[1.0]
  assert list(iter_examples(task)) == [_digest(task[i]) for i in range(5)]


def iter_examples(task):
  """Plain ``for ex in task`` (sequence protocol via __getitem__/IndexError)."""
  for ex in task:
    yield _digest(ex)


@pytest.mark.parametrize("kwargs,match", [
    (dict(name="nope"), r"unknown synthetic task 'nope'; known tasks: motif, order, spectral"),
    (dict(split="val"), r"split must be one of .*'val'"),
    (dict(length=0), r"length must be >= 1, got 0"),
    (dict(length=-5), r"length must be >= 1, got -5"),
    (dict(length=10.0), r"length must be an integer >= 1, got 10.0"),
    (dict(size=0), r"size must be >= 1, got 0"),
    (dict(size=True), r"size must be an integer"),
    (dict(seed=-1), r"seed must be >= 0, got -1"),
    (dict(num_classes=1), r"num_classes must be >= 2, got 1"),
    (dict(channels=0), r"channels must be >= 1, got 0"),
    (dict(length=16), r"motif_length=32 exceeds length=16"),
    (dict(motif_length=0), r"motif_length must be >= 1, got 0"),
    (dict(length=100, min_length=20), r"motif_length=32 exceeds min_length=20"),
    (dict(min_length=500), r"min_length=500 exceeds length=100"),
    (dict(amplitude=-1.0), r"amplitude must be a finite number >= 0.0, got -1.0"),
    (dict(amplitude=float("nan")), r"amplitude must be a finite number"),
    (dict(motif_length=2, num_classes=3), r"num_classes=3 exceeds motif_length \* channels = 2"),
    (dict(colour="red"), r"unknown option\(s\) colour for task 'motif'; options: .*amplitude"),
    (dict(name="spectral", snr=-0.1), r"snr must be a finite number >= 0.0, got -0.1"),
    (dict(name="spectral", max_frequency=0.5), r"max_frequency"),
    (dict(name="spectral", min_frequency=0.3, max_frequency=0.2), r"min_frequency=0.3"),
    (dict(name="order", num_classes=3), r"num_classes must be 2 for the order task, got 3"),
    (dict(name="order", length=40), r"2 \* motif_length = 64 \(motif_length=32\) exceeds length=40"),
])
def test_errors(kwargs, match):
  args = dict(name="motif", split="train", length=100) | kwargs
  with pytest.raises(ValueError, match=match):
    make_task(args.pop("name"), **args)


def test_oracle_rejects_wrong_shape_and_accepts_1d():
  task = make_task("spectral", split="train", length=256, size=2)
  x = task[0]["series"]
  assert task.oracle(x[:, 0]) == task.oracle(x)
  with pytest.raises(ValueError, match=r"shape \(T, 1\)"):
    task.oracle(np.zeros((256, 3), np.float32))


def test_task_options_and_direct_construction():
  assert task_options("motif") == {"num_classes": 4, "channels": 1, "min_length": None,
                                   "motif_length": 32, "amplitude": 2.0}
  assert task_options("order")["num_classes"] == 2
  assert set(task_options("spectral")) >= {"snr", "min_frequency", "max_frequency"}
  direct = SpectralTask(split="train", length=256, size=3)
  assert [_digest(direct[i]) for i in range(3)] == \
      [_digest(make_task("spectral", split="train", length=256, size=3)[i]) for i in range(3)]
  assert OrderTask(split="test", length=64).num_classes == 2


def test_too_short_names_the_length_that_is():
  """TooShortError says which option made a series too short (the trainer turns the
  min_length case into a one-line config error)."""
  from seqtrain.data.synthetic import TooShortError
  with pytest.raises(TooShortError, match="motif_length=32 exceeds length=20") as e:
    make_task("motif", split="train", length=20)
  assert e.value.field == "length"
  with pytest.raises(TooShortError, match=r"2 \* motif_length = 64 .* exceeds min_length=50") as e:
    make_task("order", split="train", length=200, min_length=50)
  assert e.value.field == "min_length"
  assert make_task("order", split="train", length=200, min_length=64).min_length == 64
