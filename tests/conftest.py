import os

# LLVM at -O0 (XLA's HLO passes unchanged): compiling is most of this suite's time, and -O0
# cuts it by about a third; subprocesses inherit it. Numerics are the same programs'.
os.environ["XLA_FLAGS"] = " ".join(
    [os.environ.get("XLA_FLAGS", ""), "--xla_backend_optimization_level=0"]).strip()

import jax  # noqa: E402  (after XLA_FLAGS)
import pytest  # noqa: E402

# SEQTRAIN_FULL_TESTS=1: the full cross-products of cells x methods x shapes where a module
# otherwise runs a covering subset (every method with every cell and every kind of shape).
FULL = os.environ.get("SEQTRAIN_FULL_TESTS") == "1"

jax.config.update("jax_enable_x64", True)


@pytest.fixture(autouse=True, scope="module")
def _fresh_jax_caches():
  """Drop compiled executables between test modules: the suite compiles a few
  hundred programs and need not hold them all for the whole run."""
  yield
  jax.clear_caches()
