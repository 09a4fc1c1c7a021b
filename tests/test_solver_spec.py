"""SolverSpec: the solver's options as one typed, hashable, validated value."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqtrain.solvers import SolverSpec, solve


def _step(p, h, x):
  return jnp.tanh(x @ p["w"] + h @ p["u"])


_P = {"w": jnp.eye(3) * 0.5, "u": jnp.eye(3) * 0.3}
_XS = jnp.linspace(-1, 1, 60).reshape(20, 3)


def test_hashable_equal_and_round_trips_through_options():
  a = SolverSpec(method="quasi_ike", max_iter=16, on_failure="return")
  b = SolverSpec.from_options("quasi_elk", a.options())
  assert a == b and hash(a) == hash(b) and a.method == "quasi_elk"   # alias resolved
  assert a.options() == {"max_iter": 16, "on_failure": "return"}
  assert {a: 1}[b] == 1
  with pytest.raises(ValueError, match="max_iter must be >= 0"):
    a.replace(max_iter=-1)


@pytest.mark.parametrize("options, message", [
    ({"method": "newton"}, "unknown solver method 'newton'; valid methods: auto"),
    ({"mode": "fast"}, "mode must be one of"),
    ({"adjoint": "exact"}, "adjoint must be one of"),
    ({"on_failure": "ignore"}, "on_failure must be one of"),
    ({"chunk": 0}, "chunk must be a positive integer"),
    ({"atol": -1.0}, "atol must be >= 0"),
    ({"method": "elk", "seq_axis": "seq"}, "not sequence-parallel .* use 'deer'"),
    ({"mode": "store", "seq_axis": "seq"}, "mode='store' is not sequence-parallel"),
])
def test_bad_values_are_refused_with_the_option_named(options, message):
  with pytest.raises(ValueError, match=message):
    SolverSpec(**options)
  with pytest.raises(ValueError, match=message):   # solve validates through the spec
    solve(_step, _P, jnp.zeros(3), _XS, **options)


def test_solve_takes_a_spec_or_its_fields_alike():
  spec = SolverSpec(method="quasi_deer", max_iter=8, chunk=4)
  hs, info = solve(_step, _P, jnp.zeros(3), _XS, spec=spec)
  hs2, info2 = solve(_step, _P, jnp.zeros(3), _XS, "quasi_deer", max_iter=8, chunk=4)
  ref, _ = solve(_step, _P, jnp.zeros(3), _XS, "sequential")
  np.testing.assert_array_equal(hs, hs2)
  np.testing.assert_allclose(hs, ref, atol=1e-8)
  assert int(info.iterations) == int(info2.iterations) >= 1
  hs3, _ = solve(_step, _P, jnp.zeros(3), _XS, spec=spec, method="sequential")  # overrides
  np.testing.assert_array_equal(hs3, ref)
  with pytest.raises(TypeError, match="unknown option.*tolerance.*SolverSpec's fields"):
    solve(_step, _P, jnp.zeros(3), _XS, tolerance=1e-3)
  jax.jit(lambda x: solve(_step, _P, jnp.zeros(3), x, spec=spec)[0])(_XS)   # traceable
