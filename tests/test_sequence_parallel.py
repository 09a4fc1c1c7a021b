"""Sequence parallelism: one sequence's time axis sharded over a mesh axis.

``solve(..., seq_axis="seq")`` inside ``jax.shard_map`` against lax.scan on the
whole sequence (states and gradients, float64 and float32, random cells and
random shapes), the policies (fallback, NaN, errors), and the classifier's
logits and gradients with and without the axis.

The checks need 4 devices (8 for training on a (data, seq) = (2, 4) mesh).  The
suite's process has one CPU device (the device count is fixed when JAX starts),
so there this module runs itself once in a subprocess with
``--xla_force_host_platform_device_count=8`` and reports that run's failures.
"""
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytestmark = pytest.mark.x64  # float64 exactness against lax.scan (tests/conftest.py)

DEVICES = 4
FORCED = 8

if jax.device_count() < FORCED:

  def test_sequence_parallel_on_eight_devices():
    env = dict(os.environ)
    env["XLA_FLAGS"] = " ".join([env.get("XLA_FLAGS", ""),
                                 f"--xla_force_host_platform_device_count={FORCED}"])
    env.pop("PYTEST_XDIST_WORKER", None)
    here = Path(__file__).resolve()
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-p", "no:xdist",
         "-p", "no:randomly", str(here)],
        cwd=here.parent.parent, env=env, capture_output=True, text=True, timeout=900)
    tail = (proc.stdout + proc.stderr)[-6000:]
    assert proc.returncode == 0, tail
    assert " passed" in tail and "skipped" not in tail, tail

else:
  from hypothesis import HealthCheck, given, settings, strategies as st
  from jax.sharding import AxisType, PartitionSpec as P

  from cells import make_problem
  from seqtrain.models.classifier import SequenceClassifier
  from seqtrain.nn import DiagGRUCell, ParallelRNN
  from seqtrain.solvers import solve
  from seqtrain.solvers.stopping import STATUS

  def _mesh(n=DEVICES):
    return jax.make_mesh((n,), ("seq",), axis_types=(AxisType.Auto,),
                         devices=jax.devices()[:n])

  def _sharded_solver(step, method, n=DEVICES, **opts):
    """jit(shard_map(solve)): params / h0 replicated, xs sharded along time;
    out_specs P() for info checks (with shard_map's default checks) that it
    is typed equal on every device."""
    def inner(p, h0, xs):
      return solve(step, p, h0, xs, method, seq_axis="seq", **opts)
    return jax.jit(jax.shard_map(inner, mesh=_mesh(n), in_specs=(P(), P(), P("seq")),
                                 out_specs=(P("seq"), P())))

  def _loss(hs):
    return sum(jnp.sum(jnp.sin(leaf)) for leaf in jax.tree_util.tree_leaves(hs))

  def _max_err(a, b):
    return max(float(jnp.max(jnp.abs(x - y))) for x, y in
               zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))

  def _rel_err(a, b):
    return max(float(jnp.max(jnp.abs(x - y)) / (jnp.max(jnp.abs(y)) + 1e-30)) for x, y in
               zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))

  def _reference(step, params, h0, xs):
    run = jax.jit(lambda p, h, x: solve(step, p, h, x, "sequential")[0])
    grad = jax.jit(jax.grad(lambda p, h, x: _loss(run(p, h, x)), argnums=(0, 1, 2)))
    return run(params, h0, xs), grad(params, h0, xs)

  def check(cell, method, d, t, dtype, n=DEVICES, state_tol=None, grad_tol=None, **opts):
    step, params, h0, xs = make_problem(cell, d, t, dtype)
    ref, gref = _reference(step, params, h0, xs)
    f = _sharded_solver(step, method, n, **opts)
    hs, info = f(params, h0, xs)
    g = jax.jit(jax.grad(lambda p, h, x: _loss(f(p, h, x)[0]), argnums=(0, 1, 2)))(
        params, h0, xs)
    f64 = dtype == jnp.float64
    assert _max_err(hs, ref) <= (state_tol or (1e-8 if f64 else 1e-4)), (cell, method, info)
    assert _rel_err(g, gref) <= (grad_tol or (1e-6 if f64 else 1e-4)), (cell, method)
    return info

  @pytest.mark.parametrize("cell,method,adjoint", [
      ("gru", "sequential", None), ("lstm", "sequential", "sequential"),
      ("gru", "deer", "shoot"), ("lstm", "deer", "sequential"),
      ("gru", "quasi_deer", "shoot"), ("lstm", "quasi_deer", "shoot"),
      ("tanh", "quasi_deer", "sequential"), ("tanh", "deer", "shoot")])
  def test_matches_scan_float64(cell, method, adjoint):
    # The parallel solver's own iterate (no fallback, no giving up) is exact.
    info = check(cell, method, 4, 512, jnp.float64, adjoint=adjoint, on_failure="return",
                 give_up=None)
    assert bool(info.converged) and not bool(info.fallback)
    if method != "sequential":
      assert 1 <= int(info.iterations) <= 6, info

  def test_input_gradients_in_time_blocks(monkeypatch):
    """Each device's final VJP in time blocks (adjoint.input_gradients; 128 steps
    per device in 16 blocks of 8): the gradients stay lax.scan's."""
    from seqtrain.solvers import adjoint
    monkeypatch.setattr(adjoint, "GRADIENT_BLOCK", 8)
    check("lstm", "quasi_deer", 4, 512, jnp.float64, on_failure="return", give_up=None)

  @pytest.mark.parametrize("method", ["deer", "quasi_deer"])
  def test_matches_scan_float32(method):
    info = check("gru", method, 8, 1024, jnp.float32, on_failure="return", give_up=None)
    assert bool(info.converged)

  def test_iterations_match_one_device():
    """Same chunking, same Newton: sharding time changes where chunks live,
    not how many iterations the solve takes (untrained LSTM, T = 4096)."""
    step, params, h0, xs = make_problem("lstm", 8, 4096, jnp.float64)
    one = jax.jit(lambda p, h, x: solve(step, p, h, x, "quasi_deer", chunk=32))(params, h0, xs)
    many = _sharded_solver(step, "quasi_deer", chunk=32)(params, h0, xs)
    assert _max_err(one[0], many[0]) <= 1e-10
    assert int(one[1].iterations) == int(many[1].iterations)

  @settings(max_examples=5, deadline=None, derandomize=True,
            suppress_health_check=[HealthCheck.too_slow])
  @given(n=st.sampled_from([1, 2, 4]), block=st.integers(1, 40), d=st.integers(1, 6),
         chunk=st.sampled_from([None, 1, 3, 8]), method=st.sampled_from(["deer", "quasi_deer"]),
         cell=st.sampled_from(["gru", "lstm", "tanh"]))
  def test_random_shapes(n, block, d, chunk, method, cell):
    """Any block length (chunks then divide it), any state size, P in 1, 2, 4."""
    check(cell, method, d, n * block, jnp.float64, n=n, chunk=chunk)

  def test_unconverged_falls_back_to_the_sequential_chain():
    """max_iter=1 cannot converge: the default policy passes the carry device
    to device (sequential, exact), and reports the fallback."""
    info = check("gru", "quasi_deer", 4, 256, jnp.float64, max_iter=1, give_up=None,
                 state_tol=1e-12, grad_tol=1e-10)
    assert not bool(info.converged) and bool(info.fallback)
    assert STATUS[int(info.status)] == "max_iter"

  def test_unconverged_iterate_is_flagged_not_returned_as_converged():
    step, params, h0, xs = make_problem("gru", 4, 256, jnp.float64)
    ref, _ = _reference(step, params, h0, xs)
    hs, info = _sharded_solver(step, "quasi_deer", max_iter=1, give_up=None,
                               on_failure="return")(params, h0, xs)
    assert not bool(info.converged)
    assert float(info.residual) > 0 and _max_err(hs, ref) > 1e-8

  def test_nonfinite_propagates_as_the_scan_does():
    """A NaN in device 2's block: lax.scan's values everywhere (NaN from there on)."""
    step, params, h0, xs = make_problem("gru", 4, 256, jnp.float64)
    xs = xs.at[150, 0].set(jnp.nan)
    ref = jax.jit(lambda p, h, x: solve(step, p, h, x, "sequential")[0])(params, h0, xs)
    for method in ("deer", "quasi_deer"):
      hs, info = _sharded_solver(step, method)(params, h0, xs)
      np.testing.assert_array_equal(np.isnan(hs), np.isnan(ref))
      np.testing.assert_allclose(hs[:150], ref[:150], atol=1e-10)
      assert STATUS[int(info.status)] == "nonfinite" and bool(info.fallback)

  @pytest.mark.parametrize("method,opts,needle", [
      ("elk", {}, "use 'deer'"), ("quasi_elk", {}, "use 'quasi_deer'"),
      ("deer", {"mode": "store"}, "mode='shoot'"),
      ("quasi_deer", {"adjoint": "dense"}, "'shoot'")])
  def test_unsupported_options_are_refused(method, opts, needle):
    step, params, h0, xs = make_problem("gru", 2, 16, jnp.float64)
    with pytest.raises(ValueError, match="not sequence-parallel") as e:
      _sharded_solver(step, method, **opts)(params, h0, xs)
    assert needle in str(e.value)

  def test_outside_shard_map_is_refused():
    step, params, h0, xs = make_problem("gru", 2, 16, jnp.float64)
    with pytest.raises(ValueError, match="inside jax.shard_map"):
      solve(step, params, h0, xs, "quasi_deer", seq_axis="seq")

  def test_parallel_rnn_same_params_same_outputs():
    x = jax.random.normal(jax.random.key(1), (2, 64, 3), jnp.float64)
    plain = ParallelRNN(DiagGRUCell(5, param_dtype=jnp.float64), method="quasi_deer",
                        return_carry=True)
    params = plain.init(jax.random.key(0), x)
    sharded = ParallelRNN(DiagGRUCell(5, param_dtype=jnp.float64), method="quasi_deer",
                          return_carry=True, seq_axis="seq")
    assert jax.tree_util.tree_structure(sharded.init(jax.random.key(0), x)) == \
        jax.tree_util.tree_structure(params)
    ref_carry, ref = plain.apply(params, x)
    f = jax.jit(jax.shard_map(lambda v, x: sharded.apply(v, x), mesh=_mesh(),
                              in_specs=(P(), P(None, "seq")), out_specs=(P(), P(None, "seq"))))
    carry, ys = f(params, x)
    assert _max_err(ys, ref) <= 1e-4 and _max_err(carry, ref_carry) <= 1e-4
    with pytest.raises(ValueError, match="seq_lengths and reverse"):
      jax.shard_map(lambda v, x: sharded.apply(v, x, reverse=True), mesh=_mesh(),
                    in_specs=(P(), P(None, "seq")), out_specs=(P(), P(None, "seq")))(params, x)

  @pytest.mark.parametrize("pooling,method,recompute", [
      ("mean", "quasi_deer", False), ("max", "deer", False), ("mean_max", "sequential", False),
      ("last", "quasi_deer", True), ("mean_logits", "sequential", False)])
  def test_classifier_same_logits_and_gradients(pooling, method, recompute):
    """Stem (halo from the previous block), series statistics and pooling across
    devices; lengths that end in different blocks; blocks recomputed in the
    backward pass (``recompute``) across devices too."""
    b, t = 3, 64
    x = jax.random.normal(jax.random.key(1), (b, t, 2), jnp.float64)
    lengths = jnp.array([64, 50, 17])
    y = jnp.array([0, 1, 2])
    kw = dict(num_classes=3, width=8, depth=2, method=method, pooling=pooling, stem_kernel=4,
              series_norm=True, solver_options={"atol": 1e-7, "rtol": 1e-7})
    model = SequenceClassifier(**kw)
    params = model.init(jax.random.key(0), x, lengths)["params"]
    split = SequenceClassifier(**kw, seq_axis="seq", recompute=recompute)
    logits = jax.jit(jax.shard_map(lambda p, x, n: split.apply({"params": p}, x, n),
                                   mesh=_mesh(), in_specs=(P(), P(None, "seq"), P()),
                                   out_specs=P()))

    def loss(apply):
      def f(p):
        lg = apply(p)
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(lg), y[:, None], 1)), lg
      return jax.jit(jax.value_and_grad(f, has_aux=True))(params)

    (_, ref), gref = loss(lambda p: model.apply({"params": p}, x, lengths))
    (_, out), g = loss(lambda p: logits(p, x, lengths))
    assert _max_err(out, ref) <= 1e-4
    assert _rel_err(g, gref) <= 1e-4


  def _train_losses(axes, shape, devices, overrides, length, steps=10):
    """``steps`` train steps on fixed random batches: per-step (loss, grad norm)
    and the final parameters."""
    from seqtrain.parallel import mesh as mesh_lib
    from seqtrain.train import config as config_lib, steps as steps_lib
    config = config_lib.base_config()
    config.mesh.axes, config.mesh.shape = axes, shape
    config_lib.apply_overrides(config, overrides)
    config_lib.validate(config)
    mesh = mesh_lib.make_mesh(axes, shape, devices)
    setup = steps_lib.build_train_state(config, 3, 2, mesh)
    state = setup.fresh()
    step = jax.jit(steps_lib.make_train_step(setup.model, setup.tx, mesh, setup.lr_schedule))
    rng = np.random.default_rng(0)
    out = []
    for _ in range(steps):
      batch = {"inputs": rng.normal(size=(4, length, 2)).astype(np.float32),
               "lengths": np.array([length, length - 5, length // 3, 9], np.int32),
               "labels": rng.integers(0, 3, 4).astype(np.int32),
               "mask": np.array([1, 1, 1, 0], np.float32), "index": np.arange(4)}
      state, m = step(state, mesh_lib.host_to_global(batch, mesh))
      out.append((float(m["loss"]), float(m["grad_norm"])))
    return np.array(out), jax.tree.map(np.asarray, state.params)

  @pytest.mark.parametrize("overrides", [
      ["model.solver.method=quasi_deer", "model.pooling=mean_max", "model.stem_kernel=4",
       "model.series_norm=True"],
      ["model.solver.method=deer", "model.pooling=last", "model.members=2", "model.cell=lstm"]])
  def test_training_on_a_data_by_seq_mesh_matches_the_data_axis_alone(overrides):
    """10 steps on a (data, seq) = (2, 4) mesh against a (2,) data mesh: the same
    losses, gradient norms and parameters (float32, 1e-4 relative); 62 steps,
    padded to 64 for the 4 time blocks."""
    overrides = ["model.width=8", "model.depth=2", "train.learning_rate=0.01"] + overrides
    ref, ref_params = _train_losses(("data",), (2,), jax.devices()[:2], overrides, 62)
    out, params = _train_losses(("data", "seq"), (2, 4), jax.devices()[:8], overrides, 62)
    np.testing.assert_allclose(out, ref, rtol=1e-4)
    assert _rel_err(params, ref_params) <= 1e-4

  def test_long_context_config_trains_on_a_data_by_seq_mesh(tmp_path, capsys):
    """configs/long_context.py (its own mesh (1, 8)) at T = 4096 through the CLI."""
    from seqtrain import cli
    assert cli.main(["train", "--config", "configs/long_context.py:4096",
                     "--workdir", str(tmp_path / "lc")]) == 0
    out = capsys.readouterr().out
    assert "mesh {'data': 1, 'seq': 8}" in out and "solver: quasi_deer" in out
    assert (tmp_path / "lc" / "final_metrics.json").exists()

  @pytest.mark.parametrize("method,mode,adjoint", [   # (shoot and sequential: above)
      ("deer", "store", "dense"), ("elk", "", ""), ("quasi_elk", "", "quasi")])
  def test_data_parallel_training_runs_with_varying_axes_checks(method, mode, adjoint):
    """The train / eval steps keep shard_map's varying-axes checks on for the data-only
    mesh too: every solver's loop carries are typed like the batch shard they carry."""
    from seqtrain.parallel import mesh as mesh_lib
    from seqtrain.train import config as config_lib, steps as steps_lib
    config = config_lib.base_config()
    config_lib.apply_overrides(config, [
        f"model.solver.method={method}", f"model.solver.mode={mode}",
        f"model.solver.adjoint={adjoint}", "model.width=4", "model.depth=1", "model.cell=lstm",
        "model.pooling=mean_max", "model.members=2"])
    config_lib.validate(config)
    mesh = mesh_lib.make_mesh(("data",), (2,), jax.devices()[:2])
    setup = steps_lib.build_train_state(config, 3, 2, mesh)
    step = jax.jit(steps_lib.make_train_step(setup.model, setup.tx, mesh, setup.lr_schedule))
    evaluate = jax.jit(steps_lib.make_eval_step(setup.model, mesh, 3))
    rng = np.random.default_rng(0)
    batch = mesh_lib.host_to_global({
        "inputs": rng.normal(size=(4, 16, 2)).astype(np.float32),
        "lengths": np.array([16, 12, 5, 16], np.int32),
        "labels": np.array([0, 1, 2, 0], np.int32), "mask": np.ones(4, np.float32)}, mesh)
    state, metrics = step(setup.fresh(), batch)
    assert np.isfinite(float(metrics["loss"])) and int(state.step) == 1
    assert float(evaluate(state.params, batch)["confusion"].sum()) == 4
