"""Forward passes recorded once as a graph of ATen operators and replayed by PyTorch's graph interpreter.

A reconstruction step issues about 1,400 small operators (1,800 for a group of the batched engine). Issued from
Python, each holds Python's global interpreter lock while its arguments are parsed, which costs time on every
step and makes the batched engine's groups, one thread each, take turns at the lock. Replayed from a recorded
graph (TorchScript's interpreter: C++, which holds no lock), the forward passes of G and D issue the same
operators in the same order, plus a few integer operations on sizes, without Python; autograd records them as
usual, so gradients, and therefore results, are bit-identical to the eager pass (tested).

Two details keep that true and the memory flat:

- the graph is replayed with the executor's optimisations off (``torch.jit.optimized_execution(False)``):
  with them on, the executor rewrites the graph (it differentiates some subgraphs with formulas of its own),
  and gradients differed from the eager ones by up to 1.5e-4 in a measurement;
- each recording gets a compilation unit of its own, freed with it. ``torch.jit.trace`` files every recording
  in one process-wide unit that never lets go of it (about 12 MB a batch of 8 images, measured).

A recorded function replays what the Python function did for the recorded inputs: Python-level branches
(on shapes, flags, module state) are fixed at recording time, Python side effects do not happen again, and
every tensor that is not an input is a constant. Callers record only functions whose branches cannot change
over the recording's life, pass every tensor that changes (in value or in ``requires_grad``) as an input,
redo any side effect themselves, and re-record when input shapes change. The tracer does not see grad mode:
operations under ``torch.no_grad()`` would be recorded as differentiable ones, so code that runs recorded
marks constants with ``.detach()`` instead, and it sees sizes as tensors (use ``int`` where a size is a key).
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

_RECORDING = threading.Lock()


class RecordedFunction:
    """``fn`` recorded for inputs shaped like ``inputs``; calling it replays the recording.

    Args:
        fn: a function of tensors returning a tensor or a tuple of tensors. Tensors it reads that are not among
            its arguments (module weights, buffers) are recorded as constants, unless they are the very tensor
            objects passed as arguments, which are recorded as inputs.
        inputs: example inputs; the recording runs ``fn`` on them once.
        name: the graph's name (for debugging).

    Raises:
        RuntimeError: when this PyTorch cannot record ``fn`` (see :func:`record`).
    """

    def __init__(self, fn: Callable[..., Tensor | tuple[Tensor, ...]], inputs: Sequence[Tensor],
                 name: str = "forward") -> None:
        # the tracer warns of every Python branch on a shape, which is fixed by design here; warning filters
        # are process-wide, so recordings (one per thread of a batch) take turns at changing them
        with _RECORDING, warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            graph, _ = torch._C._create_graph_by_tracing(fn, list(inputs), lambda _: "", False, False)
        self._unit = torch._C.CompilationUnit()
        self._function = self._unit.create_function(name, graph)
        self.shapes = [tuple(t.shape) for t in inputs]

    def matches(self, inputs: Sequence[Tensor]) -> bool:
        """Whether ``inputs`` have the shapes the recording was made for."""
        return [tuple(t.shape) for t in inputs] == self.shapes

    def __call__(self, *inputs: Tensor) -> Tensor | tuple[Tensor, ...]:
        with torch.jit.optimized_execution(False):
            return self._function(*inputs)


def record(fn: Callable[..., Tensor | tuple[Tensor, ...]], inputs: Sequence[Tensor],
           name: str = "forward") -> RecordedFunction | None:
    """:class:`RecordedFunction` of ``fn``, or ``None`` where this PyTorch has no tracer (the internal entry
    point used here may move in a later release; callers then run ``fn`` eagerly, with the same results)."""
    if not hasattr(torch._C, "_create_graph_by_tracing") or not hasattr(torch._C, "CompilationUnit"):
        return None
    return RecordedFunction(fn, inputs, name)


def _dispatch_mode_active() -> bool:
    """Whether a Python dispatch mode (such as a FLOP counter) sees the operators run now."""
    depth = getattr(torch._C, "_len_torch_dispatch_stack", None)
    return depth is not None and depth() > 0


class Recorded:
    """``fn``, replayed from a recording (:func:`record`) made on the first call (which runs ``fn`` once more)
    and again whenever the input shapes change; ``fn`` itself where no recording can be made, and while a
    Python dispatch mode (such as ``torch.utils.flop_counter.FlopCounterMode``) is active: recording under
    one fails.

    Args:
        fn: as for :class:`RecordedFunction`; its Python-level branches must not depend on anything but the
            input shapes over this object's life.
        name: the graph's name.
    """

    def __init__(self, fn: Callable[..., Tensor | tuple[Tensor, ...]], name: str) -> None:
        self.fn = fn
        self.name = name
        self.recording: RecordedFunction | None = None

    def __call__(self, *inputs: Tensor) -> Tensor | tuple[Tensor, ...]:
        if _dispatch_mode_active():
            return self.fn(*inputs)
        if self.recording is None or not self.recording.matches(inputs):
            self.recording = record(self.fn, inputs, self.name)
            if self.recording is None:
                return self.fn(*inputs)
        return self.recording(*inputs)
