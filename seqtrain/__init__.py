"""seqtrain: parallel-in-time recurrent layers and a training framework in JAX."""
__version__ = "0.1.0"
