"""ParallelRNN against flax.linen.RNN with the same parameters."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from seqtrain.nn import DiagGRUCell, DiagLSTMCell, ParallelRNN
from seqtrain.nn.cells import cell_functions

METHODS = ["deer", "quasi_deer", "elk", "quasi_elk"]
CELLS = {
    "gru": lambda d, dt: nn.GRUCell(d, param_dtype=dt, dtype=dt),
    "lstm": lambda d, dt: nn.LSTMCell(d, param_dtype=dt, dtype=dt),
    "simple": lambda d, dt: nn.SimpleCell(d, param_dtype=dt, dtype=dt),
}
TOL = {jnp.float64: 1e-8, jnp.float32: 1e-4}


class MyCell(nn.RNNCellBase):
  """A user cell defined only here: leaky tanh unit with an output head."""
  features: int

  @nn.compact
  def __call__(self, carry, x):
    dense = lambda **kw: nn.Dense(self.features, param_dtype=jnp.float64, **kw)
    h = 0.5 * carry + 0.5 * jnp.tanh(dense()(x) + dense(use_bias=False)(carry))
    return h, 2.0 * h

  def initialize_carry(self, rng, input_shape):
    return jnp.zeros(input_shape[:-1] + (self.features,), jnp.float64)

  @property
  def num_feature_axes(self):
    return 1


def _data(dt, b=3, t=40, f=5):
  x = jax.random.normal(jax.random.PRNGKey(1), (b, t, f), dt)
  return x, jnp.array([t, 17, 1])


def _compare(cell, method, dt, seq_lengths=None):
  x, lengths = _data(dt)
  lengths = lengths if seq_lengths else None
  ref_mod = nn.RNN(cell, return_carry=True)
  params = ref_mod.init(jax.random.PRNGKey(0), x)
  par_mod = ParallelRNN(cell, method=method, return_carry=True,
                        solver_options={"on_failure": "return"})
  par_params = par_mod.init(jax.random.PRNGKey(0), x)
  assert jax.tree_util.tree_structure(par_params) == jax.tree_util.tree_structure(params)

  def run(mod, p):
    # jit through a closure: the module is not a static (hashed) argument.
    def f(p):
      (c, y), _ = mod.apply(p, x, seq_lengths=lengths, mutable=["solver_stats"])
      return c, y
    return jax.jit(f)(p)

  def loss(mod, p):
    c, y = run(mod, p)
    mask = 1.0 if lengths is None else (jnp.arange(x.shape[1])[None, :] < lengths[:, None])[..., None]
    return jnp.sum(jnp.sin(y) * mask) + sum(jnp.sum(l) for l in jax.tree_util.tree_leaves(c))

  c_ref, y_ref = run(ref_mod, params)
  c, y = run(par_mod, params)
  tol = TOL[dt]
  if lengths is not None:
    mask = (jnp.arange(x.shape[1])[None, :] < lengths[:, None])[..., None]
    y, y_ref = y * mask, y_ref * mask
  np.testing.assert_allclose(y, y_ref, atol=tol, rtol=0)
  for a, b in zip(jax.tree_util.tree_leaves(c), jax.tree_util.tree_leaves(c_ref)):
    np.testing.assert_allclose(a, b, atol=tol, rtol=0)
  g_ref = jax.jit(jax.grad(lambda p: loss(ref_mod, p)))(params)
  g = jax.jit(jax.grad(lambda p: loss(par_mod, p)))(params)
  for a, b in zip(jax.tree_util.tree_leaves(g), jax.tree_util.tree_leaves(g_ref)):
    np.testing.assert_allclose(a, b, atol=10 * tol, rtol=10 * tol)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("cell", list(CELLS))
def test_matches_nn_rnn_float64_seq_lengths(cell, method):
  _compare(CELLS[cell](6, jnp.float64), method, jnp.float64, True)


@pytest.mark.parametrize("cell,method", [("gru", m) for m in METHODS] +
                         [("lstm", "quasi_deer"), ("simple", "deer")])
def test_matches_nn_rnn_float64_full_length(cell, method):
  _compare(CELLS[cell](6, jnp.float64), method, jnp.float64, False)


@pytest.mark.parametrize("method", ["quasi_deer"])
@pytest.mark.parametrize("cell", list(CELLS))
def test_matches_nn_rnn_float32(cell, method):
  _compare(CELLS[cell](6, jnp.float32), method, jnp.float32, True)


@pytest.mark.parametrize("method", METHODS)
def test_user_defined_cell(method):
  _compare(MyCell(4), method, jnp.float64, True)


EXTRA = {
    "optimized_lstm": lambda d, dt: nn.OptimizedLSTMCell(d, param_dtype=dt, dtype=dt),
    "diag_gru": lambda d, dt: DiagGRUCell(d, param_dtype=dt),
    "diag_lstm": lambda d, dt: DiagLSTMCell(d, param_dtype=dt),
}


@pytest.mark.parametrize("cell", list(EXTRA))
@pytest.mark.parametrize("method", ["quasi_deer"])
def test_more_cells_match_nn_rnn(cell, method):
  _compare(EXTRA[cell](5, jnp.float64), method, jnp.float64, True)


@pytest.mark.parametrize("cell", list(CELLS) + list(EXTRA))
def test_analytic_diagonal_equals_jacfwd(cell):
  make = dict(CELLS, **EXTRA)
  mod = make[cell](5, jnp.float64)
  x = jax.random.normal(jax.random.PRNGKey(2), (4,), jnp.float64)
  carry = mod.initialize_carry(jax.random.PRNGKey(0), (4,))
  carry = jax.tree_util.tree_map(lambda c: c + 0.3 * jax.random.normal(jax.random.PRNGKey(3), c.shape, c.dtype), carry)
  params = mod.init(jax.random.PRNGKey(0), carry, x)["params"]
  fns, builtin = cell_functions(mod)
  assert builtin
  xp = fns.project(params, x)
  new, diag = fns.diag(params, carry, xp)
  ref_new = mod.apply({"params": params}, carry, x)[0]
  flat = lambda tr: jnp.concatenate([jnp.ravel(l) for l in jax.tree_util.tree_leaves(tr)])
  np.testing.assert_allclose(flat(new), flat(ref_new), atol=1e-12)
  from jax.flatten_util import ravel_pytree
  z, unravel = ravel_pytree(carry)
  jac = jax.jacfwd(lambda z: ravel_pytree(fns.step(params, unravel(z), xp))[0])(z)
  np.testing.assert_allclose(flat(diag), jnp.diagonal(jac), atol=1e-12)


def test_time_major_and_stats_collection():
  cell = nn.GRUCell(4, param_dtype=jnp.float64)
  x, _ = _data(jnp.float64)
  mod = ParallelRNN(cell, time_major=True)
  p = mod.init(jax.random.PRNGKey(0), jnp.swapaxes(x, 0, 1))
  y, stats = mod.apply(p, jnp.swapaxes(x, 0, 1), mutable=["solver_stats"])
  ref = nn.RNN(cell).apply(p, x)
  np.testing.assert_allclose(jnp.swapaxes(y, 0, 1), ref, atol=1e-8)
  s = stats["solver_stats"]
  assert int(s["iterations"][0]) > 0 and bool(s["converged"][0])
  assert int(s["fallbacks"][0]) == 0


def test_unknown_method_fails_at_init():
  with pytest.raises(ValueError, match="valid methods"):
    ParallelRNN(nn.GRUCell(3), method="fast").init(jax.random.PRNGKey(0), jnp.zeros((1, 4, 2)))


def test_diagonal_cell_quasi_deer_is_exact_newton():
  """With diagonal recurrent weights quasi-DEER takes exactly DEER's iterations."""
  cell = DiagGRUCell(8, param_dtype=jnp.float64)
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 300, 3), jnp.float64)
  p = nn.RNN(cell).init(jax.random.PRNGKey(1), x)
  ref = nn.RNN(cell).apply(p, x)
  iters = {}
  for method in ("deer", "quasi_deer"):
    y, st = ParallelRNN(cell, method=method).apply(p, x, mutable=["solver_stats"])
    np.testing.assert_allclose(y, ref, atol=1e-10)
    iters[method] = int(st["solver_stats"]["iterations"][0])
  assert iters["quasi_deer"] == iters["deer"], iters
  fns, builtin = cell_functions(cell)
  assert builtin
