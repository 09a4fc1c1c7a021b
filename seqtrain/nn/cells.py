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

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
from flax import linen as nn


class CellFns(NamedTuple):
  project: Callable  # (params, xs (..., T, F)) -> per-step step inputs
  step: Callable  # (params, carry, x_t) -> carry
  diag: Callable | None  # (params, carry, x_t) -> (carry, diag) or None
  output: Callable  # (carry) -> y


def _dense(p, x):
  y = x @ p["kernel"]
  return y + p["bias"] if "bias" in p else y


def _kdiag(p):
  return jnp.diagonal(p["kernel"])


def _gru(cell):
  def project(p, xs):
    return jnp.stack([_dense(p["ir"], xs), _dense(p["iz"], xs), _dense(p["in"], xs)], -2)

  def parts(p, h, x):
    r = jax.nn.sigmoid(x[..., 0, :] + _dense(p["hr"], h))
    z = jax.nn.sigmoid(x[..., 1, :] + _dense(p["hz"], h))
    hn = _dense(p["hn"], h)
    n = jnp.tanh(x[..., 2, :] + r * hn)
    return r, z, hn, n

  def step(p, h, x):
    _, z, _, n = parts(p, h, x)
    return (1.0 - z) * n + z * h

  def diag(p, h, x):
    r, z, hn, n = parts(p, h, x)
    dz = z * (1 - z) * _kdiag(p["hz"])
    dr = r * (1 - r) * _kdiag(p["hr"])
    dn = (1 - n * n) * (dr * hn + r * _kdiag(p["hn"]))
    return (1.0 - z) * n + z * h, -dz * n + (1 - z) * dn + dz * h + z

  return CellFns(project, step, diag, lambda h: h)


def _lstm(cell):
  gates = ("i", "f", "g", "o")

  def project(p, xs):
    return jnp.stack([_dense(p["i" + g], xs) for g in gates], -2)

  def parts(p, carry, x):
    c, h = carry
    pre = [x[..., k, :] + _dense(p["h" + g], h) for k, g in enumerate(gates)]
    i, f, o = jax.nn.sigmoid(pre[0]), jax.nn.sigmoid(pre[1]), jax.nn.sigmoid(pre[3])
    g = jnp.tanh(pre[2])
    c_new = f * c + i * g
    return c, i, f, g, o, c_new, jnp.tanh(c_new)

  def step(p, carry, x):
    _, _, _, _, o, c_new, tc = parts(p, carry, x)
    return c_new, o * tc

  def diag(p, carry, x):
    c, i, f, g, o, c_new, tc = parts(p, carry, x)
    di = i * (1 - i) * _kdiag(p["hi"])
    df = f * (1 - f) * _kdiag(p["hf"])
    dg = (1 - g * g) * _kdiag(p["hg"])
    do = o * (1 - o) * _kdiag(p["ho"])
    dc_dh = df * c + di * g + i * dg
    dh_dh = do * tc + o * (1 - tc * tc) * dc_dh
    return (c_new, o * tc), (f, dh_dh)

  return CellFns(project, step, diag, lambda carry: carry[1])


def _simple(cell):
  def project(p, xs):
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

  def output(carry):
    raise NotImplementedError  # outputs are recomputed by the layer

  return CellFns(lambda p, xs: xs, step, None, output)


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

  h' = (1 - z) n + z h,  z = sigma(W_z x + u_z * h + b_z),
  r = sigma(W_r x + u_r * h + b_r),  n = tanh(W_n x + b_n + r * (u_n * h + c_n)).
  Each unit sees only its own past, so df/dh is exactly diagonal and
  quasi-DEER is exact Newton.
  """
  features: int
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, carry, inputs):
    xp = _diag_gru_project(self, inputs)
    new = _diag_gru_step(self.variables["params"], carry, xp)
    return new, new

  @nn.nowrap
  def initialize_carry(self, rng, input_shape):
    return jnp.zeros(input_shape[:-1] + (self.features,), self.param_dtype)

  @property
  def num_feature_axes(self) -> int:
    return 1


def _diag_gru_project(cell, inputs):
  dense = lambda name: nn.Dense(cell.features, name=name, param_dtype=cell.param_dtype)
  xp = jnp.stack([dense("iz")(inputs), dense("ir")(inputs), dense("in")(inputs)], -2)
  init = nn.initializers.uniform(1.0)
  for name in ("uz", "ur", "un"):
    cell.param(name, lambda k, s, d: init(k, s, d) * 2 - 1, (cell.features,), cell.param_dtype)
  cell.param("cn", nn.initializers.zeros_init(), (cell.features,), cell.param_dtype)
  return xp


def _diag_gru_parts(p, h, x):
  z = jax.nn.sigmoid(x[..., 0, :] + p["uz"] * h)
  r = jax.nn.sigmoid(x[..., 1, :] + p["ur"] * h)
  hn = p["un"] * h + p["cn"]
  n = jnp.tanh(x[..., 2, :] + r * hn)
  return z, r, hn, n


def _diag_gru_step(p, h, x):
  z, _, _, n = _diag_gru_parts(p, h, x)
  return (1.0 - z) * n + z * h


def _diag_gru(cell):
  def project(p, xs):
    return jnp.stack([_dense(p["iz"], xs), _dense(p["ir"], xs), _dense(p["in"], xs)], -2)

  def diag(p, h, x):
    z, r, hn, n = _diag_gru_parts(p, h, x)
    dz = z * (1 - z) * p["uz"]
    dr = r * (1 - r) * p["ur"]
    dn = (1 - n * n) * (dr * hn + r * p["un"])
    return (1.0 - z) * n + z * h, -dz * n + (1 - z) * dn + dz * h + z

  return CellFns(project, _diag_gru_step, diag, lambda h: h)


class DiagLSTMCell(nn.RNNCellBase):
  """LSTM whose recurrent weights are diagonal vectors (ParaLSTM-style).

  Gates g in {i, f, c, o}: pre_g = W_g x + b_g + u_g * h.  With the state
  (c, h), df/d(c, h) has 2x2 blocks per unit; the quasi methods use their
  diagonal (the dc'/dh and dh'/dc couplings are dropped), so convergence is
  fast but not the single exact Newton of DiagGRUCell.
  """
  features: int
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, carry, inputs):
    xp = jnp.stack([nn.Dense(self.features, name="i" + g, param_dtype=self.param_dtype)(inputs)
                    for g in _LSTM_GATES], -2)
    init = nn.initializers.uniform(1.0)
    for g in _LSTM_GATES:
      self.param("u" + g, lambda k, s, d: init(k, s, d) * 2 - 1, (self.features,),
                 self.param_dtype)
    new = _diag_lstm_step(self.variables["params"], carry, xp)
    return new, new[1]

  @nn.nowrap
  def initialize_carry(self, rng, input_shape):
    shape = input_shape[:-1] + (self.features,)
    return jnp.zeros(shape, self.param_dtype), jnp.zeros(shape, self.param_dtype)

  @property
  def num_feature_axes(self) -> int:
    return 1


_LSTM_GATES = ("i", "f", "c", "o")


def _diag_lstm_parts(p, carry, x):
  c, h = carry
  pre = [x[..., k, :] + p["u" + g] * h for k, g in enumerate(_LSTM_GATES)]
  i, f, o = jax.nn.sigmoid(pre[0]), jax.nn.sigmoid(pre[1]), jax.nn.sigmoid(pre[3])
  g = jnp.tanh(pre[2])
  c_new = f * c + i * g
  return c, i, f, g, o, c_new, jnp.tanh(c_new)


def _diag_lstm_step(p, carry, x):
  _, _, _, _, o, c_new, tc = _diag_lstm_parts(p, carry, x)
  return c_new, o * tc


def _diag_lstm(cell):
  def project(p, xs):
    return jnp.stack([_dense(p["i" + g], xs) for g in _LSTM_GATES], -2)

  def diag(p, carry, x):
    c, i, f, g, o, c_new, tc = _diag_lstm_parts(p, carry, x)
    dc_dh = f * (1 - f) * p["uf"] * c + i * (1 - i) * p["ui"] * g + i * (1 - g * g) * p["uc"]
    dh_dh = o * (1 - o) * p["uo"] * tc + o * (1 - tc * tc) * dc_dh
    return (c_new, o * tc), (f, dh_dh)

  return CellFns(project, _diag_lstm_step, diag, lambda carry: carry[1])


_BUILTIN = {}  # filled below; type -> factory


def _register():
  _BUILTIN[DiagGRUCell] = _diag_gru
  _BUILTIN[DiagLSTMCell] = _diag_lstm


_register()
