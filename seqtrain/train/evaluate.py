"""``seqtrain eval``: a trained workdir evaluated on a split or on other data of the same shape.

Writes ``<workdir>/eval/<split>-<checkpoint>.json`` (accuracy, balanced accuracy,
per-class precision / recall / F1, confusion matrix, the 1-NN baselines on the
same examples), a markdown summary (``.md``) and a confusion-matrix PNG beside
it. Normalisation uses the statistics of the run's training split.

Train short, infer long: ``length=N`` regenerates a synthetic task's split at
length N (same seed, same examples' labels and nuisance draws, longer series)
and reports the task's oracle accuracy on the same series, the solver's
iterations per layer and the compiled program's memory.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import jax
import numpy as np

from seqtrain.data import sources
from seqtrain.data.pipeline import Normalizer
from seqtrain.data.ts import DataFormatError, SeriesDataset, read_series_file
from seqtrain.parallel import mesh as mesh_lib
from seqtrain.train import config as config_lib
from seqtrain.train import input_pipeline as data_lib
from seqtrain.train import steps as steps_lib
from seqtrain.train.checkpoint import Checkpoints, abstract_like, load_error_reason
from seqtrain.train.plots import plot_confusion

__all__ = ["evaluate_workdir", "EvalError"]


class EvalError(RuntimeError):
  pass


def _load_json(path: Path, what: str) -> dict:
  if not path.exists():
    raise EvalError(f"{path} not found: is {path.parent} a seqtrain workdir ({what})?")
  try:
    return json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise EvalError(f"{path}: unreadable JSON ({e})") from None


def _external_source(spec: str, split: str, info: dict, data_dir: str | None) -> SeriesDataset:
  """A dataset name or a .ts/.npz file, checked against the trained model's shape."""
  if Path(spec).suffix.lower() in (".ts", ".npz") or Path(spec).is_file():
    data = read_series_file(spec)
  else:
    data = sources.load_split(spec, split, data_dir)
  channels = info["num_channels"]
  classes = list(info["class_names"])
  if data.num_channels != channels:
    raise DataFormatError(data.source or spec, f"has {data.num_channels} channels; the model was "
                          f"trained on {channels}")
  unknown = sources.unknown_classes(data, classes)
  if unknown:
    raise DataFormatError(data.source or spec, f"holds classes {unknown} the model was not trained "
                          f"on (its classes: {classes})")
  return sources.relabel(data, classes)


def _at_length(config_dict: dict, workdir: Path, length: int, size: int | None,
               split: str) -> dict:
  """The run's config with its synthetic task regenerated at ``length`` steps."""
  d = config_dict.get("data", {})
  if d.get("source") != "synthetic":
    what = d.get("train_file") if d.get("source") == "files" else d.get("name")
    raise EvalError(f"--length {length}: {workdir} was trained on {d.get('source')} data "
                    f"({what}); only synthetic tasks (data.source=synthetic) can be regenerated "
                    "at another length")
  if length < 1:
    raise EvalError(f"--length {length}: must be >= 1")
  d = dict(d, length=int(length))
  if size is not None:
    if size < 1:
      raise EvalError(f"--size {size}: must be >= 1")
    d[f"{split}_size"] = int(size)
  return dict(config_dict, data=d)


def _oracle_accuracy(source) -> float | None:
  """The synthetic task's reference classifier on ``source`` (None for other data)."""
  if not hasattr(source, "oracle"):
    return None
  hits = [source.oracle(source[i]["series"]) == int(source.labels[i]) for i in range(len(source))]
  return float(np.mean(hits))


def report_markdown(metrics: dict, title: str) -> str:
  """A run's result as markdown: the model's accuracy next to the baselines (or the
  synthetic task's oracle), then per-class precision / recall / F1."""
  rows = [("seqtrain", metrics["accuracy"])]
  base = metrics.get("baselines") or {}
  for key, name in (("1nn_euclidean", "1-NN Euclidean"), ("1nn_dtw", "1-NN DTW")):
    if key in base:
      rows.append((name + (f" (window {base['dtw_window']})" if key == "1nn_dtw" and
                           "dtw_window" in base else ""), base[key]))
  if metrics.get("oracle_accuracy") is not None:
    rows.append(("task oracle", metrics["oracle_accuracy"]))
  where = (f"{metrics.get('checkpoint', 'latest')} checkpoint, step {metrics.get('step')}"
           if metrics.get("step") is not None else "")
  lines = [f"# {title}", "", f"{metrics['count']} examples" + (f"; {where}" if where else ""),
           "", "| model | accuracy |", "|---|---:|"]
  lines += [f"| {n} | {'-' if v is None else f'{v:.4f}'} |" for n, v in rows]
  lines += ["", f"balanced accuracy {metrics['balanced_accuracy']:.4f}, macro F1 "
            f"{metrics['macro_f1']:.4f}, loss {metrics['loss']:.4f}", "",
            "| class | precision | recall | f1 | support |", "|---|---:|---:|---:|---:|"]
  lines += [f"| {c} | {m['precision']:.3f} | {m['recall']:.3f} | {m['f1']:.3f} | "
            f"{m['support']} |" for c, m in metrics["per_class"].items()]
  return "\n".join(lines) + "\n"


class _ReportingEval:
  """The jitted eval step, compiled per batch shape; the first compile reports
  its memory (XLA's memory analysis of the compiled program)."""

  def __init__(self, fn, say):
    self.fn, self.say, self.compiled, self.memory = fn, say, {}, None

  def __call__(self, params, batch):
    key = tuple((k, v.shape) for k, v in batch.items())
    if key not in self.compiled:
      t0 = time.perf_counter()
      self.compiled[key] = self.fn.lower(params, batch).compile()
      from seqtrain.bench import compiled_memory
      mem = compiled_memory(self.compiled[key])
      if self.memory is None:
        self.memory = dict(mem, batch_shape=list(batch["inputs"].shape))
      detail = ", ".join(f"{k.split('_')[0]} {v / 2**20:.1f} MiB" for k, v in mem.items()
                         if v is not None)
      self.say(f"compiled eval step for batch {tuple(batch['inputs'].shape)} in "
               f"{time.perf_counter() - t0:.1f} s" + (f": {detail}" if detail else ""))
    return self.compiled[key](params, batch)


def _check_writable(out_dir: Path, flag: str | None):
  """Refuse (one line) a report folder that cannot be written, before any work."""
  probe = out_dir
  while not probe.exists() and probe != probe.parent:
    probe = probe.parent
  if not (probe.is_dir() and os.access(probe, os.W_OK | os.X_OK)):
    hint = "choose another folder" if flag else "pass --out DIR to write the report elsewhere"
    raise EvalError(f"cannot write the report to {out_dir} ({probe} is not a writable "
                    f"folder); {hint}")


def evaluate_workdir(workdir: str | Path, split: str = "test", checkpoint: str | None = None,
                     data: str | None = None, data_dir: str | None = None,
                     length: int | None = None, size: int | None = None,
                     method: str | None = None, batch_size: int | None = None,
                     out: str | Path | None = None, say=print) -> dict:
  """Evaluates a workdir's checkpoint on one split (or ``data``).

  ``checkpoint``: "best" (highest validation accuracy), "latest", a step, or
  None: the run's model as its config's ``train.select`` names it, the
  checkpoint whose test accuracy the training run reported.

  ``length``: regenerate the run's synthetic task at this length (``size``
  examples of the split, default the run's split size); ``method``: the solver
  method to run (default the run's); ``batch_size``: examples per eval batch
  (default the run's ``train.eval_batch_size``); ``out``: the folder for the
  report (default <workdir>/eval; checked writable before anything is computed)."""
  workdir = Path(workdir).absolute()
  out_dir = Path(out).absolute() if out is not None else workdir / "eval"
  _check_writable(out_dir, "--out" if out is not None else None)
  config_path = workdir / "config.json"
  config_dict = _load_json(config_path, "config.json")
  if length is not None and data:
    raise EvalError("--length regenerates the run's synthetic task; it cannot be combined "
                    f"with --data {data}")
  if length is not None:
    config_dict = _at_length(config_dict, workdir, length, size, split)
  elif size is not None:
    raise EvalError("--size applies with --length (a regenerated synthetic split)")
  if method is not None:
    config_dict = dict(config_dict, model=dict(config_dict.get("model", {}), solver=dict(
        config_dict.get("model", {}).get("solver", {}), method=method)))
  if batch_size is not None:
    config_dict = dict(config_dict, train=dict(config_dict.get("train", {}),
                                               eval_batch_size=batch_size))
  run_mesh = config_dict.get("mesh", {})
  try:
    mesh_lib.make_mesh(run_mesh.get("axes", ("data",)), run_mesh.get("shape", (-1,)))
  except ValueError as e:
    # the parameters do not depend on the mesh: evaluate on the devices that are here
    say(f"the run's mesh does not fit here ({e}); evaluating with the data axis over "
        f"all {jax.device_count()} device(s)")
    config_dict = dict(config_dict, mesh=dict(run_mesh, axes=["data"], shape=[-1]))
  try:
    config = config_lib.config_from_dict(config_dict)
  except config_lib.ConfigError as e:
    raise EvalError(f"{config_path}: {e}") from None
  info = _load_json(workdir / "data.json", "data.json")
  mesh = mesh_lib.make_mesh(config.mesh.axes, config.mesh.shape)
  shard = mesh_lib.data_shard(mesh)

  run_data = None   # the run's own splits, for the 1-NN baselines
  if data:
    source = _external_source(data, split, info, data_dir)
    label = f"{Path(data).stem}-{split}" if not Path(data).is_file() else Path(data).stem
    if config.data.source != "synthetic":
      run_data = data_lib.build_data(config, workdir)
  else:
    if length is not None:
      source = data_lib.synthetic_split(config, split)
      label = f"{split}-length{length}"
    else:
      run_data = data_lib.build_data(config, workdir)
      source = run_data.split(split)
      label = split
  normalizer = Normalizer.from_json(info["normalizer"]) if info.get("normalizer") else None
  bundle = data_lib.DataBundle(None, None, None, tuple(info["class_names"]), info["num_channels"],
                               normalizer=normalizer, max_length=info["max_length"])

  setup = steps_lib.build_train_state(config, len(bundle.class_names), bundle.num_channels, mesh)
  model, abstract, sharding = setup.model, setup.abstract, setup.sharding
  ckpts = Checkpoints(workdir, async_save=False)
  if checkpoint is None:
    checkpoint = "best" if config.train.select == "best" else "latest"
  which, step = "best", None
  if checkpoint == "latest":
    which = "latest"
  elif checkpoint != "best":
    try:
      which, step = "latest", int(checkpoint)
    except ValueError:
      raise EvalError(f"--checkpoint {checkpoint!r}: expected best, latest or a step number") \
          from None
  if which == "best" and ckpts.latest_step("best") is None:
    say("no best checkpoint (no validation yet); using the latest")
    which = "latest"
  try:
    state, meta = ckpts.restore(abstract_like(abstract, sharding), which, step)
  except FileNotFoundError as e:
    raise EvalError(str(e)) from None
  except Exception as e:  # noqa: BLE001  (orbax raises many types for damaged files)
    if os.environ.get("SEQTRAIN_DEBUG"):
      raise
    at = ckpts.dirs[which] / str(step if step is not None else ckpts.latest_step(which))
    reason = load_error_reason(e)
    raise EvalError(f"the {which} checkpoint at {at} failed to load ({type(e).__name__}"
                    f"{': ' + reason if reason != type(e).__name__ else ''}); try another: --checkpoint latest, "
                    "best or a step") from None
  finally:
    ckpts.close()
  restored_step = int(meta["step"])
  what = f"{which} checkpoint (step {restored_step})" if step is None else \
      f"checkpoint of step {restored_step}"
  say(f"evaluating the {what} of {workdir} on {label}: {len(source)} examples")

  if length is not None:
    from seqtrain.train.trainer import solver_plan
    say(solver_plan(config.model.solver.method, [length],
                    seq_devices=mesh_lib.seq_axis_size(mesh))[1])
  eval_fn = _ReportingEval(jax.jit(steps_lib.make_eval_step(model, mesh,
                                                            len(bundle.class_names))), say)
  from seqtrain.train.trainer import evaluate_split
  t0 = time.perf_counter()
  metrics = evaluate_split(eval_fn, state.params, source, bundle, config, mesh, shard)
  seconds = time.perf_counter() - t0
  metrics.update(split=label, checkpoint=which, step=restored_step, workdir=str(workdir),
                 seconds=seconds, length=length, method=config.model.solver.method,
                 memory=eval_fn.memory)
  if length is not None:
    metrics["oracle_accuracy"] = _oracle_accuracy(source)
  if run_data is not None:
    metrics["baselines"] = data_lib.baseline_report(run_data, source, split)
  name = f"{label}-{which if step is None else f'step{step}'}"
  if jax.process_index() == 0:
    out_dir.mkdir(parents=True, exist_ok=True)
    config_lib.write_json_atomic(out_dir / f"{name}.json", json.dumps(metrics, indent=2))
    config_lib.write_json_atomic(out_dir / f"{name}.md",
                                 report_markdown(metrics, f"{workdir.name}: {label}"))
    plot_confusion(metrics["confusion_matrix"], metrics["class_names"], out_dir / f"{name}.png",
                   f"{label}: accuracy {metrics['accuracy']:.3f}")
  metrics["report"] = str(out_dir / f"{name}.json")
  say(f"accuracy {metrics['accuracy']:.4f}, balanced accuracy {metrics['balanced_accuracy']:.4f}, "
      f"macro F1 {metrics['macro_f1']:.4f}, loss {metrics['loss']:.4f}"
      + (f"; oracle {metrics['oracle_accuracy']:.4f}" if metrics.get("oracle_accuracy")
         is not None else "") + f" ({seconds:.1f} s)")
  if metrics.get("baselines"):
    from seqtrain.baselines import describe
    say(f"baselines on the same examples: {describe(metrics['baselines'])}")
  iters = {k.rsplit("/", 1)[0]: int(v) for k, v in sorted(metrics["solver"].items())
           if k.endswith("/iterations")}
  if iters:
    say("solver iterations per layer (max over examples): " +
        ", ".join(f"{k} {v}" for k, v in iters.items()))
  width = max(len(c) for c in metrics["class_names"])
  for c, m in metrics["per_class"].items():
    say(f"  {c:<{width}}  precision {m['precision']:.3f}  recall {m['recall']:.3f}  "
        f"f1 {m['f1']:.3f}  support {m['support']}")
  say(f"report: {out_dir / name}.json (+ .md, .png)")
  return metrics
