"""What a function captured in a CUDA graph may do, checked without a GPU.

A CUDA graph replays kernels. It cannot wait for the host, read a value back, or take host data in
(a host-to-device copy is frozen at capture time), and no Python runs between its kernels, so a
Python value it depended on at capture time stays what it was. On a CPU none of this fails loudly,
so the CPU tests use:

- ``HostSyncGuard``: raises ``HostSyncError`` on every operation that syncs with the host or moves
  host data in: ``item``/``bool``/``int`` of a tensor (``_local_scalar_dense``), ``nonzero``,
  ``masked_select``, boolean indexing, ``unique``, ``tolist``, ``numpy``, tensors made from Python
  data (``torch.tensor``), copies from host memory to a device.
- ``RecordedCall``: stands in for ``graphs.CapturedCall`` off CUDA. It runs the function once under
  the guard, recording its aten operations, and replays them on the recorded tensors. Python is not
  re-run on replay, exactly as on a GPU, so the parity tests see any value frozen at capture time.
- ``OpCounter``: the kernels (aten operations that are not views) a function launches, by name;
  ``inductor_launches`` the same for a compiled function, read from the code inductor emitted.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from typing import Any

import torch
from torch import Tensor
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

aten = torch.ops.aten

# Operations whose output size or value the host must know: each one waits for the device.
SYNCING_OPS = {
    aten._local_scalar_dense.default, aten.nonzero.default, aten.nonzero_numpy.default, aten.argwhere.default,
    aten.masked_select.default, aten._unique2.default, aten.unique_dim.default, aten.unique_consecutive.default,
    aten.repeat_interleave.Tensor, aten.equal.default, aten.is_nonzero.default, aten.allclose.default,
    # Tensors from Python data (torch.tensor, as_tensor): host memory copied in, frozen in a graph.
    aten.lift_fresh.default, aten.lift_fresh_copy.default,
}
INDEXING_OPS = {aten.index.Tensor, aten.index_put.default, aten.index_put_.default, aten._index_put_impl_.default}
COPY_OPS = {aten._to_copy.default, aten.copy_.default, aten._copy_from.default}
# Python-level reads of device values (some never reach the dispatcher, e.g. ``tolist``).
SYNCING_METHODS = {Tensor.tolist, Tensor.item, Tensor.numpy, Tensor.__bool__, Tensor.__int__, Tensor.__float__,
                   Tensor.__index__, torch.tensor, torch.as_tensor, torch.from_numpy}


class HostSyncError(RuntimeError):
    """A captured function synced with the host or took host data in."""


def _tensors(args: Any) -> list[Tensor]:
    return [a for a in tree_flatten(args)[0] if isinstance(a, Tensor)]


class _DispatchGuard(TorchDispatchMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in SYNCING_OPS:
            raise HostSyncError(f"{func} syncs with the host or takes host data in; a CUDA graph cannot")
        if func in INDEXING_OPS:
            indices = args[1] if len(args) > 1 else kwargs.get("indices", ())
            if any(i is not None and i.dtype in (torch.bool, torch.uint8) for i in indices):
                raise HostSyncError(f"{func} with a boolean index calls nonzero (a host sync); use integer positions")
        if func in COPY_OPS:
            devices = {t.device.type for t in _tensors((args, kwargs))}
            target = kwargs.get("device")
            if target is not None:
                devices.add(torch.device(target).type)
            if "cpu" in devices and len(devices) > 1:
                raise HostSyncError(f"{func} copies between host and device memory; a CUDA graph cannot")
        return func(*args, **kwargs)


class _FunctionGuard(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in SYNCING_METHODS:
            name = getattr(func, "__name__", str(func))
            raise HostSyncError(f"{name} reads device values on the host or takes host data in; a CUDA graph cannot")
        return func(*args, **(kwargs or {}))


class HostSyncGuard(ExitStack):
    """``with HostSyncGuard(): fn()`` raises ``HostSyncError`` where ``fn`` would break a CUDA graph."""

    def __enter__(self):
        super().__enter__()
        self.enter_context(_FunctionGuard())
        self.enter_context(_DispatchGuard())
        return self


def _mutates(func) -> bool:
    return any(a.alias_info is not None and a.alias_info.is_write for a in func._schema.arguments)


def _is_view(func, args: Any, out: Any) -> bool:
    """The output shares an input's memory: nothing was computed. Decided per call, not by the schema:
    ``reshape``, ``contiguous`` or ``to`` may alias but copy when they must, ``_unsafe_view`` aliases."""
    if _mutates(func):
        return False
    inputs = {t.untyped_storage().data_ptr() for t in _tensors(args)}
    outputs = _tensors(out)
    return bool(outputs) and all(t.untyped_storage().data_ptr() in inputs for t in outputs)


class OpCounter(TorchDispatchMode):
    """Counts the aten operations that launch work (views launch none), by name."""

    def __init__(self):
        super().__init__()
        self.counts: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if not _is_view(func, (args, kwargs), out):
            self.counts[str(func.overloadpacket.__name__)] += 1
        return out

    @property
    def total(self) -> int:
        return sum(self.counts.values())


class _Recorder(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops: list[tuple[Any, tuple, dict, Any]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if not _is_view(func, (args, kwargs), out):  # a recorded view keeps aliasing its (updated) base
            self.ops.append((func, args, kwargs, out))
        return out


class RecordedCall:
    """A CPU stand-in for ``graphs.CapturedCall`` with a CUDA graph's rules (see the module docstring)."""

    def __init__(self, fn: Callable[..., object], inputs: Sequence[Tensor] = (), pool=None):
        t0 = time.perf_counter()
        self.inputs = list(inputs)
        recorder = _Recorder()
        with HostSyncGuard(), recorder:
            self.outputs = fn(*self.inputs)
        self.ops = recorder.ops
        self.capture_ms = (time.perf_counter() - t0) * 1000.0

    def __call__(self, *inputs: Tensor):
        for buffer, value in zip(self.inputs, inputs, strict=True):
            if buffer is not value:
                buffer.copy_(value)
        for func, args, kwargs, out in self.ops:
            fresh = func(*args, **kwargs)
            if not _mutates(func):  # out-of-place: the kernel writes the tensor later operations read
                for target, value in zip(_tensors(out), _tensors(fresh), strict=True):
                    target.copy_(value)
        return self.outputs

    def count_ops(self) -> Counter[str]:
        """The operations one replay launches, by name."""
        return Counter(str(func.overloadpacket.__name__) for func, *_ in self.ops)


_LAUNCH = re.compile(r"^\s+(?:\w+ = )?(?:(cpp_fused_\w+)\(|(\w+)\.run\(|extern_kernels\.(\w+)\(|"
                     r"torch\.ops\.(\w+\.\w+)[\w.]*\()", re.MULTILINE)


def inductor_launches(code: str) -> Counter[str]:
    """Kernels one call of inductor's output ``code`` launches: fused C++ or Triton kernels and the library
    calls it keeps (GEMMs, attention), by name (from ``torch._inductor.utils.run_and_get_code``)."""
    body = code[code.index("def call(") :]
    body = body[: body.find("\ndef ", 1)] if "\ndef " in body[1:] else body
    counts: Counter[str] = Counter()
    for match in _LAUNCH.finditer(body):
        fused, triton, extern, op = match.groups()
        counts["fused" if fused or triton else (extern or op)] += 1
    return counts
