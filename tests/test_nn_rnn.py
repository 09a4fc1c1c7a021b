"""ParallelRNN against flax.linen.RNN with the same parameters."""
import dataclasses
import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from grids import FULL, rotate
from seqtrain.nn import DiagGRUCell, DiagLSTMCell, ParallelRNN
from seqtrain.nn.cells import cell_functions
from seqtrain.solvers import canonical_method, resolve_method

pytestmark = pytest.mark.x64  # float64 exactness against lax.scan (tests/conftest.py)

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


def _compare(cell, method, dt, seq_lengths=None, x=None, lengths=None, tol=None, **call):
  """ParallelRNN against nn.RNN: outputs at EVERY position (padded ones included:
  nn.RNN keeps running the recurrence there), final carries, and gradients of a
  loss that reads all outputs and the carry.  ``call``: extra __call__ arguments
  (reverse, keep_order, ...) for both."""
  if x is None:
    x, lengths = _data(dt)
  lengths = lengths if seq_lengths else None
  ref_mod = nn.RNN(cell, return_carry=True)
  params = jax.jit(ref_mod.init)(jax.random.PRNGKey(0), x)  # one program, not op by op
  par_mod = ParallelRNN(cell, method=method, return_carry=True,
                        solver_options={"on_failure": "return", "give_up": None})
  # Same parameter tree (shapes only: an eager init compiles op by op, slowly).
  par_params = jax.eval_shape(par_mod.init, jax.random.PRNGKey(0), x)
  assert jax.tree_util.tree_structure(par_params) == jax.tree_util.tree_structure(params)
  assert jax.tree_util.tree_map(lambda a: (a.shape, a.dtype), par_params) == \
      jax.tree_util.tree_map(lambda a: (a.shape, a.dtype), params)

  def run(mod, p):
    """(outputs, carry, gradient of a loss reading every output and the carry),
    from one compiled program (jit through a closure: the module is not a
    static, hashed argument)."""
    def loss(p):
      (c, y), _ = mod.apply(p, x, seq_lengths=lengths, mutable=["solver_stats"], **call)
      return jnp.sum(jnp.sin(y)) + sum(jnp.sum(l) for l in jax.tree_util.tree_leaves(c)), (c, y)
    (_, (c, y)), g = jax.jit(jax.value_and_grad(loss, has_aux=True))(p)
    return c, y, g

  c_ref, y_ref, g_ref = run(ref_mod, params)
  c, y, g = run(par_mod, params)
  tol = TOL[dt] if tol is None else tol
  assert y.shape == y_ref.shape
  np.testing.assert_allclose(y, y_ref, atol=tol, rtol=0)
  assert jax.tree_util.tree_structure(c) == jax.tree_util.tree_structure(c_ref)
  for a, b in zip(jax.tree_util.tree_leaves(c), jax.tree_util.tree_leaves(c_ref)):
    np.testing.assert_allclose(a, b, atol=tol, rtol=0)
  for a, b in zip(jax.tree_util.tree_leaves(g), jax.tree_util.tree_leaves(g_ref)):
    np.testing.assert_allclose(a, b, atol=10 * tol, rtol=10 * tol)


# Every method with the GRU; the other cells with two methods each, in turn (all pairs
# with SEQTRAIN_FULL_TESTS=1; the solvers meet every cell in test_solver_forward.py).
@pytest.mark.parametrize("cell,method", [("gru", m) for m in METHODS] + rotate(
    [("lstm",), ("simple",)], [(m,) for m in METHODS], per=2))
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


@pytest.mark.parametrize("method", METHODS if FULL else ["deer", "quasi_elk"])
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
  mod = ParallelRNN(cell, method="quasi_deer", time_major=True)
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


@pytest.mark.parametrize("cell", ["gru", "my_cell"])
def test_reverse_keep_order_padding_matches_nn_rnn(cell):
  """reverse + keep_order with padding (a length-0 sequence included): every
  position and the selected carry as nn.RNN, built-in and generic cells."""
  mod = CELLS["gru"](4, jnp.float64) if cell == "gru" else MyCell(4)
  x = jax.random.normal(jax.random.PRNGKey(5), (3, 10, 3), jnp.float64)
  _compare(mod, "quasi_deer", jnp.float64, True, x=x, lengths=jnp.array([10, 4, 0]),
           reverse=True, keep_order=True)


def test_signature_is_a_superset_of_nn_rnn():
  """Every nn.RNN constructor attribute (same position and default) and every
  __call__ argument (same kind and default) is accepted by ParallelRNN."""
  skip = ("parent", "name")
  ref = [f for f in dataclasses.fields(nn.RNN) if f.name not in skip]
  ours = [f for f in dataclasses.fields(ParallelRNN) if f.name not in skip]
  assert [f.name for f in ours[:len(ref)]] == [f.name for f in ref]
  for a, b in zip(ours, ref):
    assert a.default == b.default, a.name
  ref_call = inspect.signature(nn.RNN.__call__).parameters
  our_call = inspect.signature(ParallelRNN.__call__).parameters
  for name, p in ref_call.items():
    assert name in our_call, name
    assert our_call[name].kind == p.kind and our_call[name].default == p.default, name


@pytest.mark.parametrize("method", ["sequential", "auto", "quasi_deer"])
def test_unroll(method):
  """unroll as nn.RNN's: passed to lax.scan by the sequential method ("auto"
  resolves to it on CPU at this length), same results and SolveInfo as
  solve(method="sequential"); accepted and ignored by the parallel methods."""
  cell = MyCell(4)
  x, lengths = _data(jnp.float64, t=12)
  p = nn.RNN(cell).init(jax.random.PRNGKey(0), x)
  ref = nn.RNN(cell, unroll=4, return_carry=True)
  c_ref, y_ref = ref.apply(p, x, seq_lengths=lengths)
  mod = ParallelRNN(cell, method=method, unroll=4, return_carry=True)
  (c, y), st = mod.apply(p, x, seq_lengths=lengths, mutable=["solver_stats"])
  np.testing.assert_allclose(y, y_ref, atol=1e-10, rtol=0)
  np.testing.assert_allclose(c, c_ref, atol=1e-10, rtol=0)
  jaxpr = str(jax.make_jaxpr(lambda p: mod.apply(p, x, mutable=["solver_stats"]))(p))
  sequential = resolve_method(method, x.shape[1]) == "sequential"
  assert ("unroll=4" in jaxpr) == sequential
  if sequential:
    _, st1 = ParallelRNN(cell, method=method).apply(p, x, mutable=["solver_stats"])
    assert jax.tree_util.tree_map(lambda a: (a.dtype, a.item()), st) == \
        jax.tree_util.tree_map(lambda a: (a.dtype, a.item()), st1)


@pytest.mark.parametrize("kw", [{"variable_axes": {"intermediates": 0}},
                                {"variable_broadcast": False},
                                {"variable_carry": "params"},
                                {"split_rngs": {"params": False, "dropout": True}}])
def test_unsupported_scan_options_raise(kw):
  with pytest.raises(ValueError, match="ParallelRNN"):
    ParallelRNN(nn.GRUCell(3), **kw).init(jax.random.PRNGKey(0), jnp.zeros((1, 4, 2)))


def _conv_lstm():
  return nn.ConvLSTMCell(features=4, kernel_size=(3, 3), dtype=jnp.float64,
                         param_dtype=jnp.float64)


@pytest.mark.parametrize("method", ["sequential", "quasi_deer"])
def test_conv_lstm_multi_feature_axes(method):
  """A cell with 3 feature axes (2-D ConvLSTM over 8x8 images, flat state 512)."""
  x = jax.random.normal(jax.random.PRNGKey(3), (2, 12, 8, 8, 3), jnp.float64)
  _compare(_conv_lstm(), method, jnp.float64, True, x=x, lengths=jnp.array([12, 5]))


def test_conv_lstm_time_major():
  cell = _conv_lstm()
  x = jax.random.normal(jax.random.PRNGKey(3), (5, 2, 6, 6, 3), jnp.float64)  # (T, B, H, W, C)
  p = jax.jit(nn.RNN(cell, time_major=True).init)(jax.random.PRNGKey(0), x)
  ref = jax.jit(nn.RNN(cell, time_major=True).apply)(p, x)
  y = jax.jit(ParallelRNN(cell, method="quasi_deer", time_major=True).apply)(p, x)
  assert y.shape == ref.shape == (5, 2, 6, 6, 4)
  np.testing.assert_allclose(y, ref, atol=1e-10, rtol=0)


@pytest.mark.parametrize("method", ["deer", "elk", "ike"])
def test_dense_methods_refuse_big_states(method):
  """deer / elk need dense D x D Jacobians: one clear error above max_dense_state
  (ConvLSTM over 16x16 images: D = 2 * 16 * 16 * 16 = 8192), raised at init already."""
  cell = nn.ConvLSTMCell(features=16, kernel_size=(3, 3))
  x = jnp.zeros((1, 3, 16, 16, 3))
  name = canonical_method(method)
  with pytest.raises(ValueError, match=f"{name} needs a dense D x D Jacobian; state size 8192"
                     f".*use quasi_{name} or sequential"):
    ParallelRNN(cell, method=method).init(jax.random.PRNGKey(0), x)
  # The limit is an attribute, and applies to one-feature-axis cells alike.
  with pytest.raises(ValueError, match="state size 8 "):
    ParallelRNN(nn.GRUCell(8), method=method, max_dense_state=7).init(
        jax.random.PRNGKey(0), jnp.zeros((1, 3, 2)))
