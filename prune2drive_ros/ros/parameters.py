"""The parameters of ``drive_vqa_node``: the node's view of ``prune2drive_ros.settings`` (no ROS).

Each node parameter is a ``Setting`` of that table, named here by its parameter name (``pruning_method``
for the runner's ``pruning``). The node declares them (type, default, range, read-only, description),
checks start-up values and run-time changes with ``check_parameter``, and ``config/drive_vqa.yaml``
and the launch arguments are generated from the same table.
"""

from __future__ import annotations

import dataclasses

from prune2drive_ros.settings import (
    BOOL,
    DOUBLE,
    DOUBLE_ARRAY,
    DYNAMIC_PARAMETERS,
    ERROR_FACTOR,
    INTEGER,
    MAX_QUESTION_CHARS,
    NODE_PARAMETERS,
    STRING,
    STRING_ARRAY,
    Setting,
    coerce,
    render_yaml,
)
from prune2drive_ros.settings import check as check_parameter

PARAMETERS: tuple[Setting, ...] = tuple(dataclasses.replace(s, name=s.param_name, param="") for s in NODE_PARAMETERS)
"""The node's parameters, ``name`` being the parameter's name."""
BY_NAME: dict[str, Setting] = {spec.name: spec for spec in PARAMETERS}

__all__ = ["BOOL", "BY_NAME", "DOUBLE", "DOUBLE_ARRAY", "DYNAMIC_PARAMETERS", "ERROR_FACTOR", "INTEGER",
           "MAX_QUESTION_CHARS", "PARAMETERS", "STRING", "STRING_ARRAY", "check_parameter", "coerce", "render_yaml"]
