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
redo any side effect themselves, and record anew for other input shapes. The tracer does not see grad mode:
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


def _record_and_run(fn: Callable[..., Tensor | tuple[Tensor, ...]], inputs: Sequence[Tensor],
                    name: str) -> tuple[RecordedFunction | None, Tensor | tuple[Tensor, ...]]:
    """:func:`record` ``fn`` and return the recording with what ``fn`` returned while it was recorded (the
    tracer runs the eager operators, so that is ``fn(*inputs)``, with its autograd graph), or ``None`` and
    ``fn(*inputs)`` where no recording can be made."""
    results: list[Tensor | tuple[Tensor, ...]] = []

    def run_and_keep(*args: Tensor) -> Tensor | tuple[Tensor, ...]:
        results.append(fn(*args))
        return results[-1]

    recording = record(run_and_keep, inputs, name)
    if recording is None or not results:
        return None, fn(*inputs)
    return recording, results[0]


Shapes = tuple[tuple[int, ...], ...]


class Recordings:
    """Recordings of one computation by input shapes, for the :class:`Recorded` functions that share it.

    Functions that compute the same thing from their inputs (the same operators, the same constant tensors
    or tensors of equal values, as the per-thread groups of one batch do) can replay one recording: the first
    caller for some input shapes records; callers in other threads run the function eagerly while it does (the
    same values; waiting instead made a batch's first step about 30 ms longer), then all replay it.
    Thread-safe.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_shapes: dict[Shapes, RecordedFunction | None] = {}

    def run(self, fn: Callable[..., Tensor | tuple[Tensor, ...]], inputs: Sequence[Tensor],
            name: str) -> tuple[RecordedFunction | None, Tensor | tuple[Tensor, ...]]:
        """``fn(*inputs)``, replayed from the recording for these input shapes, made (by running ``fn``) when
        there is none yet; also returns the recording (``None``: this PyTorch cannot record, ``fn`` ran)."""
        shapes = tuple(tuple(t.shape) for t in inputs)
        if shapes not in self._by_shapes:
            if not self._lock.acquire(blocking=False):  # another thread records: run eagerly meanwhile
                return None, fn(*inputs)
            try:
                if shapes not in self._by_shapes:
                    recording, result = _record_and_run(fn, inputs, name)
                    self._by_shapes[shapes] = recording  # None: run eagerly from now on, without the lock
                    return recording, result
            finally:
                self._lock.release()
        recording = self._by_shapes[shapes]
        return recording, fn(*inputs) if recording is None else recording(*inputs)


class Recorded:
    """``fn``, replayed from a recording (:func:`record`) of it for the inputs' shapes, made on the first call
    with inputs of those shapes (which returns what ``fn`` returned while it was recorded); ``fn`` itself where
    no recording can be made, and while a Python dispatch mode (such as
    ``torch.utils.flop_counter.FlopCounterMode``) is active: recording under one fails.

    Args:
        fn: as for :class:`RecordedFunction`; its Python-level branches must not depend on anything but the
            input shapes over this object's life.
        name: the graph's name.
        recordings: where the recordings are kept, to share them with other functions that compute the same
            thing (:class:`Recordings`); by default this function's own.
    """

    def __init__(self, fn: Callable[..., Tensor | tuple[Tensor, ...]], name: str,
                 recordings: Recordings | None = None) -> None:
        self.fn = fn
        self.name = name
        self.recordings = Recordings() if recordings is None else recordings
        self.recording: RecordedFunction | None = None  # the one the last call replayed or made

    def __call__(self, *inputs: Tensor) -> Tensor | tuple[Tensor, ...]:
        if _dispatch_mode_active():
            return self.fn(*inputs)
        self.recording, result = self.recordings.run(self.fn, inputs, self.name)
        return result
