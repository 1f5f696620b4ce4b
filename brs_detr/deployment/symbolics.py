"""ONNX symbolics that fix torch's own for the graphs exported here."""
from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch

LINSPACE = 'aten::linspace'


def linspace_symbolic(g: Any, start: Any, end: Any, steps: Any, dtype: Any, layout: Any, device: Any,
                      pin_memory: Any) -> Any:
    """``torch.linspace`` for the TorchScript exporter, also right for ``steps == 1``.

    torch's symbolic computes the step as ``(end - start) / (steps - 1)``: for one step that is 0 / 0, and the
    single value becomes NaN. Deformable DETR calls ``linspace(0.5, H - 0.5, H)`` per feature level (reference
    points, encoder proposals), and the coarsest level of a 64-pixel-high input is one row high: the graph would
    give NaN boxes for such inputs. Here the divisor is ``max(steps - 1, 1)`` (the value is ``start`` then, as in
    PyTorch).
    """
    from torch.onnx._internal.torchscript_exporter import symbolic_helper
    from torch.onnx._internal.torchscript_exporter.symbolic_opset9 import add, div, mul, sub

    one = g.op('Constant', value_t=torch.tensor(1, dtype=torch.int64))
    intervals = g.op('Max', sub(g, steps, one), one)
    return add(g, mul(g, symbolic_helper._arange_helper(g, steps, None), div(g, sub(g, end, start), intervals)),
               start)


@contextlib.contextmanager
def fixed_symbolics(opset: int) -> Iterator[None]:
    """Register :func:`linspace_symbolic` for ``opset`` during the block (and remove it afterwards)."""
    torch.onnx.register_custom_op_symbolic(LINSPACE, linspace_symbolic, opset)
    try:
        yield
    finally:
        torch.onnx.unregister_custom_op_symbolic(LINSPACE, opset)
