"""``seqtrain eval``: a trained workdir evaluated on a split or on other data of the same shape.

Writes ``<workdir>/eval/<split>-<checkpoint>.json`` (accuracy, balanced accuracy,
per-class precision / recall / F1, confusion matrix) and a confusion-matrix PNG
beside it. Normalisation uses the statistics of the run's training split.
"""
from __future__ import annotations

import json
from pathlib import Path

import jax

from seqtrain.data import sources
from seqtrain.data.pipeline import Normalizer, ShardInfo
from seqtrain.data.ts import DataFormatError, SeriesDataset, read_series_file
from seqtrain.parallel import mesh as mesh_lib
from seqtrain.train import config as config_lib
from seqtrain.train import data as data_lib
from seqtrain.train import steps as steps_lib
from seqtrain.train.checkpoint import Checkpoints, abstract_like
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


def evaluate_workdir(workdir: str | Path, split: str = "test", checkpoint: str = "best",
                     data: str | None = None, data_dir: str | None = None,
                     say=print) -> dict:
  workdir = Path(workdir).absolute()
  config_path = workdir / "config.json"
  try:
    config = config_lib.config_from_dict(_load_json(config_path, "config.json"))
  except config_lib.ConfigError as e:
    raise EvalError(f"{config_path}: {e}") from None
  info = _load_json(workdir / "data.json", "data.json")
  mesh = mesh_lib.make_mesh(config.mesh.axes, config.mesh.shape)
  shard = ShardInfo(jax.process_index(), jax.process_count())

  if data:
    source = _external_source(data, split, info, data_dir)
    label = f"{Path(data).stem}-{split}" if not Path(data).is_file() else Path(data).stem
  else:
    bundle = data_lib.build_data(config, workdir)
    source = bundle.split(split)
    label = split
  normalizer = Normalizer.from_json(info["normalizer"]) if info.get("normalizer") else None
  bundle = data_lib.DataBundle(None, None, None, tuple(info["class_names"]), info["num_channels"],
                               normalizer, info["max_length"], "")

  model = steps_lib.build_model(config, len(bundle.class_names))
  tx, _ = steps_lib.build_optimizer(config)
  abstract = jax.eval_shape(lambda: steps_lib.init_state(model, tx, config, 8,
                                                         bundle.num_channels))
  sharding = jax.tree.map(lambda _: mesh_lib.replicated(mesh), abstract)
  ckpts = Checkpoints(workdir, async_save=False)
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
  finally:
    ckpts.close()
  restored_step = int(meta["step"])
  say(f"evaluating {which} checkpoint (step {restored_step}) of {workdir} on {label}: "
      f"{len(source)} examples")

  eval_fn = jax.jit(steps_lib.make_eval_step(model, mesh, len(bundle.class_names)))
  from seqtrain.train.trainer import evaluate_split
  metrics = evaluate_split(eval_fn, state.params, source, bundle, config, mesh, shard)
  metrics.update(split=label, checkpoint=which, step=restored_step, workdir=str(workdir))
  out_dir = workdir / "eval"
  name = f"{label}-{which}{'' if step is None else step}"
  if jax.process_index() == 0:
    out_dir.mkdir(exist_ok=True)
    config_lib.write_json_atomic(out_dir / f"{name}.json", json.dumps(metrics, indent=2))
    plot_confusion(metrics["confusion_matrix"], metrics["class_names"], out_dir / f"{name}.png",
                   f"{label}: accuracy {metrics['accuracy']:.3f}")
  metrics["report"] = str(out_dir / f"{name}.json")
  say(f"accuracy {metrics['accuracy']:.4f}, balanced accuracy {metrics['balanced_accuracy']:.4f}, "
      f"macro F1 {metrics['macro_f1']:.4f}, loss {metrics['loss']:.4f}")
  width = max(len(c) for c in metrics["class_names"])
  for c, m in metrics["per_class"].items():
    say(f"  {c:<{width}}  precision {m['precision']:.3f}  recall {m['recall']:.3f}  "
        f"f1 {m['f1']:.3f}  support {m['support']}")
  say(f"report: {out_dir / name}.json (+ .png)")
  return metrics
