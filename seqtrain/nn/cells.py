"""Parallel-friendly forms of Flax's built-in RNN cells.

For GRUCell, LSTMCell and SimpleCell (with their default activations) the
input projections are computed once for all T outside the solver, and the
step only applies the recurrent part, with an analytic diagonal Jacobian.
The parameter names are Flax's own, so the parameter tree is unchanged.
Any other cell (or a built-in one with custom activations) goes through the
generic path: the cell itself is the step, and the quasi methods take the
diagonal from forward-mode JVPs.
"""
from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
from flax import linen as nn


class CellFns(NamedTuple):
  project: Callable  # (params, xs (..., T, F), split) -> per-step step inputs
  step: Callable  # (params, carry, x_t) -> carry
  diag: Callable | None  # (params, carry, x_t) -> (carry, diag) or None
  output: Callable | None  # (carry) -> y; None: the layer re-applies the cell


def _dense(p, x):
  y = x @ p["kernel"]
  return y + p["bias"] if "bias" in p else y


def _kdiag(p):
  return jnp.diagonal(p["kernel"])


def _stacked_dense(layers, x):
  """The Dense layers applied to x as ONE matmul with their kernels side by side:
  (..., F) -> (..., G * D), gate k in columns [k D, (k + 1) D)."""
  kernel = jnp.concatenate([l["kernel"] for l in layers], -1)
  y = x @ kernel
  if any("bias" in l for l in layers):
    y = y + jnp.concatenate([l["bias"] if "bias" in l else jnp.zeros_like(l["kernel"][0])
                             for l in layers], -1)
  return y


def _gate_inputs(layers, xs, split: bool):
  """Input projections of the gates for all T, as one matmul.

  ``split``: one array per gate, for lax.scan: XLA:CPU slices a step's input
  out of a stacked array slowly.  Otherwise one (..., G D) array, for the chunked
  solvers, which read every input at a stride once per position.  Both measured
  on CPU: benchmarks/results/cpu-2core-2026-11-27/layout_choices.md."""
  y = _stacked_dense(layers, xs)
  return tuple(jnp.split(y, len(layers), axis=-1)) if split else y


def _gates(a, g: int):
  """The G gates of split (tuple) or stacked (..., G D) arrays. One split, not G
  slices: its transpose (in every VJP) is one concatenate, where G slices
  transpose to G zero-padded full-width copies that XLA:CPU materialises."""
  return tuple(a) if isinstance(a, (tuple, list)) else tuple(jnp.split(a, g, axis=-1))


def _gru_fns(rec, rec_diag, names=("ir", "iz", "in")):
  """GRU in Flax's convention with recurrent maps rec(p, h) -> (..., 3 D) for the
  gates "r", "z", "n" side by side (n's map carries the bias) and their diagonals
  rec_diag(p, gate)."""
  def project(p, xs, split=True):
    return _gate_inputs([p[k] for k in names], xs, split)

  def parts(p, h, x):
    xr, xz, xn = _gates(x, 3)
    pr, pz, hn = _gates(rec(p, h), 3)
    r = jax.nn.sigmoid(xr + pr)
    z = jax.nn.sigmoid(xz + pz)
    n = jnp.tanh(xn + r * hn)
    return r, z, hn, n

  def step(p, h, x):
    _, z, _, n = parts(p, h, x)
    return (1.0 - z) * n + z * h

  def diag(p, h, x):
    r, z, hn, n = parts(p, h, x)
    dz = z * (1 - z) * rec_diag(p, "z")
    dr = r * (1 - r) * rec_diag(p, "r")
    dn = (1 - n * n) * (dr * hn + r * rec_diag(p, "n"))
    return (1.0 - z) * n + z * h, -dz * n + (1 - z) * dn + dz * h + z

  return CellFns(project, step, diag, lambda h: h)


def _gru(cell):
  return _gru_fns(lambda p, h: _stacked_dense([p["hr"], p["hz"], p["hn"]], h),
                  lambda p, g: _kdiag(p["h" + g]))


_LSTM_GATES = ("i", "f", "g", "o")


def _lstm_fns(rec, rec_diag):
  """LSTM with recurrent maps rec(p, h) -> (..., 4 D) for the gates i, f, g, o side
  by side, and diagonals rec_diag(p, gate)."""
  def project(p, xs, split=True):
    return _gate_inputs([p["i" + g] for g in _LSTM_GATES], xs, split)

  def parts(p, carry, x):
    c, h = carry
    g = len(_LSTM_GATES)
    pre = [a + b for a, b in zip(_gates(x, g), _gates(rec(p, h), g))]
    i, f, o = jax.nn.sigmoid(pre[0]), jax.nn.sigmoid(pre[1]), jax.nn.sigmoid(pre[3])
    g = jnp.tanh(pre[2])
    c_new = f * c + i * g
    return c, i, f, g, o, c_new, jnp.tanh(c_new)

  def step(p, carry, x):
    _, _, _, _, o, c_new, tc = parts(p, carry, x)
    return c_new, o * tc

  def diag(p, carry, x):
    c, i, f, g, o, c_new, tc = parts(p, carry, x)
    dc_dh = (f * (1 - f) * rec_diag(p, "f") * c + i * (1 - i) * rec_diag(p, "i") * g
             + i * (1 - g * g) * rec_diag(p, "g"))
    dh_dh = o * (1 - o) * rec_diag(p, "o") * tc + o * (1 - tc * tc) * dc_dh
    return (c_new, o * tc), (f, dh_dh)

  return CellFns(project, step, diag, lambda carry: carry[1])


def _lstm(cell):
  return _lstm_fns(lambda p, h: _stacked_dense([p["h" + g] for g in _LSTM_GATES], h),
                   lambda p, g: _kdiag(p["h" + g]))


def _simple(cell):
  def project(p, xs, split=True):
    return _dense(p["i"], xs)

  def step(p, h, x):
    return jnp.tanh(x + _dense(p["h"], h))

  def diag(p, h, x):
    y = step(p, h, x)
    return y, (1 - y * y) * _kdiag(p["h"])

  return CellFns(project, step, diag, lambda h: h)


def _generic(cell):
  """Any RNNCellBase: the cell is the step; diagonal from JVPs."""
  cell_def = cell.clone(parent=None)

  def step(p, carry, x):
    return cell_def.apply({"params": p}, carry, x)[0]

  return CellFns(lambda p, xs, split=True: xs, step, None, None)


def _default_acts(cell, gate=True):
  ok = getattr(cell, "activation_fn", nn.tanh) in (nn.tanh, jnp.tanh, jax.nn.tanh)
  if gate:
    ok = ok and getattr(cell, "gate_fn", nn.sigmoid) in (nn.sigmoid, jax.nn.sigmoid)
  return ok


def cell_functions(cell: nn.RNNCellBase) -> tuple[CellFns, bool]:
  """(functions, is_builtin) for a cell."""
  if type(cell) is nn.GRUCell and _default_acts(cell):
    return _gru(cell), True
  if type(cell) in (nn.LSTMCell, nn.OptimizedLSTMCell) and _default_acts(cell):
    return _lstm(cell), True
  if type(cell) is nn.SimpleCell and _default_acts(cell, gate=False) and not cell.residual:
    return _simple(cell), True
  if type(cell) in _BUILTIN:
    return _BUILTIN[type(cell)](cell), True
  return _generic(cell), False


class DiagGRUCell(nn.RNNCellBase):
  """GRU whose recurrent weights are diagonal vectors (ParaGRU-style).

  h' = (1 - z) n + z h,  z = sigma(W_z x + b_z + u_z * h),
  r = sigma(W_r x + b_r + u_r * h),  n = tanh(W_n x + b_n + r * (u_n * h + c_n)).
  Each unit sees only its own past, so df/dh is exactly diagonal and
  quasi-DEER is exact Newton.
  """
  features: int
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, carry, inputs):
    xp = tuple(nn.Dense(self.features, name=name, param_dtype=self.param_dtype)(inputs)
               for name in ("ir", "iz", "in"))
    _diag_params(self, ("r", "z", "n"), biased=("n",))
    new = _diag_gru(self).step(self.variables["params"], carry, xp)
    return new, new

  @nn.nowrap
  def initialize_carry(self, rng, input_shape):
    return jnp.zeros(input_shape[:-1] + (self.features,), self.param_dtype)

  @property
  def num_feature_axes(self) -> int:
    return 1


def _diag_rec_gates(gates):
  """Diagonal recurrent maps u_g * h (+ c_g) of the gates, side by side: (..., G D)."""
  def rec(p, h):
    return jnp.concatenate([p["u" + g] * h + (p["c" + g] if "c" + g in p else 0)
                            for g in gates], -1)
  return rec


def _diag_rec_diag(p, g):
  return p["u" + g]


def _diag_params(cell, gates, biased=()):
  init = nn.initializers.uniform(1.0)
  for g in gates:
    cell.param("u" + g, lambda k, s, d: init(k, s, d) * 2 - 1, (cell.features,), cell.param_dtype)
  for g in biased:
    cell.param("c" + g, nn.initializers.zeros_init(), (cell.features,), cell.param_dtype)


def _diag_gru(cell):
  return _gru_fns(_diag_rec_gates("rzn"), _diag_rec_diag)


class DiagLSTMCell(nn.RNNCellBase):
  """LSTM whose recurrent weights are diagonal vectors (ParaLSTM-style).

  Gates g in {i, f, g, o}: pre_g = W_g x + b_g + u_g * h.  With the state
  (c, h), df/d(c, h) has 2x2 blocks per unit; the quasi methods use their
  diagonal (the dc'/dh and dh'/dc couplings are dropped), so convergence is
  fast but not the single exact Newton of DiagGRUCell.
  """
  features: int
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, carry, inputs):
    xp = tuple(nn.Dense(self.features, name="i" + g, param_dtype=self.param_dtype)(inputs)
               for g in _LSTM_GATES)
    _diag_params(self, _LSTM_GATES)
    new = _diag_lstm(self).step(self.variables["params"], carry, xp)
    return new, new[1]

  @nn.nowrap
  def initialize_carry(self, rng, input_shape):
    shape = input_shape[:-1] + (self.features,)
    return jnp.zeros(shape, self.param_dtype), jnp.zeros(shape, self.param_dtype)

  @property
  def num_feature_axes(self) -> int:
    return 1


def _diag_lstm(cell):
  return _lstm_fns(_diag_rec_gates(_LSTM_GATES), _diag_rec_diag)


def _lru_lambda(p):
  """The complex diagonal lambda = exp(-exp(nu_log) + i exp(theta_log))."""
  return jnp.exp(-jnp.exp(p["nu_log"]) + 1j * jnp.exp(p["theta_log"]))


def _lru(cell):
  """h' = lambda * h + gamma * (B x): linear in h, so the quasi methods' diagonal
  (lambda itself) is the exact Jacobian and Newton ends in one iteration."""
  def project(p, xs, split=True):
    # Two real matmuls (a complex one is several times slower on CPU).
    g = jnp.exp(p["gamma_log"])
    return jax.lax.complex(xs @ (p["B_re"] * g), xs @ (p["B_im"] * g))

  def step(p, h, bx):
    return _lru_lambda(p) * h + bx

  def diag(p, h, bx):
    lam = _lru_lambda(p)
    return lam * h + bx, jnp.broadcast_to(lam, h.shape)

  return CellFns(project, step, diag, lambda h: jnp.concatenate([h.real, h.imag], -1))


def _ring_init(min_timescale, max_timescale):
  """nu_log for |lambda| = 1 - 1/tau with tau log-uniform in [min, max]."""
  def init(key, shape, dtype):
    tau = jnp.exp(jax.random.uniform(key, shape, jnp.float32, jnp.log(min_timescale),
                                     jnp.log(max_timescale)))
    nu = -jnp.log1p(-1.0 / tau)   # |lambda| = exp(-nu)
    return jnp.log(nu).astype(dtype)
  return init


class LRUCell(nn.RNNCellBase):
  """Linear recurrent unit (Orvieto et al. 2023): a complex diagonal recurrence.

  h' = lambda * h + gamma * (B x), lambda = exp(-exp(nu_log) + i exp(theta_log)),
  gamma = sqrt(1 - |lambda|^2) at initialisation (learned as gamma_log), B
  complex.  The carry is complex (``features`` units); the output is
  [Re h, Im h] (2 * ``features`` reals).  Each unit is a damped rotation: a
  resonator at frequency theta / (2 pi) cycles per step with memory
  1 / (1 - |lambda|) steps, so the layer can integrate over long times and pick
  out oscillations, which a real diagonal recurrence cannot.

  Initialisation for long sequences: memories log-uniform in
  [``min_timescale``, ``max_timescale``] steps (the eigenvalues on a ring
  close to 1), phases uniform in [0, ``max_phase``].  Being linear in h with a
  diagonal Jacobian, every parallel method is exact Newton here: quasi-DEER and
  DEER end after one iteration.
  """
  features: int
  min_timescale: float = 4.0
  max_timescale: float = 4096.0
  max_phase: float = math.pi
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, carry, inputs):
    f = inputs.shape[-1]
    nu_log = self.param("nu_log", _ring_init(self.min_timescale, self.max_timescale),
                        (self.features,), self.param_dtype)
    self.param("theta_log", lambda k, s, d: jnp.log(
        jax.random.uniform(k, s, d, 1e-3, 1.0) * self.max_phase), (self.features,),
               self.param_dtype)
    self.param("gamma_log", lambda k, s, d: 0.5 * jnp.log1p(-jnp.exp(-2 * jnp.exp(nu_log))
                                                            ).astype(d),
               (self.features,), self.param_dtype)
    b_init = nn.initializers.normal(1.0 / math.sqrt(2 * f))
    for name in ("B_re", "B_im"):
      self.param(name, b_init, (f, self.features), self.param_dtype)
    fns = _lru(self)
    p = self.variables["params"]
    new = fns.step(p, carry, fns.project(p, inputs)).astype(carry.dtype)
    return new, fns.output(new)

  @nn.nowrap
  def initialize_carry(self, rng, input_shape):
    dtype = jnp.result_type(self.param_dtype, jnp.complex64)
    return jnp.zeros(input_shape[:-1] + (self.features,), dtype)

  @property
  def num_feature_axes(self) -> int:
    return 1


_BUILTIN = {}  # filled below; type -> factory


def _register():
  _BUILTIN[DiagGRUCell] = _diag_gru
  _BUILTIN[DiagLSTMCell] = _diag_lstm
  _BUILTIN[LRUCell] = _lru


_register()
