"""The solver's options as one typed, hashable, validated value: ``SolverSpec``.

This module is the one source of the option names and their valid values
(``METHODS``, ``MODES``, ``ADJOINTS`` ...): ``solve``, the Flax layer and the
training config all read them from here.  It imports no JAX, so reading or
validating a config stays cheap.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

__all__ = ["SolverSpec", "METHODS", "ALIASES", "AUTO", "MODES", "ADJOINTS", "ON_FAILURE",
           "INITS", "ELK_STEPS", "DEFAULT_GIVE_UP", "canonical_method"]

METHODS = ("sequential", "deer", "quasi_deer", "elk", "quasi_elk")
ALIASES = {"ike": "elk", "quasi_ike": "quasi_elk"}
AUTO = "auto"
MODES = ("shoot", "store", "recompute")
ADJOINTS = ("shoot", "dense", "quasi", "sequential", "approx")
ON_FAILURE = ("sequential", "return", "raise")
INITS = ("zeros", "warm")
ELK_STEPS = ("smoother", "filter")
# Give up (take the sequential path) when the projected iterations exceed this
# fraction of the causal bound (stopping.py).
DEFAULT_GIVE_UP = 0.5


def canonical_method(method: str) -> str:
  """The method's canonical name ("auto" stays "auto": see ``resolve_method``)."""
  name = ALIASES.get(method, method)
  if name not in METHODS + (AUTO,):
    valid = ", ".join((AUTO,) + METHODS + tuple(ALIASES))
    raise ValueError(f"unknown solver method {method!r}; valid methods: {valid}")
  return name


def _is_int(v) -> bool:
  return isinstance(v, int) and not isinstance(v, bool)


@dataclasses.dataclass(frozen=True)
class SolverSpec:
  """How ``solve`` evaluates a recurrence (validated on construction; hashable,
  so it can be a static argument or a Flax module field).

  method: "auto" (by backend and length: ``resolve_method``), "sequential"
    (lax.scan), "deer" (Newton, dense Jacobian), "quasi_deer" (diagonal
    Jacobian), "elk" / "quasi_elk" (damped Newton as a Kalman smoother; aliases
    "ike" / "quasi_ike").
  mode: DEER / quasi-DEER form: "shoot" (default: Newton on the chunk starts,
    exact steps inside chunks), or the papers' per-step Newton, "store" (chunk
    maps kept) or "recompute" (a second pass instead of storage).
  adjoint: the backward pass: "shoot" (default), "dense", "quasi",
    "sequential" (all exact) or "approx" (diag(J) only: the reference code's
    approximate gradient).
  chunk: positions per chunk (default by T and mode: ``newton.default_chunk``).
  max_iter: cap on iterations (default: the causal bound of the form).
  atol, rtol: per-step residual tolerance |r_t| <= atol + rtol |h_t| (default
    per dtype: ``default_tolerances``).
  give_up: stop early and take the sequential path when the projected
    iterations exceed this fraction of the causal bound (None or 0: never).
  on_failure: "sequential" (exact lax.scan result, info.fallback set),
    "return" (the unconverged iterate, info.converged False) or "raise".
  jvp_batch: JVP directions per block of the generic diagonal (default all).
  lam_init, adaptive_lambda, elk_step: the damped methods' initial lambda,
    gain-ratio adaptation, "smoother" (exact LM step) or "filter".
  clip: magnitude at which iterates are clipped (non-finite ones are reset).
  unroll: lax.scan's ``unroll`` for the sequential method.
  seq_axis: sequence parallelism: the mesh axis the time axis is sharded over
    (call ``solve`` inside ``jax.shard_map``; docs/method.md section 8).
  """
  method: str = AUTO
  mode: str | None = None
  adjoint: str | None = None
  chunk: int | None = None
  max_iter: int | None = None
  atol: float | None = None
  rtol: float | None = None
  give_up: float | None = DEFAULT_GIVE_UP
  on_failure: str = "sequential"
  jvp_batch: int | None = None
  lam_init: float = 1e-3
  adaptive_lambda: bool = True
  elk_step: str = "smoother"
  clip: float = 1e8
  unroll: int | bool = 1
  seq_axis: str | None = None

  def __post_init__(self):
    object.__setattr__(self, "method", canonical_method(self.method))
    if self.on_failure not in ON_FAILURE:
      raise ValueError(f"on_failure must be one of {ON_FAILURE}, got {self.on_failure!r}")
    if self.elk_step not in ELK_STEPS:
      raise ValueError(f"elk_step must be 'smoother' or 'filter', got {self.elk_step!r}")
    if self.adjoint is not None and self.adjoint not in ADJOINTS:
      raise ValueError(f"adjoint must be one of {ADJOINTS}, got {self.adjoint!r}")
    if self.mode is not None and self.mode not in MODES:
      raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
    for name in ("chunk", "jvp_batch"):
      v = getattr(self, name)
      if v is not None and (not _is_int(v) or v < 1):
        raise ValueError(f"{name} must be a positive integer or None, got {v!r}")
    if self.max_iter is not None and (not _is_int(self.max_iter) or self.max_iter < 0):
      raise ValueError(f"max_iter must be >= 0, got {self.max_iter}")
    if self.give_up is not None and not 0 <= self.give_up:
      raise ValueError(f"give_up must be >= 0 or None, got {self.give_up}")
    for name in ("atol", "rtol"):
      v = getattr(self, name)
      if v is not None and not v >= 0:
        raise ValueError(f"{name} must be >= 0 or None, got {v!r}")
    if self.seq_axis is not None:
      self._check_sequence_parallel()

  def _check_sequence_parallel(self):
    axis = self.seq_axis
    if not isinstance(axis, str):
      raise ValueError(f"seq_axis must be a mesh axis name, got {axis!r}")
    if self.method in ("elk", "quasi_elk"):
      other = "quasi_deer" if self.method == "quasi_elk" else "deer"
      raise ValueError(
          f"method {self.method!r} is not sequence-parallel (seq_axis={axis!r}): its Kalman "
          f"smoother runs over the whole sequence on one device; use {other!r} (undamped "
          f"Newton, the same fixed point) or 'sequential'")
    if self.mode not in (None, "shoot"):
      raise ValueError(f"mode={self.mode!r} is not sequence-parallel (seq_axis={axis!r}); use "
                       f"mode='shoot' (the default)")
    if self.adjoint not in (None, "shoot", "sequential"):
      raise ValueError(f"adjoint={self.adjoint!r} is not sequence-parallel (seq_axis={axis!r}); "
                       f"use 'shoot' (the default) or 'sequential'")

  def replace(self, **changes) -> "SolverSpec":
    """A copy with ``changes`` (validated again)."""
    return dataclasses.replace(self, **changes)

  def options(self) -> dict:
    """The fields that differ from their defaults, ``method`` aside: the keyword
    options that rebuild this spec with ``from_options(spec.method, options)``."""
    default = SolverSpec()
    return {f: getattr(self, f) for f in self.field_names()
            if f != "method" and getattr(self, f) != getattr(default, f)}

  @classmethod
  def field_names(cls) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))

  @classmethod
  def from_options(cls, method: str = AUTO, options: Mapping[str, Any] | None = None):
    """``SolverSpec(method, **options)`` with a clear error for an unknown option."""
    options = dict(options or {})
    unknown = sorted(set(options) - set(cls.field_names()))
    if unknown:
      raise ValueError(f"unknown solver option(s) {', '.join(unknown)}; valid: "
                       f"{', '.join(cls.field_names())}")
    return cls(method=method, **options)
