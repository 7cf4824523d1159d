"""CUDA graphs and torch.compile for the answer path: capture once at configure time, replay per frame.

An eager decoder layer is a few dozen small kernels, so an eager token step of a 32-layer model is
about a thousand launches and the GPU idles between them. A captured graph replays the same kernels
with one launch. A captured function must read and write only tensors whose addresses stay put and
must not synchronize with the host or copy from it (``graph_rules`` checks both off the GPU).

``Compiler`` optionally compiles the layer functions with inductor first (fused kernels, then
captured: "compiled-graph"). Whatever fails (a capture, a compile) is logged once with its root
cause, the stream is restored, and the part runs eagerly and says so in ``Answer.paths``; with
``cuda_graphs="on"`` / ``compile="on"`` the failure raises instead.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

log = logging.getLogger(__name__)

WARMUP_RUNS = 2
STAGES = ("vision", "prefix", "question", "decode")


class CaptureFailed(RuntimeError):
    """A strict capture (``cuda_graphs="on"``) or compile (``compile="on"``) failed; the cause is chained."""


def root_cause(exc: BaseException) -> BaseException:
    """The innermost exception of a ``raise ... from`` / during-handling chain."""
    seen = {id(exc)}
    while (inner := exc.__cause__ or exc.__context__) is not None and id(inner) not in seen:
        seen.add(id(inner))
        exc = inner
    return exc


def describe_failure(exc: BaseException) -> str:
    """One line: the exception and, when it differs, its root cause (what a log reader needs to act on)."""
    def line(e: BaseException) -> str:
        first = next((s.strip() for s in str(e).splitlines() if s.strip()), "")
        return f"{type(e).__name__}: {first}"[:240]

    root = root_cause(exc)
    return line(exc) if root is exc else f"{line(exc)} (root cause: {line(root)})"


class CapturedCall:
    """``fn(*inputs)`` captured on the current CUDA device; calling it copies new inputs in and replays.

    ``inputs`` become the graph's input buffers as they are (not copied): a caller that passes the same
    tensors again (a previous graph's outputs, a staging buffer) costs no copy.
    """

    def __init__(self, fn: Callable[..., object], inputs: Sequence[Tensor] = (), pool=None):
        t0 = time.perf_counter()
        self.inputs = list(inputs)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # first runs allocate lazily-built state (cuBLAS handles, compiled kernels)
            for _ in range(WARMUP_RUNS):
                fn(*self.inputs)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        # thread_local: another thread's legal CUDA call (the node decoding images) must not void the capture.
        with torch.cuda.graph(self.graph, pool=pool, capture_error_mode="thread_local"):
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
    """The graphs of one runner: a shared memory pool, capture time, and why a part runs eagerly.

    ``call_type`` is ``CapturedCall`` on CUDA; the CPU tests pass ``graph_rules.RecordedCall``, which keeps
    a graph's rules without a GPU.
    """

    def __init__(self, enabled: bool, strict: bool = False, off_reason: str = "", call_type=None):
        self.enabled = enabled
        self.strict = strict
        self.off_reason = off_reason  # why graphs are off ("cpu", "cuda_graphs=off")
        self.call_type = call_type or CapturedCall
        cuda = enabled and self.call_type is CapturedCall
        self.pool = torch.cuda.graph_pool_handle() if cuda else None
        self.capture_ms = 0.0
        self.failures: dict[str, str] = {}

    def capture(self, name: str, fn: Callable[..., object], inputs: Sequence[Tensor] = ()):
        """The captured call, or None (run ``fn`` eagerly) when graphs are off or this capture fails."""
        if not self.enabled or name in self.failures:
            return None
        stream = torch.cuda.current_stream() if self.pool is not None else None
        try:
            call = self.call_type(fn, inputs, pool=self.pool)
        except Exception as exc:
            if stream is not None:
                # torch.cuda.graph leaves its capture stream current when ending the capture raises.
                torch.cuda.set_stream(stream)
                with contextlib.suppress(Exception):  # the capture's own error again; reported below
                    torch.cuda.synchronize()
            message = describe_failure(exc)
            if self.strict:
                raise CaptureFailed(f"CUDA graph capture of {name} failed: {message}") from exc
            log.warning("CUDA graph capture of %s failed, it runs eagerly: %s", name, message, exc_info=exc)
            self.failures[name] = message
            return None
        self.capture_ms += call.capture_ms
        return call

    def eager_reason(self, name: str) -> str:
        if name in self.failures:
            return f"capture failed: {self.failures[name]}"
        return self.off_reason


# Every runner a process builds (bf16, int8, int4, each budget) adds its own guards (a decode width of 1,
# the question widths, the weights' tensor subclass) to the one code object these functions share; torch's
# default of 8 entries was spent by the bench's int4 runner on an H200, which then ran uncompiled. 32 serves
# about ten runners and still stops a function whose guards fail on every call.
RECOMPILES = 32
_RECOMPILE_LIMIT = "recompile_limit" if hasattr(torch._dynamo.config, "recompile_limit") else "cache_size_limit"
# Sizes are ints of the layer shape: constants, not symbols (only tensor dims are dynamic).
_DYNAMO_CONFIG = {"specialize_int": True, _RECOMPILE_LIMIT: RECOMPILES}


class Compiler:
    """Compiles functions with inductor where asked; a compile that fails is logged once (with its root
    cause) and that function runs uncompiled from then on, unless ``strict``."""

    def __init__(self, enabled: bool, strict: bool = False, off_reason: str = ""):
        self.enabled, self.strict, self.off_reason = enabled, strict, off_reason
        self.failures: dict[str, str] = {}
        self.compiled: list[str] = []

    def __call__(self, fn: Callable, name: str, fullgraph: bool = True) -> Callable:
        if not self.enabled:
            return fn
        # dynamic: the token count differs per bucket and per plan; one compile serves them all.
        compiled = torch.compile(fn, dynamic=True, fullgraph=fullgraph)
        self.compiled.append(name)

        def run(*args):
            if name not in self.failures:
                try:
                    with torch._dynamo.config.patch(**_DYNAMO_CONFIG):
                        return compiled(*args)
                except Exception as exc:
                    message = describe_failure(exc)
                    if self.strict:
                        raise CaptureFailed(f"torch.compile of {name} failed: {message}") from exc
                    log.warning("torch.compile of %s failed, it runs uncompiled: %s", name, message, exc_info=exc)
                    self.failures[name] = message
            return fn(*args)

        return run

    @property
    def active(self) -> bool:
        """Compiled code runs (compile on and nothing fell back)."""
        return self.enabled and not self.failures

    def note(self) -> str:
        """Why the layers are not compiled, or ''."""
        if not self.enabled:
            return self.off_reason
        if self.failures:
            return "compile failed: " + "; ".join(f"{k}: {v}" for k, v in self.failures.items())
        return ""


class StagePaths:
    """How each stage of one answer ran: every part of it replayed as a graph, or the first reason one did not."""

    def __init__(self, compiler: Compiler):
        self.compiler = compiler
        self.notes: dict[str, tuple[bool, str]] = {}

    def note(self, stage: str, graphed: bool, reason: str = "") -> None:
        if self.notes.get(stage, (True, ""))[0]:
            self.notes[stage] = (graphed, reason)

    def resolve(self) -> dict[str, str]:
        compiled, note = self.compiler.active, self.compiler.note()
        paths = {}
        for stage in STAGES:
            graphed, reason = self.notes.get(stage, (False, "not run"))
            if graphed:
                paths[stage] = "compiled-graph" if compiled else "graph" + (f" ({note})" if note else "")
            else:
                reasons = [r for r in (reason, "compiled" if compiled else "") if r]
                paths[stage] = "eager" + (f" ({'; '.join(reasons)})" if reasons else "")
        return paths


def summary(paths: dict[str, str]) -> str:
    """``Answer.path``: "cuda-graph" iff every stage was captured, "eager" iff none was, else the mix."""
    captured = {stage: value.startswith(("graph", "compiled-graph")) for stage, value in paths.items()}
    if all(captured.values()):
        return "cuda-graph"
    if not any(captured.values()):
        return "eager"
    return ", ".join(f"{stage} {'graph' if c else 'eager'}" for stage, c in captured.items())
