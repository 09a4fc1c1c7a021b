import jax
import pytest

jax.config.update("jax_enable_x64", True)


@pytest.fixture(autouse=True, scope="module")
def _fresh_jax_caches():
  """Drop compiled executables between test modules: the suite compiles a few
  hundred programs and need not hold them all for the whole run."""
  yield
  jax.clear_caches()
