"""The node's parameters, declared from ``prune2drive_ros.settings`` (rclpy glue).

``NodeParameters`` declares every node setting on a node (type, default, range, read-only, description)
and checks values with the settings' rules:

- a start-up value that is out of range or of the wrong type never ends the process: it is logged with
  the reason and how to fix it, the default is declared in its place, and ``problems()`` keeps naming
  it (the node's configure fails) until a valid value is set;
- run-time changes are refused with the reason (``ros2 param set`` prints it); valid ones go to the
  node's ``on_change`` (after they are set; on Humble, which has no post-set callback, just before);
- an integer where a double is expected (``retain:=1``) is taken as that double.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, SetParametersResult
from rclpy.exceptions import ParameterUninitializedException
from rclpy.node import Node
from rclpy.parameter import Parameter

from prune2drive_ros.settings import (
    BOOL,
    DOUBLE,
    DOUBLE_ARRAY,
    INTEGER,
    NODE_PARAMETERS,
    STRING,
    STRING_ARRAY,
    Setting,
    check,
    coerce,
)

BY_PARAM: dict[str, Setting] = {spec.param_name: spec for spec in NODE_PARAMETERS}
_ROS_TYPES = {STRING: Parameter.Type.STRING, DOUBLE: Parameter.Type.DOUBLE, INTEGER: Parameter.Type.INTEGER,
              BOOL: Parameter.Type.BOOL, DOUBLE_ARRAY: Parameter.Type.DOUBLE_ARRAY,
              STRING_ARRAY: Parameter.Type.STRING_ARRAY}


def descriptor(spec: Setting) -> ParameterDescriptor:
    constraints = f"{spec.low:g} excluded" if spec.low is not None and spec.low_open else " | ".join(spec.choices)
    out = ParameterDescriptor(description=spec.description + ("" if spec.dynamic else " (read-only: set at start-up)"),
                              read_only=not spec.dynamic, additional_constraints=constraints)
    if spec.low is not None and spec.kind in (DOUBLE, DOUBLE_ARRAY):
        out.floating_point_range = [FloatingPointRange(from_value=float(spec.low), to_value=float(spec.high))]
    elif spec.low is not None:
        out.integer_range = [IntegerRange(from_value=int(spec.low), to_value=int(spec.high), step=1)]
    return out


def fix_hint(node_name: str, name: str) -> str:
    if BY_PARAM[name].dynamic:
        return (f"set a valid value (ros2 param set /{node_name} {name} VALUE) and configure again, "
                "or restart with a corrected value")
    return (f"{name} is read-only: restart the node with a corrected value "
            f"({name}:=VALUE on ros2 launch, -p {name}:=VALUE with --ros-args)")


class NodeParameters:
    """Every node setting declared on ``node``; see the module docstring."""

    def __init__(self, node: Node, on_change: Callable[[dict[str, Any]], None]) -> None:
        self._node = node
        self._on_change = on_change
        self.names = [spec.param_name for spec in NODE_PARAMETERS]
        self.errors: dict[str, str] = {}
        """Parameter -> why its start-up value was rejected, and how to fix it."""
        overrides: Mapping[str, Parameter] = getattr(node, "_parameter_overrides", {})
        for spec in NODE_PARAMETERS:
            self._declare(spec, overrides.get(spec.param_name))
        # rclpy >= Iron: convert an integer to a double before the type check (`ros2 param set ... retain 1`).
        if hasattr(node, "add_pre_set_parameters_callback"):
            node.add_pre_set_parameters_callback(self._coerce)
        node.add_on_set_parameters_callback(self._check)
        # Humble has no post-set callback: there the validated values are applied from the on-set callback.
        self.apply_on_set = not hasattr(node, "add_post_set_parameters_callback")
        if not self.apply_on_set:
            node.add_post_set_parameters_callback(lambda params: self._changed({p.name: p.value for p in params}))

    def _declare(self, spec: Setting, override: Parameter | None) -> None:
        name = spec.param_name
        default = _ROS_TYPES[spec.kind] if spec.default is None else spec.default
        value, ignore_override = default, False
        if override is not None:
            candidate = coerce(name, override.value)
            reason = check(name, candidate)
            if reason is not None:
                self._reject(spec, override.value, reason)
                ignore_override = True
            elif candidate is not override.value:
                value, ignore_override = candidate, True
        try:
            self._node.declare_parameter(name, value, descriptor(spec), ignore_override=ignore_override)
        except Exception as exc:  # whatever rclpy refuses: keep the default, never end the process
            self._reject(spec, override.value if override else None, f"{type(exc).__name__}: {exc}")
            self._node.declare_parameter(name, default, descriptor(spec), ignore_override=True)

    def _reject(self, spec: Setting, given: Any, reason: str) -> None:
        default = "unset" if spec.default is None else repr(spec.default)
        message = f"start-up value {given!r} of {spec.param_name} rejected ({reason}); using {default} for now"
        self.errors[spec.param_name] = f"{message}. To fix: {fix_hint(self._node.get_name(), spec.param_name)}"
        self._node.get_logger().error(f"parameter {self.errors[spec.param_name]}")

    def value(self, name: str) -> Any:
        """The value, or None for a parameter declared without a default and never set (view_ratios, questions)."""
        try:
            value = self._node.get_parameter(name).value
        except ParameterUninitializedException:
            return None
        return list(value) if BY_PARAM[name].kind == DOUBLE_ARRAY and value is not None else value

    def values(self) -> dict[str, Any]:
        return {name: self.value(name) for name in self.names}

    def problems(self) -> list[str]:
        """Why configure cannot proceed: rejected start-up values and invalid current ones, each with its fix."""
        out = list(self.errors.values())
        for name in self.names:
            reason = None if name in self.errors else check(name, self.value(name))
            if reason is not None:
                out.append(f"{reason}. To fix: {fix_hint(self._node.get_name(), name)}")
        return out

    def _coerce(self, params: list[Parameter]) -> list[Parameter]:
        out = []
        for p in params:
            spec, value = BY_PARAM.get(p.name), coerce(p.name, p.value)
            out.append(p if spec is None or value is p.value else Parameter(p.name, _ROS_TYPES[spec.kind], value))
        return out

    def _check(self, params: Sequence[Parameter]) -> SetParametersResult:
        """Reject invalid values with the reason (read-only ones never get here: rclpy refuses them)."""
        for p in params:
            reason = check(p.name, coerce(p.name, p.value))
            if reason is not None:
                return SetParametersResult(successful=False, reason=reason)
        if self.apply_on_set:
            self._changed({p.name: p.value for p in params})
        return SetParametersResult(successful=True)

    def _changed(self, changed: Mapping[str, Any]) -> None:
        values = {name: coerce(name, value) for name, value in changed.items()}
        values = {name: list(v) if isinstance(v, tuple) else v for name, v in values.items()}
        for name in values:
            if self.errors.pop(name, None) is not None:
                self._node.get_logger().info(f"{name} is valid now ({values[name]!r}); configure can proceed")
        self._on_change(values)
