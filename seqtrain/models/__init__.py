"""Models built from seqtrain.nn layers."""
from seqtrain.models.classifier import SequenceClassifier, ResidualBlock, masked_mean

__all__ = ["SequenceClassifier", "ResidualBlock", "masked_mean"]
