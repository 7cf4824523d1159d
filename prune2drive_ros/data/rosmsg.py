"""rosbags message dataclasses -> rclpy message objects, generically, by field name.

rosbags deserializes into its own dataclasses (numeric arrays as numpy arrays); rclpy publishes the classes
generated for each ROS package. The two agree on field names, so one converter walks the rclpy class's
``SLOT_TYPES`` (the IDL types rosidl generated it from) and fills each field from the rosbags object. Per
class the field plan is computed once. Large ``uint8[]`` payloads (CompressedImage.data) become one
``array.array('B')`` built from the buffer: the generated setter keeps it without a per-element check.

Imports the ROS message packages (not rclpy itself) and only when asked to convert.
"""

from __future__ import annotations

import array
import importlib
from collections.abc import Callable
from functools import cache
from typing import Any

import numpy as np

# IDL basic types with a numeric array representation in rclpy: (array.array typecode, numpy dtype).
_NUMERIC = {
    "int8": ("b", np.int8), "uint8": ("B", np.uint8), "int16": ("h", np.int16), "uint16": ("H", np.uint16),
    "int32": ("i", np.int32), "uint32": ("I", np.uint32), "int64": ("q", np.int64), "uint64": ("Q", np.uint64),
    "float": ("f", np.float32), "double": ("d", np.float64),
}


@cache
def message_class(msgtype: str) -> type:
    """The rclpy class for ``pkg/msg/Name`` (or ``pkg/Name``); ImportError names the missing package."""
    parts = msgtype.split("/")
    if len(parts) == 2:
        parts = [parts[0], "msg", parts[1]]
    package, kind, name = parts
    try:
        module = importlib.import_module(f"{package}.{kind}")
        return getattr(module, name)
    except (ImportError, AttributeError) as exc:
        raise ImportError(f"no Python message class for {msgtype} (is the ROS package '{package}' installed?)") from exc


def to_rclpy(src: Any, cls: type | None = None) -> Any:
    """Convert a rosbags message (dataclass with ``__msgtype__``) into an instance of its rclpy class."""
    if cls is None:
        cls = message_class(src.__msgtype__)
    msg = cls()
    for name, convert in _plan(cls):
        setattr(msg, name, convert(getattr(src, name)))
    return msg


@cache
def _plan(cls: type) -> tuple[tuple[str, Callable[[Any], Any]], ...]:
    names = list(cls.get_fields_and_field_types())
    return tuple((name, _converter(slot)) for name, slot in zip(names, cls.SLOT_TYPES, strict=True))


def _converter(slot: Any) -> Callable[[Any], Any]:
    from rosidl_parser import definition as d  # shipped with the message packages

    if isinstance(slot, d.NamespacedType):
        nested = message_class("/".join([*slot.namespaces, slot.name]))
        return lambda value: to_rclpy(value, nested)
    if isinstance(slot, d.AbstractNestedType):
        value_type = slot.value_type
        fixed = isinstance(slot, d.Array)
        if isinstance(value_type, d.BasicType) and value_type.typename in _NUMERIC:
            code, dtype = _NUMERIC[value_type.typename]
            if fixed:  # fixed-size numeric arrays are numpy arrays in rclpy
                return lambda value: np.asarray(value, dtype=dtype)
            return lambda value: array.array(code, np.ascontiguousarray(value, dtype=dtype).tobytes())
        element = _converter(value_type)
        return lambda value: [element(v) for v in value]
    if isinstance(slot, d.BasicType):
        if slot.typename == "octet":  # byte: rclpy wants a 1-byte bytes object, rosbags gives an int
            return lambda value: value if isinstance(value, bytes) else bytes([int(value)])
        if slot.typename == "char":
            return lambda value: value if isinstance(value, str) else chr(int(value))
        if slot.typename == "boolean":
            return bool
        if slot.typename in ("float", "double"):
            return float
        return int
    return lambda value: value  # strings
