"""Parallel evaluation of nonlinear recurrences (pure JAX; knows nothing of Flax).

    hs, info = seqtrain.solvers.solve(step, params, h0, xs, method="auto")
    spec = seqtrain.solvers.SolverSpec(method="quasi_deer", max_iter=8)
    hs, info = seqtrain.solvers.solve(step, params, h0, xs, spec=spec)

The names are imported on first use, so that ``seqtrain.solvers.spec`` (the
options and their valid values, no JAX) can be read without importing JAX.
"""
import importlib

_EXPORTS = {
    "solve": "api", "resolve_method": "api", "default_tolerances": "api", "SolveInfo": "api",
    "SolverError": "api", "CROSSOVER": "api",
    "SolverSpec": "spec", "canonical_method": "spec", "METHODS": "spec", "ALIASES": "spec",
    "AUTO": "spec",
    "dense_linearization": "jacobians", "jvp_diag_linearization": "jacobians",
    "STATUS": "stopping",
    "kalman_smoother_mean": "scan", "linear_scan": "scan", "linear_scan_sequential": "scan",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
  if name not in _EXPORTS:
    raise AttributeError(f"module 'seqtrain.solvers' has no attribute {name!r}")
  value = getattr(importlib.import_module(f"seqtrain.solvers.{_EXPORTS[name]}"), name)
  globals()[name] = value
  return value


def __dir__():
  return sorted(set(globals()) | set(_EXPORTS))
