"""Training configs: ml_collections ConfigDicts built by ``get_config(arg)`` files.

A config file (``configs/<task>.py``) defines ``get_config(arg: str | None)`` and
usually starts from :func:`base_config`. ``load_config("configs/x.py:variant",
overrides)`` imports that one file, calls ``get_config("variant")``, applies
``field=value`` overrides (typed by the existing field, unknown fields refused with
suggestions), checks every value and locks the result, so a typo fails instead of
silently training something else.
"""
from __future__ import annotations

import ast
import difflib
import importlib.util
import json
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

import ml_collections

__all__ = ["ConfigError", "base_config", "load_config", "apply_overrides", "validate",
           "config_to_json", "config_from_json", "config_from_dict", "config_diff",
           "SHAPE_FIELDS", "CONFIGS_DIR"]

CONFIGS_DIR = Path(__file__).resolve().parents[1] / "configs"   # installed with the package
# The solver's names come from its SolverSpec module (no JAX imported to read a config).
from seqtrain.solvers.spec import SolverSpec  # noqa: E402
CELLS = ("gru", "lstm", "simple", "diag_gru", "diag_lstm", "lru")
POOLINGS = ("mean", "max", "mean_max", "last", "mean_logits")

# Fields whose change makes a checkpoint unusable (parameter shapes, model or data meaning).
SHAPE_FIELDS = ("model.width", "model.depth", "model.cell", "model.pooling", "model.mlp_ratio",
                "model.stem_kernel", "model.series_norm", "model.members", "data.source",
                "data.name", "data.num_classes", "data.channels", "data.train_file")


class ConfigError(ValueError):
  """A config that cannot be used: the message names the field and the value."""


def base_config() -> ml_collections.ConfigDict:
  """Every field a training run reads, with defaults (a small GRU on BasicMotions)."""
  c = ml_collections.ConfigDict()
  c.seed = 0

  c.data = ml_collections.ConfigDict()
  c.data.source = "archive"          # archive | files | synthetic
  c.data.name = "BasicMotions"       # archive dataset or synthetic task name
  c.data.data_dir = ""               # extra folder searched for <name>_TRAIN.ts (before bundled, cache)
  c.data.train_file = ""             # source=files: .ts or .npz
  c.data.test_file = ""
  c.data.validation_file = ""
  c.data.validation_fraction = 0.2   # stratified split of train when there is no validation file
  c.data.format = "memory"           # memory | tfds (array_record prepared under data.tfds_dir)
  c.data.tfds_dir = ""               # default: <dataset cache>/tfds, as `seqtrain data prepare`
  c.data.normalize = True
  c.data.max_length = 0              # crop longer series (0: no cropping)
  c.data.bucket_boundaries = ()      # pad to these lengths instead of the longest series
  c.data.bucket_window = 0           # sort windows of this many batches by length (0: off)
  c.data.read_threads = 2
  # synthetic tasks
  c.data.length = 1024
  c.data.train_min_length = 0        # > 0: training series' lengths uniform in [this, length]
  c.data.train_size = 1024
  c.data.validation_size = 256
  c.data.test_size = 256
  c.data.num_classes = 4
  c.data.channels = 1

  c.model = ml_collections.ConfigDict()
  c.model.width = 32
  c.model.depth = 2
  c.model.cell = "gru"
  c.model.pooling = "mean"
  c.model.mlp_ratio = 2
  c.model.dropout = 0.0
  c.model.members = 1                # > 1: an ensemble of this many models, one vmapped step
  c.model.series_norm = False        # per-series z-norm + each series' mean and log std as inputs
  c.model.stem_kernel = 1            # > 1: causal convolution of this many steps before the encoder
  c.model.recompute = False          # backward pass recomputes each block: less memory, 1 more forward
  c.model.solver = ml_collections.ConfigDict()
  c.model.solver.method = "auto"     # auto: by backend and length (resolve_method) | METHODS
  c.model.solver.max_iter = 0        # 0: the solver's default
  c.model.solver.on_failure = "sequential"  # sequential | return | raise
  c.model.solver.mode = ""           # "": default (shoot) | shoot | store | recompute (deer methods)
  c.model.solver.chunk = 0           # steps per chunk, 0: by sequence length
  c.model.solver.adjoint = ""        # "": default (shoot) | dense | quasi | sequential | approx

  c.train = ml_collections.ConfigDict()
  c.train.batch_size = 16            # global, over all processes and devices
  c.train.eval_batch_size = 64
  c.train.steps = 300
  c.train.optimizer = "adamw"        # adamw | adam | sgd
  c.train.learning_rate = 3e-3
  c.train.weight_decay = 1e-2
  c.train.schedule = "cosine"        # cosine | constant
  c.train.warmup_steps = 20
  c.train.grad_clip = 1.0            # global norm (0: off)
  c.train.augment_scale = 0.0        # training series times 1 + this * N(0, 1) per channel
  c.train.augment_jitter = 0.0       # plus this * N(0, 1) per step (normalised units)
  c.train.log_every = 10
  c.train.eval_every = 50
  c.train.checkpoint_every = 100
  c.train.keep_checkpoints = 2
  c.train.select = "last"            # the run's model: last weights | best validation checkpoint
  c.train.max_bad_steps = 10         # stop after this many non-finite updates in a row

  c.mesh = ml_collections.ConfigDict()
  c.mesh.axes = ("data",)
  c.mesh.shape = (-1,)
  return c


def _import_config_file(path: Path):
  spec = importlib.util.spec_from_file_location(f"seqtrain_config_{path.stem}", path)
  if spec is None or spec.loader is None:
    raise ConfigError(f"{path}: cannot be imported as a Python config file")
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
  except SyntaxError as e:
    raise ConfigError(f"{path}, line {e.lineno}: syntax error ({e.msg})") from None
  except Exception as e:  # noqa: BLE001  (any error while importing the user's file)
    if os.environ.get("SEQTRAIN_DEBUG"):
      raise
    raise ConfigError(f"{path}: importing the config failed: {type(e).__name__}: {e}") from None
  if not hasattr(module, "get_config"):
    raise ConfigError(f"{path}: defines no get_config(arg) function")
  return module


def resolve_config_path(spec: str) -> tuple[Path, str | None]:
  """``"path/to/x.py:arg"``, or a shipped config by name (``"x"``) or as ``"configs/x.py"``
  from any folder (the package's seqtrain/configs; a file at that path wins)."""
  path, colon, arg = spec.partition(":")
  if colon and not arg:
    raise ConfigError(f"config {spec!r}: empty variant after ':' (write {path} alone, or "
                      f"{path}:VARIANT)")
  p = Path(path).expanduser()
  if not p.exists():
    shipped = CONFIGS_DIR / (p.name if path.endswith(".py") else f"{path}.py")
    if (not path.endswith(".py") or p.parent.name == "configs") and shipped.is_file():
      p = shipped
  if not p.is_file():
    known = sorted(f.stem for f in CONFIGS_DIR.glob("*.py") if f.stem != "__init__") \
        if CONFIGS_DIR.is_dir() else []
    raise ConfigError(f"config file {path!r} not found" +
                      (f" (configs: {', '.join(known)})" if known else ""))
  return p, (arg or None)


def _a(type_name: str) -> str:
  return f"{'an' if type_name[0] in 'aeiou' else 'a'} {type_name}"


def _parse_value(field: str, text: str, current: Any):
  if isinstance(current, bool):
    if text.lower() in ("true", "1", "yes"):
      return True
    if text.lower() in ("false", "0", "no"):
      return False
    raise ConfigError(f"--config.{field}={text}: expected true or false")
  if isinstance(current, (int, float)) and not isinstance(current, bool):
    try:
      value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      raise ConfigError(f"--config.{field}={text}: expected {_a(type(current).__name__)}") from None
    if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
      value = float(value)
    if type(value) is not type(current):
      raise ConfigError(f"--config.{field}={text}: expected {_a(type(current).__name__)}, got "
                        f"{_a(type(value).__name__)}")
    return value
  if isinstance(current, (tuple, list)):
    try:
      value = ast.literal_eval(text) if text.strip() else ()
    except (ValueError, SyntaxError):
      value = tuple(v.strip() for v in text.split(",") if v.strip())
    if isinstance(value, (int, float, str)):
      value = (value,)
    if not isinstance(value, (tuple, list)):
      raise ConfigError(f"--config.{field}={text}: expected a comma separated list")
    return tuple(value)
  return text


def _all_fields(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
  out = []
  for k, v in config.items():
    if isinstance(v, ml_collections.ConfigDict):
      out += _all_fields(v, f"{prefix}{k}.")
    else:
      out.append(prefix + k)
  return out


def apply_overrides(config: ml_collections.ConfigDict, overrides: Iterable[str]):
  """Applies ``field=value`` strings (``--config.`` prefix optional)."""
  fields = _all_fields(config)
  for item in overrides:
    text = item[len("--config."):] if item.startswith("--config.") else item
    if "=" not in text:
      raise ConfigError(f"override {item!r}: expected --config.field=value")
    field, value = text.split("=", 1)
    if field not in fields:
      close = difflib.get_close_matches(field, fields, n=3)
      raise ConfigError(f"unknown config field {field!r}" +
                        (f"; did you mean {', '.join(close)}?" if close else ""))
    node = config
    *parents, leaf = field.split(".")
    for p in parents:
      node = node[p]
    with node.ignore_type():
      node[leaf] = _parse_value(field, value, node[leaf])
  return config


def _check(cond: bool, field: str, value: Any, what: str):
  if not cond:
    raise ConfigError(f"config field {field}={value!r}: {what}")


def validate(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Types and ranges of every field the trainer reads; raises ConfigError naming it."""
  base = base_config()
  for field in _all_fields(base):
    try:
      value = c
      for part in field.split("."):
        value = value[part]
    except (KeyError, AttributeError):
      raise ConfigError(f"config is missing field {field!r} (start configs from "
                        "seqtrain.train.config.base_config())") from None
    default = base
    for part in field.split("."):
      default = default[part]
    if isinstance(default, bool):
      _check(isinstance(value, bool), field, value, "expected true or false")
    elif isinstance(default, int):
      _check(isinstance(value, int) and not isinstance(value, bool), field, value,
             "expected an integer")
    elif isinstance(default, float):
      _check(isinstance(value, (int, float)) and not isinstance(value, bool), field, value,
             "expected a number")
    elif isinstance(default, str):
      _check(isinstance(value, str), field, value, "expected a string")
  for field in ("train.augment_scale", "train.augment_jitter"):
    _check(_get(c, field) >= 0, field, _get(c, field), "must be >= 0")
  for field in ("seed", "data.max_length", "data.bucket_window", "data.train_min_length",
                "train.warmup_steps"):
    _check(_get(c, field) >= 0, field, _get(c, field), "must be >= 0")
  for field in ("model.width", "model.depth", "model.mlp_ratio", "model.stem_kernel",
                "model.members", "train.batch_size",
                "train.eval_batch_size", "train.steps", "train.log_every", "train.eval_every",
                "train.checkpoint_every", "train.keep_checkpoints", "train.max_bad_steps",
                "data.length", "data.train_size", "data.validation_size", "data.test_size",
                "data.channels", "data.read_threads"):
    _check(_get(c, field) >= 1, field, _get(c, field), "must be >= 1")
  _check(c.data.num_classes >= 2, "data.num_classes", c.data.num_classes, "must be >= 2")
  _check(c.data.source in ("archive", "files", "synthetic"), "data.source", c.data.source,
         "expected archive, files or synthetic")
  _check(c.data.format in ("memory", "tfds"), "data.format", c.data.format,
         "expected memory or tfds")
  _check(0.0 <= c.data.validation_fraction < 1.0, "data.validation_fraction",
         c.data.validation_fraction, "must be in [0, 1)")
  if c.data.source == "files":
    _check(bool(c.data.train_file), "data.train_file", c.data.train_file,
           "source=files needs a .ts or .npz training file")
  _check(c.data.train_min_length <= c.data.length, "data.train_min_length",
         c.data.train_min_length, f"must be <= data.length={c.data.length}")
  _check(c.data.train_min_length == 0 or c.data.source == "synthetic", "data.train_min_length",
         c.data.train_min_length, "applies to synthetic tasks only (data.source=synthetic)")
  _check(all(isinstance(b, int) and b > 0 for b in c.data.bucket_boundaries),
         "data.bucket_boundaries", c.data.bucket_boundaries, "expected positive integers")
  _check(c.model.cell in CELLS, "model.cell", c.model.cell, f"expected one of {', '.join(CELLS)}")
  _check(c.model.pooling in POOLINGS, "model.pooling", c.model.pooling,
         f"expected one of {', '.join(POOLINGS)}")
  _check(c.train.select in ("last", "best"), "train.select", c.train.select,
         "expected last or best")
  _check(not (c.train.select == "best" and c.data.source != "synthetic"
              and c.data.validation_fraction == 0 and not c.data.validation_file),
         "train.select", c.train.select, "needs a validation split (data.validation_fraction > 0 "
         "or data.validation_file): test data never picks a checkpoint")
  _check(0.0 <= c.model.dropout < 1.0, "model.dropout", c.model.dropout, "must be in [0, 1)")
  for name in c.model.solver.keys():   # each field on its own: the error names it
    value = c.model.solver[name]
    try:
      SolverSpec(**_spec_fields({name: value}))
    except (ValueError, TypeError) as e:
      raise ConfigError(f"config field model.solver.{name}={value!r}: {e}") from None
  _check(c.train.optimizer in ("adamw", "adam", "sgd"), "train.optimizer", c.train.optimizer,
         "expected adamw, adam or sgd")
  _check(c.train.learning_rate > 0, "train.learning_rate", c.train.learning_rate, "must be > 0")
  _check(c.train.weight_decay >= 0, "train.weight_decay", c.train.weight_decay, "must be >= 0")
  _check(c.train.grad_clip >= 0, "train.grad_clip", c.train.grad_clip, "must be >= 0")
  _check(c.train.schedule in ("cosine", "constant"), "train.schedule", c.train.schedule,
         "expected cosine or constant")
  _check(len(c.mesh.axes) == len(c.mesh.shape) and len(c.mesh.axes) >= 1, "mesh.shape",
         c.mesh.shape, f"needs one size per axis of mesh.axes={tuple(c.mesh.axes)}")
  _check("data" in c.mesh.axes, "mesh.axes", c.mesh.axes, "needs a 'data' axis")
  _check(set(c.mesh.axes) <= {"data", "seq"} and len(set(c.mesh.axes)) == len(c.mesh.axes),
         "mesh.axes", tuple(c.mesh.axes), "expected ('data',) or ('data', 'seq')")
  try:
    solver_spec(c)
  except ValueError as e:
    raise ConfigError(f"config fields model.solver with mesh.axes={tuple(c.mesh.axes)}: {e}") \
        from None
  _check(sum(1 for s in c.mesh.shape if s == -1) <= 1 and all(
      isinstance(s, int) and (s == -1 or s >= 1) for s in c.mesh.shape), "mesh.shape",
         c.mesh.shape, "sizes are positive integers, at most one -1")
  return c


def _spec_fields(fields: dict) -> dict:
  """Config values -> SolverSpec fields: 0 and "" mean the solver's default."""
  return {k: v for k, v in fields.items() if not (k != "method" and v in (0, ""))}


def solver_spec(c: ml_collections.ConfigDict) -> SolverSpec:
  """The config's ``model.solver`` section (and its mesh's ``seq`` axis) as the
  solver's ``SolverSpec``."""
  fields = _spec_fields({k: c.model.solver[k] for k in c.model.solver.keys()})
  seq_axis = "seq" if "seq" in tuple(c.mesh.axes) else None
  return SolverSpec(**fields, seq_axis=seq_axis)


def _get(c, field):
  for part in field.split("."):
    c = c[part]
  return c


def load_config(spec: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
  """Loads ``path[:arg]``, applies overrides, validates and locks."""
  path, arg = resolve_config_path(spec)
  module = _import_config_file(path)
  try:
    config = module.get_config(arg) if arg is not None else module.get_config()
  except TypeError:
    config = module.get_config()
    if arg is not None:
      raise ConfigError(f"{path}: get_config() takes no variant argument, got {arg!r}") from None
  if not isinstance(config, ml_collections.ConfigDict):
    raise ConfigError(f"{path}: get_config returned {type(config).__name__}, not a ConfigDict")
  config.unlock()
  apply_overrides(config, overrides)
  validate(config)
  config.lock()
  return config


def _plain(v):
  if isinstance(v, dict):
    return {k: _plain(x) for k, x in v.items()}
  if isinstance(v, (tuple, list)):
    return [_plain(x) for x in v]
  return v


def config_to_json(config: ml_collections.ConfigDict) -> str:
  return json.dumps(_plain(config.to_dict()), indent=2, sort_keys=True)


def config_from_dict(d: dict) -> ml_collections.ConfigDict:
  """A config from its plain (JSON) form: lists become tuples, then validated and locked."""
  def tuples(v):
    if isinstance(v, dict):
      return {k: tuples(x) for k, x in v.items()}
    if isinstance(v, list):
      return tuple(tuples(x) for x in v)
    return v
  config = base_config()
  config.update(ml_collections.ConfigDict(tuples(d)))
  validate(config)
  config.lock()
  return config


def config_from_json(text: str) -> ml_collections.ConfigDict:
  return config_from_dict(json.loads(text))


def _flat(d: dict, prefix: str = "") -> dict:
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flat(v, f"{prefix}{k}."))
    else:
      out[prefix + k] = v
  return out


def config_diff(old: dict, new: dict, fields: Sequence[str] | None = None) -> list[str]:
  """Lines ``field: old -> new`` for the fields that differ (all, or the given ones)."""
  a, b = _flat(_plain(old)), _flat(_plain(new))
  keys = sorted(set(a) | set(b)) if fields is None else list(fields)
  return [f"{k}: {a.get(k, '<absent>')!r} -> {b.get(k, '<absent>')!r}" for k in keys
          if a.get(k, "<absent>") != b.get(k, "<absent>")]


def write_json_atomic(path: str | os.PathLike, text: str):
  path = Path(path)
  tmp = path.with_name(path.name + ".tmp")
  tmp.write_text(text)
  os.replace(tmp, path)
