"""Pure-JAX recurrent cells for solver tests (the Flax cells live in seqtrain.nn)."""
import jax
import jax.numpy as jnp
import numpy as np


def _orth(key, d, dtype, gain=1.0):
  q, r = np.linalg.qr(np.asarray(jax.random.normal(key, (d, d), jnp.float64 if dtype == jnp.float64 else jnp.float32)))
  q = q * np.sign(np.diag(r))
  return jnp.asarray(gain * q, dtype)


def _lecun(key, shape, dtype):
  return (jax.random.normal(key, shape, dtype) / np.sqrt(shape[0])).astype(dtype)


# GRU in Flax's convention: n = tanh(W_n x + b_n + r * (U_n h + c_n)).
def gru_params(key, din, d, dtype):
  k = jax.random.split(key, 8)
  return dict(wz=_lecun(k[0], (din, d), dtype), wr=_lecun(k[1], (din, d), dtype),
              wn=_lecun(k[2], (din, d), dtype), uz=_orth(k[3], d, dtype),
              ur=_orth(k[4], d, dtype), un=_orth(k[5], d, dtype),
              bz=0.1 * jax.random.normal(k[6], (d,), dtype), cn=0.1 * jax.random.normal(k[7], (d,), dtype))


def _gru_parts(p, h, x):
  z = jax.nn.sigmoid(x @ p["wz"] + h @ p["uz"] + p["bz"])
  r = jax.nn.sigmoid(x @ p["wr"] + h @ p["ur"])
  hn = h @ p["un"] + p["cn"]
  n = jnp.tanh(x @ p["wn"] + r * hn)
  return z, r, hn, n


def gru_step(p, h, x):
  z, _, _, n = _gru_parts(p, h, x)
  return (1 - z) * n + z * h


def gru_diag(p, h, x):
  z, r, hn, n = _gru_parts(p, h, x)
  dz = z * (1 - z) * jnp.diagonal(p["uz"])
  dr = r * (1 - r) * jnp.diagonal(p["ur"])
  dn = (1 - n * n) * (dr * hn + r * jnp.diagonal(p["un"]))
  return (1 - z) * n + z * h, -dz * n + (1 - z) * dn + dz * h + z


# LSTM with a (c, h) pytree carry.
def lstm_params(key, din, d, dtype):
  k = jax.random.split(key, 3)
  return dict(w=_lecun(k[0], (din, 4 * d), dtype),
              u=jnp.concatenate([_orth(kk, d, dtype) for kk in jax.random.split(k[1], 4)], 1),
              b=0.1 * jax.random.normal(k[2], (4 * d,), dtype))


def lstm_step(p, carry, x):
  c, h = carry
  i, f, g, o = jnp.split(x @ p["w"] + h @ p["u"] + p["b"], 4, -1)
  c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
  return c, jax.nn.sigmoid(o) * jnp.tanh(c)


# Elman tanh cell.
def tanh_params(key, din, d, dtype, gain=0.8):
  k = jax.random.split(key, 3)
  return dict(w=_lecun(k[0], (din, d), dtype), u=_orth(k[1], d, dtype, gain),
              b=0.1 * jax.random.normal(k[2], (d,), dtype))


def tanh_step(p, h, x):
  return jnp.tanh(x @ p["w"] + h @ p["u"] + p["b"])


CELLS = {
    "gru": (gru_params, gru_step, lambda d, dt: jnp.zeros((d,), dt)),
    "lstm": (lstm_params, lstm_step, lambda d, dt: (jnp.zeros((d,), dt), jnp.zeros((d,), dt))),
    "tanh": (tanh_params, tanh_step, lambda d, dt: jnp.zeros((d,), dt)),
}


def make_problem(cell, d, t, dtype, seed=0, din=3):
  init, step, h0_fn = CELLS[cell]
  k1, k2, k3 = jax.random.split(jax.random.PRNGKey(seed), 3)
  params = init(k1, din, d, dtype)
  xs = jax.random.normal(k2, (t, din), dtype)
  leaves, tree = jax.tree_util.tree_flatten(h0_fn(d, dtype))
  keys = jax.random.split(k3, len(leaves))
  h0 = tree.unflatten([0.5 * jax.random.normal(kk, l.shape, dtype) for kk, l in zip(keys, leaves)])
  return step, params, h0, xs
