"""CUDA graphs: a function of static buffers captured once and replayed.

An eager decoder layer is a few dozen small kernels, so an eager token step of a 32-layer model is
about a thousand launches and the GPU idles between them. A captured graph replays the same kernels
with one launch. The captured function must read and write only tensors whose addresses stay put
(inputs are copied into the graph's own buffers) and must not synchronize with the host.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

WARMUP_RUNS = 2


class CapturedCall:
    """``fn(*inputs)`` captured on the current CUDA device; calling it copies inputs in and replays."""

    def __init__(self, fn: Callable[..., object], example_inputs: Sequence[Tensor] = (), pool=None):
        t0 = time.perf_counter()
        self.inputs = [x.clone() for x in example_inputs]
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # first runs allocate lazily-built state (cuBLAS handles, workspaces)
            for _ in range(WARMUP_RUNS):
                fn(*self.inputs)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, pool=pool):
            self.outputs = fn(*self.inputs)
        torch.cuda.synchronize()
        self.capture_ms = (time.perf_counter() - t0) * 1000.0

    def __call__(self, *inputs: Tensor):
        for buffer, value in zip(self.inputs, inputs, strict=True):
            if buffer is not value:
                buffer.copy_(value)
        self.graph.replay()
        return self.outputs


class GraphSet:
    """The graphs of one runner: a shared memory pool, capture time, and why capture was given up."""

    def __init__(self, enabled: bool, strict: bool = False):
        self.enabled = enabled
        self.strict = strict
        self.pool = torch.cuda.graph_pool_handle() if enabled else None
        self.capture_ms = 0.0
        self.failure = ""

    def capture(self, fn: Callable[..., object], example_inputs: Sequence[Tensor] = ()) -> CapturedCall | None:
        """The captured call, or None (eager) when graphs are off or capture fails."""
        if not self.enabled:
            return None
        try:
            call = CapturedCall(fn, example_inputs, pool=self.pool)
        except Exception as exc:
            if self.strict:
                raise
            torch.cuda.synchronize()
            self.failure = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
            return None
        self.capture_ms += call.capture_ms
        return call

