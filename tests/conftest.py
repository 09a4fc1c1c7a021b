import os

# Hermetic: the caller's SEQTRAIN_* variables (a multi-process setup, SEQTRAIN_DEBUG, a
# data cache, forced CPU devices) must not change what the tests see, in this process or in
# the `seqtrain` processes they start; a test that needs one sets it itself.
# The suite's own switches stay: SEQTRAIN_FULL_TESTS (tests/grids.py) and
# SEQTRAIN_WRITE_DOCS (tests/test_bad_inputs.py).
_SUITE_SWITCHES = ("SEQTRAIN_FULL_TESTS", "SEQTRAIN_WRITE_DOCS")
for _name in [k for k in os.environ if k.startswith("SEQTRAIN_") and k not in _SUITE_SWITCHES]:
  del os.environ[_name]

# LLVM at -O0 (XLA's HLO passes unchanged): compiling is most of this suite's time, and -O0
# cuts it by about a third; subprocesses inherit it. Numerics are the same programs'.
os.environ["XLA_FLAGS"] = " ".join(
    [os.environ.get("XLA_FLAGS", ""), "--xla_backend_optimization_level=0"]).strip()

# One persistent compilation cache per test session, shared by the xdist workers and the
# `seqtrain` subprocesses (many of which compile the same small training programs); fresh
# each session, so nothing carries over between runs.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  import atexit
  import shutil
  import tempfile
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="seqtrain-test-jax-cache-")
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")
  atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)

import jax  # noqa: E402  (after XLA_FLAGS)
import pytest  # noqa: E402


# Precision on purpose, not by accident: a module marked ``pytestmark = pytest.mark.x64``
# runs with jax_enable_x64 on (the float64 exactness tests against lax.scan); every other
# module with JAX's default, x64 off, as users' training programs run (tests/test_float32.py
# checks float32 exactness there).


def pytest_configure(config):
  config.addinivalue_line("markers", "x64: run this module with jax_enable_x64 on")
  # xdist hands out modules by their number of tests unless told not to; the order
  # below is by time (pytest_collection_modifyitems).
  if hasattr(config.option, "loadscopereorder"):
    config.option.loadscopereorder = False


# The longest modules first (about 120, 76, 68 and 60 s on the 2-core machine): with
# `-n 2 --dist loadfile` each worker takes whole modules in collection order, and a long
# module handed out last (test_sequence_parallel.py is one test in this process: xdist's
# own order, by number of tests, put it last) leaves the other worker idle until it ends
# (about 110 s of the suite's 466). Any order is correct; this one is faster.
_LONG_FIRST = ("test_sequence_parallel.py", "test_solver_grad.py", "test_nn_rnn.py",
               "test_multiprocess.py")


def pytest_collection_modifyitems(config, items):
  rank = {name: i for i, name in enumerate(_LONG_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))   # stable: modules stay whole


@pytest.fixture(autouse=True, scope="module")
def _x64_as_marked(request):
  want = request.node.get_closest_marker("x64") is not None
  if jax.config.jax_enable_x64 != want:
    jax.config.update("jax_enable_x64", want)
  yield


@pytest.fixture(autouse=True, scope="module")
def _fresh_jax_caches():
  """Drop compiled executables between test modules: the suite compiles a few
  hundred programs and need not hold them all for the whole run."""
  yield
  jax.clear_caches()
