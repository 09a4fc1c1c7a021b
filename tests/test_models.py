"""Sequence classifiers: shapes, masking, parameters, and a quick training run."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn

from seqtrain.models import SequenceClassifier

pytestmark = pytest.mark.x64  # float64 exactness against lax.scan (tests/conftest.py)


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


def test_series_norm_stem_and_max_pooling_ignore_padding():
  """The real-data front end: per-series standardisation (+ level and log scale), a
  causal conv stem and mean+max pooling; padded steps still change nothing."""
  model = SequenceClassifier(num_classes=4, width=8, depth=1, pooling="mean_max",
                             series_norm=True, stem_kernel=5)
  x = jax.random.normal(jax.random.PRNGKey(0), (3, 20, 2))
  lengths = jnp.array([20, 11, 4])
  params = model.init(jax.random.PRNGKey(1), x, lengths)
  logits = model.apply(params, x, lengths)
  x2 = x.at[1, 11:].set(100.0).at[2, 4:].set(-7.0)
  np.testing.assert_allclose(model.apply(params, x2, lengths), logits, atol=1e-5)
  assert params["params"]["stem"]["kernel"].shape == (5, 6, 8)  # 3C inputs


def test_ensemble_members_are_independent_and_average_probabilities():
  model = SequenceClassifier(num_classes=3, width=8, depth=1, members=3, pooling="mean_max")
  single = SequenceClassifier(num_classes=3, width=8, depth=1, pooling="mean_max")
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 12, 4))
  lengths = jnp.array([12, 5])
  params = nn.unbox(model.init(jax.random.PRNGKey(1), x, lengths))
  kernel = params["params"]["members"]["head"]["kernel"]
  assert kernel.shape[0] == 3 and not np.allclose(kernel[0], kernel[1])  # own initialisations
  member_logits = model.apply(params, x, lengths, train=True)
  assert member_logits.shape == (3, 2, 3)
  for k in range(3):   # member k is the single model with member k's parameters
    pk = jax.tree.map(lambda a: a[k], params["params"]["members"])
    np.testing.assert_allclose(single.apply({"params": pk}, x, lengths), member_logits[k],
                               atol=1e-5)
  probs = jnp.mean(jax.nn.softmax(member_logits), axis=0)
  np.testing.assert_allclose(jnp.exp(model.apply(params, x, lengths)), probs, atol=1e-6)


def test_series_norm_values():
  from seqtrain.models.classifier import series_norm
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 9, 2), jnp.float64)
  x = x.at[1].multiply(1000.0).at[1].add(5.0)
  mask = jnp.arange(9)[None] < jnp.array([9, 6])[:, None]
  out = series_norm(x, mask)
  assert out.shape == (2, 9, 6)
  for b, n in ((0, 9), (1, 6)):
    z = out[b, :n, :2]
    np.testing.assert_allclose(z.mean(0), 0, atol=1e-9)
    np.testing.assert_allclose(z.std(0), 1, atol=1e-6)
    valid = x[b, :n]
    np.testing.assert_allclose(out[b, :n, 2:4], np.broadcast_to(valid.mean(0), (n, 2)), rtol=1e-9)
    np.testing.assert_allclose(out[b, :n, 4:], np.broadcast_to(np.log(valid.std(0)), (n, 2)),
                               rtol=1e-6)
  assert not np.any(out[1, 6:])   # padded steps are 0


def test_params_are_plain_arrays():
  """No boxed (logical-axis) metadata: the training loop replicates parameters."""
  model = SequenceClassifier(num_classes=2, width=8, depth=1, stem_kernel=3, members=2)
  params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 5, 3)))["params"]
  leaves = jax.tree_util.tree_leaves(params, is_leaf=lambda v: isinstance(v, nn.meta.AxisMetadata))
  assert leaves and all(isinstance(v, jax.Array) for v in leaves)


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


def test_ensemble_members_apply_dropout_in_training():
  """nn.vmap drops keyword arguments; ``train`` must still reach the members."""
  model = SequenceClassifier(num_classes=3, width=8, depth=1, members=2, dropout=0.5,
                             method="sequential")
  x = jax.random.normal(jax.random.key(0), (2, 16, 2))
  params = model.init(jax.random.key(1), x)["params"]
  run = lambda train, key: model.apply({"params": params}, x, train=train,
                                       rngs={"dropout": jax.random.key(key)},
                                       mutable=["solver_stats"])[0]
  assert float(jnp.max(jnp.abs(run(True, 2) - run(True, 3)))) > 1e-3
  np.testing.assert_array_equal(run(False, 2), run(False, 3))


def test_recompute_gives_the_same_training_step():
  """``recompute``: the backward pass recomputes each block from its input; the
  loss, the gradients, the dropout masks and the solver statistics are those
  of the stored forward pass (float64; an ensemble of two, so nn.vmap too)."""
  x = jax.random.normal(jax.random.key(0), (3, 24, 2), jnp.float64)
  lengths = jnp.array([24, 17, 9])
  y = jnp.array([0, 1, 2])
  kw = dict(num_classes=3, width=8, depth=2, method="quasi_deer", dropout=0.3, members=2,
            mlp_ratio=2, solver_options={"atol": 1e-9, "rtol": 1e-9})
  params = SequenceClassifier(**kw).init(jax.random.key(1), x, lengths)["params"]

  def step(recompute):
    model = SequenceClassifier(**kw, recompute=recompute)

    def loss(p):
      logits, stats = model.apply({"params": p}, x, lengths, train=True,
                                  rngs={"dropout": jax.random.key(2)}, mutable=["solver_stats"])
      logp = jax.nn.log_softmax(logits)
      return -jnp.mean(jnp.take_along_axis(logp, y.reshape((1,) * (logp.ndim - 2) + (3, 1)),
                                           -1)), stats
    return jax.jit(jax.value_and_grad(loss, has_aux=True))(params)

  (l0, s0), g0 = step(False)
  (l1, s1), g1 = step(True)
  np.testing.assert_allclose(l1, l0, rtol=1e-12)
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12),
                         g1, g0)
  assert jax.tree_util.tree_structure(s1) == jax.tree_util.tree_structure(s0)
  jax.tree_util.tree_map(np.testing.assert_array_equal, s1, s0)
