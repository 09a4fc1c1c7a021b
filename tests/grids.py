"""Test grids: covering subsets by default, full cross-products with SEQTRAIN_FULL_TESTS=1.

The default suite must stay fast enough to be run on every change (under 8 minutes on a
2-core CI machine), so the solver modules meet every method with every cell and every
kind of shape, but not every triple: :func:`rotate` pairs each combination with a few
shapes, cycling so that every shape still meets every method and every cell.
"""
import itertools
import os

FULL = os.environ.get("SEQTRAIN_FULL_TESTS") == "1"


def rotate(combos, shapes, per=1):
  """``(*combo, *shape)`` tuples: every combo with ``per`` shapes in turn (all with FULL)."""
  combos, shapes = list(combos), list(shapes)
  if FULL or per >= len(shapes):
    return [(*c, *s) for c in combos for s in shapes]
  out = []
  for i, c in enumerate(combos):
    out += [(*c, *shapes[(i * per + k) % len(shapes)]) for k in range(per)]
  return out


def product(*lists):
  return list(itertools.product(*lists))
