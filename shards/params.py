"""Per-sample augmentation parameters as expressions, evaluated by numpy over a whole batch.

The augmentation code (``augment.py``) derives every operator argument (crop box, colour factors,
blur taps, cutout and mask rectangles, ...) from random draws with a few dozen scalar operations
per view. Inside a DALI graph each of those is an operator, and a DALI operator costs ~40 us per
batch of 16 however small its data (measured: ``x * 1.0001`` on a scalar, simple executor, two
threads): the default training graph had ~400 of them, ~16 ms per batch, ~1 ms per clip. In
training the draws come from the plan pipeline anyway, so the loader evaluates the same
arithmetic with numpy, vectorised over the batch (``Sym`` below, ~0.03 ms per clip), and feeds
only the results to the work graph (``RecordedDraws.node``). Evaluation graphs, whose draws are
random operators inside the graph, run the same augmentation code with DALI arithmetic
(``LiveDraws``): one source for both.

A ``Sym`` is one per-sample value: a scalar (numpy ``[B, 1]`` over a batch) or a vector
(``[B, n]``). Arithmetic, comparisons, ``&``, indexing and slicing build new nodes; ``evaluate``
computes the requested nodes in float32 (booleans for comparisons), each node once.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

Number = float | int


class Sym:
    """A node of a per-sample expression: ``op`` applied to ``args`` (nodes or constants)."""

    __slots__ = ("op", "args", "size")
    __array_ufunc__ = None  # numpy arrays on the left defer to Sym's reflected operators

    def __init__(self, op: str, args: tuple[Any, ...], size: int):
        self.op, self.args, self.size = op, args, size  # size: 0 = scalar, n = vector of n

    # -- arithmetic and comparisons (elementwise, numpy broadcasting)
    def _binary(self, name: str, other: Any, reflected: bool = False) -> Sym:
        size = max(self.size, other.size if isinstance(other, Sym) else int(np.size(other)) if np.ndim(other) else 0)
        return Sym(name, (other, self) if reflected else (self, other), size)

    def __add__(self, o): return self._binary("add", o)
    def __radd__(self, o): return self._binary("add", o, True)
    def __sub__(self, o): return self._binary("sub", o)
    def __rsub__(self, o): return self._binary("sub", o, True)
    def __mul__(self, o): return self._binary("mul", o)
    def __rmul__(self, o): return self._binary("mul", o, True)
    def __truediv__(self, o): return self._binary("div", o)
    def __rtruediv__(self, o): return self._binary("div", o, True)
    def __neg__(self): return Sym("neg", (self,), self.size)
    def __lt__(self, o): return self._binary("lt", o)
    def __le__(self, o): return self._binary("le", o)
    def __gt__(self, o): return self._binary("gt", o)
    def __ge__(self, o): return self._binary("ge", o)
    def __eq__(self, o): return self._binary("eq", o)  # type: ignore[override]
    def __and__(self, o): return self._binary("and", o)
    __hash__ = object.__hash__

    def __getitem__(self, index: int | slice) -> Sym:
        if isinstance(index, slice):
            start, stop, step = index.indices(self.size)
            return Sym("slice", (self, start, stop, step), len(range(start, stop, step)))
        return Sym("item", (self, index), 0)

    def __bool__(self) -> bool:
        raise TypeError("a per-sample parameter has no truth value in Python; hand it to the graph (Draws.node)")


def leaf(key: Any, size: int = 0) -> Sym:
    """An input of the expressions, supplied by key at evaluation."""
    return Sym("leaf", (key,), size)


def apply(name: str, *args: Any, size: int | None = None) -> Sym:
    """``name`` (a key of ``FUNCTIONS``) on ``args``; the size is the largest argument's unless given."""
    sizes = [a.size if isinstance(a, Sym) else (int(np.size(a)) if np.ndim(a) else 0) for a in args]
    return Sym(name, args, max(sizes) if size is None else size)


def _reduce(function: Callable[..., np.ndarray]) -> Callable[[np.ndarray], np.ndarray]:
    return lambda x: function(x, axis=-1, keepdims=True)


FUNCTIONS: dict[str, Callable[..., np.ndarray]] = {
    "add": operator.add, "sub": operator.sub, "mul": operator.mul, "div": operator.truediv, "neg": operator.neg,
    "lt": operator.lt, "le": operator.le, "gt": operator.gt, "ge": operator.ge, "eq": operator.eq, "and": np.logical_and,
    "floor": np.floor, "sqrt": np.sqrt, "exp": np.exp, "minimum": np.minimum, "maximum": np.maximum,
    "clamp": lambda x, lo, hi: np.minimum(np.maximum(x, lo), hi),
    "sum": _reduce(np.sum), "min": _reduce(np.min), "max": _reduce(np.max),
    "as_float": lambda x: np.asarray(x, dtype=np.float32),
}


def _constant(value: Any, batch: int) -> np.ndarray:
    array = np.asarray(value, dtype=np.float32)
    return array if array.ndim == 0 else np.broadcast_to(array, (batch, *array.shape))


def evaluate(nodes: Sequence[Sym], leaves: dict[Any, np.ndarray], batch: int) -> list[np.ndarray]:
    """The values of ``nodes`` over a batch: a scalar node gives ``[B]``, a vector node ``[B, n]``.
    ``leaves`` maps each leaf key to its ``[B]`` / ``[B, n]`` array."""
    memo: dict[int, np.ndarray] = {}

    def value(x: Any) -> np.ndarray:
        if not isinstance(x, Sym):
            return _constant(x, batch)
        known = memo.get(id(x))
        if known is not None:
            return known
        if x.op == "leaf":
            out = np.asarray(leaves[x.args[0]])
            out = out.reshape(batch, 1) if out.ndim == 1 else out
        elif x.op == "item":
            out = value(x.args[0])[:, x.args[1] : x.args[1] + 1]
        elif x.op == "slice":
            base, start, stop, step = x.args
            out = value(base)[:, start:stop:step]
        elif x.op == "stack":  # scalars -> [B, n]
            out = np.concatenate([np.broadcast_to(value(a), (batch, 1)) for a in x.args], axis=-1)
        else:
            out = FUNCTIONS[x.op](*(value(a) for a in x.args))
        if out.dtype == np.float64:
            out = out.astype(np.float32)
        memo[id(x)] = out
        return out

    results = []
    for node in nodes:
        out = np.broadcast_to(value(node), (batch, max(node.size, 1)))
        results.append(np.ascontiguousarray(out[:, 0] if node.size == 0 else out))
    return results
