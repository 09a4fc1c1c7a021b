"""Sequence classifiers: shapes, masking, logical axes, and a quick training run."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn

from seqtrain.models import SequenceClassifier


def _task(key, n, t=32, classes=3):
  """Class k: a sine of frequency k+1 buried in noise (length varies per example)."""
  k1, k2, k3 = jax.random.split(key, 3)
  y = jax.random.randint(k1, (n,), 0, classes)
  steps = jnp.arange(t) / t
  phase = jax.random.uniform(k2, (n, 1)) * 2 * jnp.pi
  sig = jnp.sin(2 * jnp.pi * (y[:, None] + 1) * steps[None] + phase)
  x = sig[..., None] + 0.3 * jax.random.normal(k3, (n, t, 1))
  return x.astype(jnp.float32), y


@pytest.mark.parametrize("pooling", ["mean", "last", "mean_logits"])
def test_shapes_and_padding_invariance(pooling):
  model = SequenceClassifier(num_classes=4, width=8, depth=2, pooling=pooling)
  x = jax.random.normal(jax.random.PRNGKey(0), (3, 20, 5))
  lengths = jnp.array([20, 11, 4])
  params = model.init(jax.random.PRNGKey(1), x, lengths)
  logits = model.apply(params, x, lengths)
  assert logits.shape == (3, 4)
  # Changing padded steps changes nothing.
  x2 = x.at[1, 11:].set(100.0).at[2, 4:].set(-7.0)
  np.testing.assert_allclose(model.apply(params, x2, lengths), logits, atol=1e-5)


def test_logical_axis_names_on_params():
  model = SequenceClassifier(num_classes=2, width=8, depth=1)
  boxed = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 5, 3)))
  specs = nn.get_partition_spec(boxed)["params"]
  assert tuple(specs["encoder"]["kernel"]) == ("features", "embed")
  assert tuple(specs["head"]["kernel"]) == ("embed", "classes")


def test_bad_names_fail_clearly():
  with pytest.raises(ValueError, match="unknown pooling"):
    SequenceClassifier(2, pooling="attention").init(jax.random.PRNGKey(0), jnp.zeros((1, 5, 3)))
  with pytest.raises(ValueError, match="unknown cell"):
    SequenceClassifier(2, cell="rwkv").init(jax.random.PRNGKey(0), jnp.zeros((1, 5, 3)))


def test_classifier_trains_on_synthetic_task():
  model = SequenceClassifier(num_classes=3, width=16, depth=1, method="quasi_deer")
  x, y = _task(jax.random.PRNGKey(0), 256)
  xt, yt = _task(jax.random.PRNGKey(1), 256)
  params = nn.unbox(model.init(jax.random.PRNGKey(2), x[:2]))
  opt = optax.adam(1e-2)
  state = opt.init(params)

  @jax.jit
  def train_step(params, state, xb, yb):
    def loss(p):
      logits = model.apply(p, xb)
      return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()
    l, g = jax.value_and_grad(loss)(params)
    upd, state = opt.update(g, state, params)
    return optax.apply_updates(params, upd), state, l

  for i in range(150):
    j = (i * 32) % 256
    params, state, l = train_step(params, state, x[j:j + 32], y[j:j + 32])
  acc = float(jnp.mean(jnp.argmax(model.apply(params, xt), -1) == yt))
  print(f"\nheld-out accuracy {acc:.3f} (final train loss {float(l):.3f})")
  assert acc > 0.9
