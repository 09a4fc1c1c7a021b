"""Synthetic long-sequence classification tasks with known answers.

Every task is a *source*: an object with ``name``, ``num_channels``,
``num_classes``, ``class_names``, ``len(task)``, ``task[i] -> {"series": (T, C)
float32, "label": int32 scalar}`` and the cheap ``lengths`` / ``labels``
properties. Examples are generated on demand (random access, nothing is
materialised), so a split may hold sequences of 10^6 steps.

Determinism. Example ``i`` of (task, split, seed, options) is a pure function of
those values: it is the same whichever order examples are read in and in any
process. Each example draws from independent streams keyed by
(task name, seed, split, i, stream):

* label and length: a counter-based hash (splitmix64), vectorised, so
  ``labels`` and ``lengths`` never touch the series generator;
* nuisance parameters (motif positions, phases): a small ``np.random.Generator``;
* noise: its own ``np.random.Generator``, so changing an option such as
  ``amplitude`` changes the signal but not the noise.

Splits ("train", "validation", "test") are different streams, hence different
examples; fixed per-task structure (motif shapes) depends on ``seed`` only and
is shared by all splits. Labels are uniform over the classes (balanced in
expectation). Noise is i.i.d. standard normal in every task.

Known answers: each task has ``oracle(series) -> int``, the Bayes (or
generalised-likelihood) classifier for its generative model, which reaches
near 100% accuracy with default options; it proves the labels are right and
gives the reference accuracy for a given signal-to-noise setting.

Tasks (``TASKS``; build one with ``make_task``):

* ``motif``: which of K fixed motifs was added at a uniformly random position
  (memory over the whole sequence).
* ``spectral``: which of K known frequencies is hidden in the noise.
* ``order``: which of two motifs occurs first (order memory, 2 classes).
"""
from __future__ import annotations

import dataclasses
import functools
import math
import operator
import zlib
from typing import Any, ClassVar

import numpy as np

SPLITS: dict[str, int] = {"train": 0, "validation": 1, "test": 2}
DEFAULT_SIZES: dict[str, int] = {"train": 1024, "validation": 256, "test": 256}

# Stream ids: distinct values keep the per-example streams independent.
_LABEL, _LENGTH, _NUISANCE, _NOISE, _STRUCTURE = range(5)


# ---------------------------------------------------------------- validation


class TooShortError(ValueError):
  """A series length too short for the task's pattern; ``field`` is the option that
  set it ("length", or "min_length" for the shortest of varying lengths)."""

  def __init__(self, message: str, field: str):
    super().__init__(message)
    self.field = field


def _check_int(option: str, value: Any, minimum: int) -> int:
  """Return ``value`` as an int, or raise ValueError naming ``option``."""
  if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
    raise ValueError(f"{option} must be an integer >= {minimum}, got {value!r}")
  if value < minimum:
    raise ValueError(f"{option} must be >= {minimum}, got {value!r}")
  return int(value)


def _check_float(option: str, value: Any, minimum: float = 0.0) -> float:
  """Return ``value`` as a finite float >= ``minimum``, or raise ValueError."""
  try:
    out = float(value)
  except (TypeError, ValueError):
    raise ValueError(f"{option} must be a number >= {minimum}, got {value!r}") from None
  if isinstance(value, (bool, np.bool_)) or not math.isfinite(out) or out < minimum:
    raise ValueError(f"{option} must be a finite number >= {minimum}, got {value!r}")
  return out


# ---------------------------------------------------------------- hashing


def _splitmix64(x: np.ndarray) -> np.ndarray:
  """splitmix64 finaliser on a uint64 array (wrapping arithmetic)."""
  x = x + np.uint64(0x9E3779B97F4A7C15)
  x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
  x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
  return x ^ (x >> np.uint64(31))


def _hash_uniform_int(key: int, index: np.ndarray, n: int) -> np.ndarray:
  """Uniform integers in [0, n) as a pure function of (key, index), vectorised."""
  h = _splitmix64(np.uint64(key) ^ _splitmix64(np.asarray(index, np.uint64).reshape(-1)))
  # Lemire's multiply-shift on the top 32 bits: bias < n / 2**32.
  return ((h >> np.uint64(32)) * np.uint64(n)) >> np.uint64(32)


def _correlate(series: np.ndarray, motif: np.ndarray) -> np.ndarray:
  """c[p] = sum_{j, c} series[p + j, c] * motif[j, c] for p in [0, T - L], float64."""
  out = np.zeros(series.shape[0] - motif.shape[0] + 1, np.float64)
  for c in range(series.shape[1]):
    out += np.correlate(series[:, c].astype(np.float64), motif[:, c].astype(np.float64), "valid")
  return out


def _logsumexp(x: np.ndarray) -> float:
  """log(sum(exp(x))) for a 1-D array, stable."""
  m = float(np.max(x))
  return m + math.log(float(np.sum(np.exp(x - m))))


def _log_i0(z: np.ndarray) -> np.ndarray:
  """log of the modified Bessel function I_0, stable for large arguments."""
  z = np.asarray(z, np.float64)
  big = z > 500.0
  out = np.empty_like(z)
  out[~big] = np.log(np.i0(z[~big]))
  zb = z[big]
  out[big] = zb - 0.5 * np.log(2 * np.pi * zb) + np.log1p(1 / (8 * zb))
  return out


def _orthogonal_motifs(rng: np.random.Generator, count: int, steps: int, channels: int,
                       amplitude: float) -> np.ndarray:
  """``count`` mutually orthogonal (steps, channels) patterns with RMS ``amplitude``."""
  g = rng.standard_normal((steps * channels, count))
  q, r = np.linalg.qr(g)
  q = q * np.sign(np.diagonal(r))  # unique QR: fixed function of the draw
  motifs = q.T * (amplitude * math.sqrt(steps * channels))
  return motifs.reshape(count, steps, channels).astype(np.float32)


# ---------------------------------------------------------------- base class


@dataclasses.dataclass(frozen=True, kw_only=True)
class SyntheticTask:
  """Base class of the synthetic tasks: splits, seeding, indexing, validation.

  Attributes:
    split: "train", "validation" or "test".
    length: sequence length T (steps), or the longest length when ``min_length``
      is set.
    size: number of examples N; ``None`` means the split's default
      (``DEFAULT_SIZES``: train 1024, validation 256, test 256).
    seed: non-negative integer; with the split and options it fixes every example.
    num_classes: K >= 2.
    channels: C >= 1.
    min_length: when set, each example's length is uniform in
      [min_length, length] (an independent hashed stream); ``None`` (default)
      gives every example length ``length``.

  Subclasses set ``name`` and implement ``_nuisance``, ``_signal``,
  ``class_names`` and ``oracle``.
  """

  name: ClassVar[str] = ""

  split: str
  length: int
  size: int | None = None
  seed: int = 0
  num_classes: int = 4
  channels: int = 1
  min_length: int | None = None

  def __post_init__(self) -> None:
    if self.split not in SPLITS:
      raise ValueError(f"split must be one of {tuple(SPLITS)}, got {self.split!r}")
    set_ = functools.partial(object.__setattr__, self)
    set_("length", _check_int("length", self.length, 1))
    set_("size", DEFAULT_SIZES[self.split] if self.size is None
         else _check_int("size", self.size, 1))
    set_("seed", _check_int("seed", self.seed, 0))
    set_("num_classes", _check_int("num_classes", self.num_classes, 2))
    set_("channels", _check_int("channels", self.channels, 1))
    if self.min_length is not None:
      set_("min_length", _check_int("min_length", self.min_length, 1))
      if self.min_length > self.length:
        raise ValueError(f"min_length={self.min_length} exceeds length={self.length}")
    self._validate()

  def _validate(self) -> None:
    """Task-specific option checks (raise ValueError naming the option)."""

  # -- protocol -------------------------------------------------------------

  @property
  def num_channels(self) -> int:
    """Number of input channels C."""
    return self.channels

  @property
  def class_names(self) -> tuple[str, ...]:
    """Human-readable name of each class."""
    return tuple(f"class_{k}" for k in range(self.num_classes))

  def __len__(self) -> int:
    return self.size

  def __getitem__(self, i: int) -> dict[str, np.ndarray]:
    i = self._index(i)
    label = int(self._labels_at(np.array([i]))[0])
    length = int(self._lengths_at(np.array([i]))[0])
    nuisance = self._nuisance(self._rng(i, _NUISANCE), label, length)
    series = self._rng(i, _NOISE).standard_normal((length, self.channels), dtype=np.float32)
    self._signal(series, label, nuisance)
    return {"series": series, "label": np.int32(label)}

  @property
  def lengths(self) -> np.ndarray:
    """(N,) int64 length of every example, without generating any series."""
    return self._lengths_at(np.arange(self.size))

  @property
  def labels(self) -> np.ndarray:
    """(N,) int32 label of every example, without generating any series."""
    return self._labels_at(np.arange(self.size))

  def example_info(self, i: int) -> dict[str, Any]:
    """Label, length and nuisance parameters (e.g. motif position) of example ``i``,
    without generating the series."""
    i = self._index(i)
    label = int(self._labels_at(np.array([i]))[0])
    length = int(self._lengths_at(np.array([i]))[0])
    return {"label": label, "length": length,
            **self._nuisance(self._rng(i, _NUISANCE), label, length)}

  def oracle(self, series: np.ndarray) -> int:
    """Reference (Bayes-style) classifier for one (T, C) series."""
    raise NotImplementedError

  # -- internals ------------------------------------------------------------

  @functools.cached_property
  def _task_id(self) -> int:
    return zlib.crc32(self.name.encode())

  def _key(self, stream: int) -> int:
    """64-bit key of one per-split stream."""
    ss = np.random.SeedSequence([self._task_id, self.seed, SPLITS[self.split], stream])
    return int(ss.generate_state(1, np.uint64)[0])

  def _rng(self, i: int, stream: int) -> np.random.Generator:
    """Generator of stream ``stream`` of example ``i`` of this split."""
    ss = np.random.SeedSequence([self._task_id, self.seed, SPLITS[self.split], i, stream])
    return np.random.default_rng(ss)

  def _structure_rng(self) -> np.random.Generator:
    """Generator for fixed task structure: depends on (task, seed) only, not the split."""
    return np.random.default_rng(np.random.SeedSequence([self._task_id, self.seed, _STRUCTURE]))

  def _index(self, i: int) -> int:
    i = operator.index(i)
    if not -self.size <= i < self.size:
      raise IndexError(f"index {i} out of range for {self.name} split {self.split!r} "
                       f"of size {self.size}")
    return i + self.size if i < 0 else i

  def _labels_at(self, idx: np.ndarray) -> np.ndarray:
    return _hash_uniform_int(self._key(_LABEL), idx, self.num_classes).astype(np.int32)

  def _lengths_at(self, idx: np.ndarray) -> np.ndarray:
    if self.min_length is None:
      return np.full(len(idx), self.length, np.int64)
    span = self.length - self.min_length + 1
    return self.min_length + _hash_uniform_int(self._key(_LENGTH), idx, span).astype(np.int64)

  def _shortest(self) -> int:
    return self.length if self.min_length is None else self.min_length

  def _check_fits(self, need: int, what: str) -> None:
    """Raise TooShortError unless the shortest series holds ``need`` steps (``what``)."""
    if need > self._shortest():
      field = "length" if self.min_length is None else "min_length"
      raise TooShortError(f"{what} exceeds {field}={self._shortest()}", field)

  def _as_series(self, series: np.ndarray) -> np.ndarray:
    x = np.asarray(series)
    if x.ndim == 1 and self.channels == 1:
      x = x[:, None]
    if x.ndim != 2 or x.shape[1] != self.channels:
      raise ValueError(f"series must have shape (T, {self.channels}), got {x.shape}")
    return x

  def _nuisance(self, rng: np.random.Generator, label: int, length: int) -> dict[str, Any]:
    """Draw the example's nuisance parameters (cheap; no series)."""
    return {}

  def _signal(self, series: np.ndarray, label: int, nuisance: dict[str, Any]) -> None:
    """Add the class signal to the (T, C) noise ``series`` in place."""
    raise NotImplementedError


# ---------------------------------------------------------------- tasks


@dataclasses.dataclass(frozen=True, kw_only=True)
class MotifTask(SyntheticTask):
  """Which of K motifs was added somewhere in the noise (memory over the whole sequence).

  x = noise (i.i.d. N(0, 1), shape (T, C)); motif ``m_y`` (shape
  (motif_length, C)) is added at a position p uniform in [0, T - motif_length].
  The K motifs are mutually orthogonal Gaussian patterns (QR of a draw fixed by
  ``seed``, shared by all splits) scaled to per-step RMS ``amplitude``; the
  class is which motif. A model must carry what it saw at p, anywhere in the
  sequence, to the end.

  Options: ``num_classes`` (K, default 4, at most motif_length * channels),
  ``channels`` (default 1), ``motif_length`` (default 32, <= every length),
  ``amplitude`` (default 2.0; the matched filter's margin is
  amplitude * sqrt(motif_length * channels) = 11.3 noise standard deviations
  by default, enough for ~100% oracle accuracy up to T = 10^6).
  ``example_info(i)["position"]`` is p.
  """

  name: ClassVar[str] = "motif"

  motif_length: int = 32
  amplitude: float = 2.0

  def _validate(self) -> None:
    set_ = functools.partial(object.__setattr__, self)
    set_("motif_length", _check_int("motif_length", self.motif_length, 1))
    set_("amplitude", _check_float("amplitude", self.amplitude))
    self._check_fits(self.motif_length, f"motif_length={self.motif_length}")
    if self.num_classes > self.motif_length * self.channels:
      raise ValueError(f"num_classes={self.num_classes} exceeds motif_length * channels = "
                       f"{self.motif_length * self.channels} (motifs must be orthogonal)")

  @property
  def class_names(self) -> tuple[str, ...]:
    return tuple(f"motif_{k}" for k in range(self.num_classes))

  @functools.cached_property
  def motifs(self) -> np.ndarray:
    """(K, motif_length, C) float32 motifs; motif k marks class k."""
    return _orthogonal_motifs(self._structure_rng(), self.num_classes, self.motif_length,
                              self.channels, self.amplitude)

  def _nuisance(self, rng: np.random.Generator, label: int, length: int) -> dict[str, Any]:
    return {"position": int(rng.integers(0, length - self.motif_length + 1))}

  def _signal(self, series: np.ndarray, label: int, nuisance: dict[str, Any]) -> None:
    p = nuisance["position"]
    series[p:p + self.motif_length] += self.motifs[label]

  def oracle(self, series: np.ndarray) -> int:
    """Bayes classifier: argmax_k log sum_p exp(<x[p:p+L], m_k>).

    With unit-variance Gaussian noise, equal-norm motifs and a uniform position,
    this is the exact log posterior up to a constant.
    """
    x = self._as_series(series)
    scores = [_logsumexp(_correlate(x, m)) for m in self.motifs]
    return int(np.argmax(scores))


@dataclasses.dataclass(frozen=True, kw_only=True)
class SpectralTask(SyntheticTask):
  """Which of K known frequencies is hidden in the noise.

  x[t, c] = a * sin(2 pi f_y t + phi_c) + noise[t, c], t = 0..T-1, with an
  independent uniform phase phi_c per channel and i.i.d. N(0, 1) noise.
  The candidate frequencies (cycles per step) are log-spaced from
  ``min_frequency`` (default 1/64) to ``max_frequency`` (default 1/4, below
  Nyquist 1/2): with K = 4 they are 1/64, 1/25.4, 1/10.1, 1/4 (ratio 2.52), well
  separated once T is a few hundred steps (the periodogram resolves frequencies
  about 1/T apart). ``frequencies`` lists them.

  ``snr`` (default 0.02) is the per-step signal-to-noise power ratio
  a^2 / 2, so a = sqrt(2 snr) = 0.2 by default: invisible step by step, found
  by integrating over the sequence (the periodogram margin grows like
  snr * T: ~100% oracle accuracy at T = 4096, less at T of a few hundred).
  """

  name: ClassVar[str] = "spectral"

  snr: float = 0.02
  min_frequency: float = 1 / 64
  max_frequency: float = 1 / 4

  def _validate(self) -> None:
    set_ = functools.partial(object.__setattr__, self)
    set_("snr", _check_float("snr", self.snr))
    set_("min_frequency", _check_float("min_frequency", self.min_frequency))
    set_("max_frequency", _check_float("max_frequency", self.max_frequency))
    if not 0 < self.min_frequency < self.max_frequency < 0.5:
      raise ValueError("need 0 < min_frequency < max_frequency < 0.5 (Nyquist), got "
                       f"min_frequency={self.min_frequency}, max_frequency={self.max_frequency}")

  @property
  def frequencies(self) -> np.ndarray:
    """(K,) float64 candidate frequencies in cycles per step; class k is frequencies[k]."""
    return np.geomspace(self.min_frequency, self.max_frequency, self.num_classes)

  @property
  def class_names(self) -> tuple[str, ...]:
    return tuple(f"f={f:.4g}" for f in self.frequencies)

  @property
  def amplitude(self) -> float:
    """Sinusoid amplitude a = sqrt(2 snr)."""
    return math.sqrt(2 * self.snr)

  def _nuisance(self, rng: np.random.Generator, label: int, length: int) -> dict[str, Any]:
    return {"phase": rng.uniform(0, 2 * np.pi, self.channels)}

  def _signal(self, series: np.ndarray, label: int, nuisance: dict[str, Any]) -> None:
    omega = 2 * np.pi * self.frequencies[label]
    buf = np.empty(series.shape[0], np.float64)  # one float64 buffer, reused per channel
    for c, phi in enumerate(nuisance["phase"]):
      np.multiply(np.arange(series.shape[0], dtype=np.float64), omega, out=buf)
      buf += phi
      np.sin(buf, out=buf)
      buf *= self.amplitude
      series[:, c] += buf

  def oracle(self, series: np.ndarray) -> int:
    """Bayes-style classifier: argmax_k sum_c log I0(a |X_c(f_k)|).

    X_c(f) = sum_t x[t, c] exp(-2 pi i f t) (the periodogram's DFT at the
    candidate frequency). Marginalising the uniform phase gives exactly this
    when the sinusoid's energy is the same for every class (true up to O(1/T)
    end effects); with one channel it is the argmax of the periodogram.
    """
    x = self._as_series(series).astype(np.float64)
    t = np.arange(x.shape[0], dtype=np.float64)
    scores = []
    for f in self.frequencies:
      re = np.cos(2 * np.pi * f * t) @ x
      im = np.sin(2 * np.pi * f * t) @ x
      scores.append(float(np.sum(_log_i0(self.amplitude * np.hypot(re, im)))))
    return int(np.argmax(scores))


@dataclasses.dataclass(frozen=True, kw_only=True)
class OrderTask(SyntheticTask):
  """Which of two motifs comes first (order memory; 2 classes).

  Two orthogonal motifs A and B (shape (motif_length, C), per-step RMS
  ``amplitude``, fixed by ``seed``) are added to i.i.d. N(0, 1) noise at two
  non-overlapping positions p1 < p2 (p2 >= p1 + motif_length), uniform over all
  such pairs. Class 0 ("a_first"): A at p1, B at p2; class 1 ("b_first"): B at
  p1, A at p2. Both motifs are present in every example, so only their order
  tells the classes apart.

  Options: ``channels`` (default 1), ``motif_length`` (default 32, and
  2 * motif_length <= every length), ``amplitude`` (default 2.0).
  ``num_classes`` must be 2. ``example_info(i)["positions"]`` is (p1, p2).
  """

  name: ClassVar[str] = "order"

  num_classes: int = 2
  motif_length: int = 32
  amplitude: float = 2.0

  def _validate(self) -> None:
    if self.num_classes != 2:
      raise ValueError(f"num_classes must be 2 for the order task, got {self.num_classes}")
    set_ = functools.partial(object.__setattr__, self)
    set_("motif_length", _check_int("motif_length", self.motif_length, 1))
    set_("amplitude", _check_float("amplitude", self.amplitude))
    self._check_fits(2 * self.motif_length, f"2 * motif_length = {2 * self.motif_length} "
                                            f"(motif_length={self.motif_length})")

  @property
  def class_names(self) -> tuple[str, ...]:
    return ("a_first", "b_first")

  @functools.cached_property
  def motifs(self) -> np.ndarray:
    """(2, motif_length, C) float32: motif A, motif B."""
    return _orthogonal_motifs(self._structure_rng(), 2, self.motif_length, self.channels,
                              self.amplitude)

  def _nuisance(self, rng: np.random.Generator, label: int, length: int) -> dict[str, Any]:
    # Distinct u < v uniform in [0, m); p1 = u, p2 = v + L - 1 covers every
    # non-overlapping pair exactly once.
    m = length - 2 * self.motif_length + 2
    u = int(rng.integers(0, m))
    v = int(rng.integers(0, m - 1))
    v += v >= u
    u, v = min(u, v), max(u, v)
    return {"positions": (u, v + self.motif_length - 1)}

  def _signal(self, series: np.ndarray, label: int, nuisance: dict[str, Any]) -> None:
    p1, p2 = nuisance["positions"]
    first, second = (0, 1) if label == 0 else (1, 0)
    series[p1:p1 + self.motif_length] += self.motifs[first]
    series[p2:p2 + self.motif_length] += self.motifs[second]

  def oracle(self, series: np.ndarray) -> int:
    """Exact Bayes classifier over all non-overlapping position pairs.

    score(first, second) = log sum_{p2 - p1 >= L} exp(c_first(p1) + c_second(p2)),
    c the matched-filter correlations, computed in O(T) with a running
    log-sum-exp; equal pair counts per class make the prior irrelevant.
    """
    x = self._as_series(series)
    L = self.motif_length
    if x.shape[0] < 2 * L:
      raise ValueError(f"series length {x.shape[0]} < 2 * motif_length = {2 * L}")
    ca, cb = (_correlate(x, m) for m in self.motifs)

    def score(c1: np.ndarray, c2: np.ndarray) -> float:
      run = np.logaddexp.accumulate(c1)  # run[j] = logsumexp(c1[:j + 1])
      return _logsumexp(c2[L:] + run[:len(c2) - L])

    return int(score(cb, ca) > score(ca, cb))


# ---------------------------------------------------------------- registry

TASKS: dict[str, type[SyntheticTask]] = {
    MotifTask.name: MotifTask,
    SpectralTask.name: SpectralTask,
    OrderTask.name: OrderTask,
}


def task_options(name: str) -> dict[str, Any]:
  """Options of task ``name`` beyond split/length/size/seed, with their defaults."""
  cls = _lookup(name)
  skip = {"split", "length", "size", "seed"}
  return {f.name: f.default for f in dataclasses.fields(cls) if f.init and f.name not in skip}


def _lookup(name: str) -> type[SyntheticTask]:
  if name not in TASKS:
    raise ValueError(f"unknown synthetic task {name!r}; known tasks: {', '.join(sorted(TASKS))}")
  return TASKS[name]


def make_task(name: str, *, split: str, length: int, size: int | None = None, seed: int = 0,
              **options: Any) -> SyntheticTask:
  """Build split ``split`` of synthetic task ``name`` (a key of ``TASKS``).

  Args:
    name: task name ("motif", "spectral", "order").
    split: "train", "validation" or "test".
    length: sequence length T (the longest length when ``min_length`` is given).
    size: number of examples (default: 1024 train, 256 validation / test).
    seed: non-negative integer seed.
    **options: task options (see ``task_options(name)`` and the task's docstring).

  Raises:
    ValueError: unknown task name (the message lists the known tasks), unknown
      option, or an invalid option value (the message names the option).
  """
  cls = _lookup(name)
  known = task_options(name)
  unknown = sorted(set(options) - set(known))
  if unknown:
    raise ValueError(f"unknown option(s) {', '.join(unknown)} for task {name!r}; "
                     f"options: {', '.join(known)}")
  return cls(split=split, length=length, size=size, seed=seed, **options)


__all__ = ["DEFAULT_SIZES", "MotifTask", "OrderTask", "SPLITS", "SpectralTask", "SyntheticTask",
           "TASKS", "TooShortError", "make_task", "task_options"]
