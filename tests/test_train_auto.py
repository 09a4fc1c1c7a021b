"""method="auto" on the training side (config, startup line, metrics) and the progress
line's recent-rate steps/s and ETA."""
import io

import pytest

from seqtrain.train import config as config_lib
from seqtrain.train.writers import Progress, StepRate, read_metrics


class FakeClock:
  def __init__(self):
    self.t = 0.0

  def __call__(self):
    return self.t


def test_rate_and_eta_follow_the_recent_steps_not_compile_or_pauses():
  clock = FakeClock()
  progress = Progress(400, window=20, clock=clock, stream=io.StringIO())
  clock.t = 30.0              # step 1: compilation and pipeline warm-up
  progress.tick(1)
  assert progress.rate() != progress.rate()  # nan: nothing measured yet
  for step in range(2, 101):  # 0.1 s per step
    clock.t += 0.1
    progress.tick(step)
  assert progress.rate() == pytest.approx(10.0)
  assert progress.steps.eta(100, 400) == pytest.approx(30.0)
  with progress.paused():     # validation + checkpoint: 50 s, not training time
    clock.t += 50.0
  clock.t += 0.1
  progress.tick(101)
  assert progress.rate() == pytest.approx(10.0)
  for step in range(102, 201):  # solver iterations grow: 0.25 s per step
    clock.t += 0.25
    progress.tick(step)
  assert progress.rate() == pytest.approx(4.0)
  assert progress.steps.eta(200, 400) == pytest.approx(50.0)
  line = progress.line(200, {"loss": 0.5})
  assert line == "step 200/400 |  4.00 steps/s | ETA 0:50 | loss 0.5"
  # The average since the first step (what the line showed before) is far off:
  average = (200 - 1) / (clock.t - 30.0)
  assert abs((400 - 200) / average - 50.0) > 30.0


def test_deferred_metrics_rate_counts_fetches_not_dispatches():
  """Steps are dispatched without waiting; their metrics arrive together on a log
  step. The rate must be the device's (50 steps in 10 s), not 50 reports in 0 s."""
  from seqtrain.train.writers import DeferredMetrics
  clock = FakeClock()
  progress = Progress(100, window=250, clock=clock, stream=io.StringIO())
  reported = []
  pending = DeferredMetrics(progress, lambda s, m: reported.append((s, m, progress.rate())),
                            fetch=lambda ms: [m * 10 for m in ms])
  progress.tick(0)
  for block in range(2):
    for step in range(50 * block + 1, 50 * block + 51):
      pending.append(step, step)       # dispatched at once
    clock.t += 10.0                     # ... and finished 10 s later, at the fetch
    pending.flush()
  assert [s for s, _, _ in reported] == list(range(1, 101))
  assert [m for _, m, _ in reported] == [10 * s for s in range(1, 101)]
  assert all(rate == pytest.approx(5.0) for _, _, rate in reported)
  pending.flush()                       # nothing pending: nothing happens
  assert len(reported) == 100 and progress.rate() == pytest.approx(5.0)
  assert "    - steps/s" in Progress(10, clock=clock).line(0, {})


def test_rate_pauses_nest_and_a_restart_resets_the_window():
  clock = FakeClock()
  rate = StepRate(window=5, clock=clock)
  rate.tick(10)
  with rate.paused():
    clock.t += 5.0
    with rate.paused():     # counted once
      clock.t += 5.0
  clock.t += 1.0
  rate.tick(12)
  assert rate.rate() == pytest.approx(2.0)
  rate.tick(3)              # steps went back (a resumed run): a new origin
  assert rate.rate() != rate.rate()
  with pytest.raises(ValueError):
    StepRate(window=0)


def test_solver_plan_lines():
  from seqtrain.train.trainer import solver_plan
  assert solver_plan("auto", [100], "cpu") == ({100: "sequential"},
                                                "solver: auto -> sequential (cpu, T=100)")
  by_length, line = solver_plan("auto", [128, 512, 256], "gpu")
  assert by_length == {128: "sequential", 256: "quasi_deer", 512: "quasi_deer"}
  assert line == "solver: auto -> sequential (gpu, T=128), quasi_deer (gpu, T=256,512)"
  assert solver_plan("deer", [100], "cpu")[1] == "solver: deer (cpu, T=100)"
  assert solver_plan("quasi_ike", [100], "tpu")[1] == "solver: quasi_ike -> quasi_elk (tpu, T=100)"
  assert solver_plan("auto", range(10, 20), "cpu")[1] == \
      "solver: auto -> sequential (cpu, T=10..19 (10 lengths))"


def test_config_accepts_auto_and_aliases():
  assert config_lib.base_config().model.solver.method == "auto"
  assert config_lib.load_config("configs/basic_motions.py").model.solver.method == "auto"
  assert config_lib.load_config("configs/eigenworms.py").model.solver.method == "auto"
  assert config_lib.load_config("configs/eigenworms.py:quasi_deer").model.solver.method == \
      "quasi_deer"
  for name in ("auto", "ike", "quasi_ike", "sequential"):
    config = config_lib.load_config("configs/basic_motions.py", [f"model.solver.method={name}"])
    assert config.model.solver.method == name
  with pytest.raises(config_lib.ConfigError,
                     match=r"model.solver.method='Auto': unknown solver method 'Auto'; valid methods: auto, "):
    config_lib.load_config("configs/basic_motions.py", ["model.solver.method=Auto"])


def test_startup_line_and_metrics_name_the_method_that_ran(tmp_path, capsys):
  import jax
  from seqtrain.train.trainer import train_and_evaluate
  assert jax.default_backend() == "cpu"
  config = config_lib.load_config("configs/basic_motions.py:tiny", [
      "model.width=8", "model.depth=1", "model.mlp_ratio=1", "train.batch_size=8",
      "train.eval_batch_size=40", "train.log_every=1", "train.warmup_steps=0"])
  # stop_after=0: the run starts (data, model, state, writers) and stops before compiling
  # the train step (tens of seconds on a busy 2-core machine); test_train.py's quick-start
  # test trains with the default in full.
  result = train_and_evaluate(config, tmp_path, stop_after=0)
  out = capsys.readouterr().out
  assert "solver: auto -> sequential (cpu, T=100)" in out
  assert "parameters, solver sequential" in out
  assert result["solver"] == {"method": "auto", "resolved": "sequential", "backend": "cpu",
                              "by_length": {"100": "sequential"}}
  records = read_metrics(tmp_path)
  solver = [r for r in records if r["kind"] == "solver"]
  assert len(solver) == 1 and solver[0]["resolved"] == "sequential" and solver[0]["step"] == 0
