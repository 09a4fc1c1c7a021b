"""clu.metrics accumulation of training and evaluation metrics.

The jitted steps return per-batch sums already reduced over the mesh (one psum);
the host merges them with clu's ``Metric.merge`` so evaluation counts every example
exactly once and the train window average is exact over the logged steps.
"""

import flax
import jax.numpy as jnp
import numpy as np
from clu import metrics as clu_metrics

__all__ = ["ConfusionMatrix", "EvalMetrics", "TrainWindow", "eval_batch_metrics"]


@flax.struct.dataclass
class ConfusionMatrix(clu_metrics.Metric):
  """Counts of (true class, predicted class); padding rows carry weight 0."""
  counts: jnp.ndarray

  @classmethod
  def empty(cls):
    raise NotImplementedError("build from a batch: the number of classes is not known here")

  @classmethod
  def from_model_output(cls, counts: jnp.ndarray, **_) -> "ConfusionMatrix":
    return cls(counts=counts)

  def merge(self, other: "ConfusionMatrix") -> "ConfusionMatrix":
    return type(self)(counts=self.counts + other.counts)

  def compute(self) -> np.ndarray:
    return np.asarray(self.counts)


@flax.struct.dataclass
class SummedAverage(clu_metrics.Average):
  """An average built from a (sum, count) pair already reduced over the mesh."""

  @classmethod
  def from_model_output(cls, loss_sum, count, **_) -> "SummedAverage":
    return cls(total=loss_sum, count=count)


@flax.struct.dataclass
class EvalMetrics(clu_metrics.Collection):
  loss: SummedAverage
  confusion: ConfusionMatrix


def eval_batch_metrics(out: dict) -> EvalMetrics:
  """One eval step's (mesh-reduced) output as a clu collection."""
  confusion = np.asarray(out["confusion"], np.float64)
  return EvalMetrics.single_from_model_output(
      loss_sum=np.asarray(out["loss_sum"], np.float64), count=np.asarray(confusion.sum()),
      counts=confusion)


@flax.struct.dataclass
class TrainWindow(clu_metrics.Collection):
  """Averages of the per-step loss and accuracy over the steps since the last log."""
  loss: clu_metrics.Average.from_output("loss")
  accuracy: clu_metrics.Average.from_output("accuracy")
