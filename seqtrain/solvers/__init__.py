"""Parallel evaluation of nonlinear recurrences (pure JAX; knows nothing of Flax).

    hs, info = seqtrain.solvers.solve(step, params, h0, xs, method="auto")
"""
from seqtrain.solvers.api import (ALIASES, AUTO, CROSSOVER, METHODS, SolveInfo, SolverError,
                                  canonical_method, default_tolerances, resolve_method, solve)
from seqtrain.solvers.jacobians import dense_linearization, jvp_diag_linearization
from seqtrain.solvers.stopping import STATUS
from seqtrain.solvers.scan import kalman_smoother_mean, linear_scan, linear_scan_sequential

__all__ = [
    "ALIASES", "AUTO", "CROSSOVER", "METHODS", "STATUS", "SolveInfo", "SolverError", "canonical_method", "default_tolerances",
    "dense_linearization", "jvp_diag_linearization", "kalman_smoother_mean", "linear_scan",
    "linear_scan_sequential", "resolve_method", "solve",
]
