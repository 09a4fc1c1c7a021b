"""Benchmarks of the parallel-in-time solvers, and ``seqtrain bench``.

Three benchmarks, each a function returning plain rows (dicts) plus writers for
JSON / markdown / PNG reports. The scripts in the repository's ``benchmarks/``
folder are thin command lines over them.

* ``run_grid``: one ``ParallelRNN`` layer, as users run it
  (``ParallelRNN(nn.GRUCell(D), method=m)`` on x of shape (B, T, D), float32,
  parameters from ``nn.RNN``'s init), over a grid of T, D, batch, cell and
  method. Forward and forward+gradient (loss = mean(y^2), gradients with
  respect to parameters and inputs) are timed after compilation (compile and
  first call reported separately; ``jax.block_until_ready`` on the output;
  median of repeats). Each row holds the compiled program's scratch memory
  (``memory_analysis().temp_size_in_bytes``), the device's peak memory where
  the backend reports it, the solver iterations (``solver_stats``), the error
  against ``method="sequential"`` (``jax.lax.scan``) and the time ratio to it.
  Baselines in the same run: ``sequential``, ``flax_rnn`` (``nn.RNN``) and
  ``cudnn`` (``torch.nn.GRU``/``LSTM`` on CUDA, when PyTorch sees a GPU).
* ``run_training``: steps/s of the papers' 5-layer GRU-32 EigenWorms classifier
  (T=17,984, batch 4, exact gradients, full optimizer step) per method.
* ``run_stability``: the chaotic-system experiment (Lorenz-96 and an expansive
  tanh RNN, float64): iterations, wall-clock and error per method, adaptive
  versus fixed lambda for the damped methods.

``run_check`` is a quick correctness gate (every method against sequential at
a small size, forward and gradient). Nothing here imports JAX at module level,
so adding the CLI command costs nothing.

Modules: ``common`` (names, environment, timing, memory, writers), ``grid`` (the layer
grid and the correctness gate), ``training``, ``stability``, ``report`` (summary page),
``commands`` (argument parsers and entry points), ``seq_parallel`` (``seqtrain bench
seq-parallel``), ``datasets`` (``seqtrain bench datasets``), ``demo`` (``seqtrain demo``).
"""
# The public names (and the few helpers the benchmarks/ scripts and tests use), so that
# ``from seqtrain import bench; bench.run_grid(...)`` keeps working.
from seqtrain.bench.common import (SOLVER_METHODS, PERSTEP_VARIANTS, BASELINES, GRID_METHODS,
                                   DEFAULT_GRID_METHODS, TRAIN_METHODS, CELLS, Log,
                                   environment_info, device_slug, default_out_dir, compiled_memory,
                                   device_peak_bytes, device_memory_limit, default_memory_budget,
                                   time_calls, canonical_grid_method, solver_variant, write_json,
                                   _env_lines, _write_json_markdown)
from seqtrain.bench.grid import (_dense_bytes, torch_rnn_from_flax, run_grid, run_check,
                                 grid_markdown, plot_grid, write_grid_report, write_check_report)
from seqtrain.bench.training import (run_training, training_markdown, write_training_report)
from seqtrain.bench.stability import (lorenz96_step, lorenz96_problem, expansive_rnn_problem,
                                      STABILITY_SYSTEMS, STABILITY_METHODS, stability_variants,
                                      run_stability, stability_markdown, write_stability_report)
from seqtrain.bench.report import summarize
from seqtrain.bench.commands import (_int_list, _solver_methods, SMOKE_GRID, SMOKE_CHECK,
                                     add_grid_arguments, add_bench_command, run_bench, main_solvers,
                                     training_parser, main_training, stability_parser,
                                     main_stability, main_report)

__all__ = [
    "SOLVER_METHODS", "PERSTEP_VARIANTS", "BASELINES", "GRID_METHODS", "DEFAULT_GRID_METHODS",
    "TRAIN_METHODS", "CELLS", "Log", "environment_info", "device_slug", "default_out_dir",
    "compiled_memory", "device_peak_bytes", "device_memory_limit", "default_memory_budget",
    "time_calls", "canonical_grid_method", "solver_variant", "write_json", "torch_rnn_from_flax",
    "run_grid", "run_check", "grid_markdown", "plot_grid", "write_grid_report",
    "write_check_report", "run_training", "training_markdown", "write_training_report",
    "lorenz96_step", "lorenz96_problem", "expansive_rnn_problem", "STABILITY_SYSTEMS",
    "STABILITY_METHODS", "stability_variants", "run_stability", "stability_markdown",
    "write_stability_report", "summarize", "SMOKE_GRID", "SMOKE_CHECK", "add_grid_arguments",
    "add_bench_command", "run_bench", "main_solvers", "training_parser", "main_training",
    "stability_parser", "main_stability", "main_report",
]
