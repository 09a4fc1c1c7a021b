"""Flax Linen layers on top of seqtrain.solvers."""
from seqtrain.nn.cells import DiagGRUCell, DiagLSTMCell, LRUCell
from seqtrain.nn.rnn import ParallelRNN

__all__ = ["DiagGRUCell", "DiagLSTMCell", "LRUCell", "ParallelRNN"]
