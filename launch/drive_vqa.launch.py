"""Launch drive_vqa_node with the package's parameter file plus command-line overrides.

    ros2 launch prune2drive_ros drive_vqa.launch.py retain:=0.25 device:=cuda

An override left empty keeps the value from ``params_file``; a set one wins over it.
"""

import os

import yaml
from ament_index_python.packages import get_package_share_directory
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from launch import LaunchDescription
from prune2drive_ros.settings import NODE_PARAMETERS

# One launch argument per node parameter, from the settings table (names, descriptions).
OVERRIDES = {spec.param_name: spec.description for spec in NODE_PARAMETERS}


def _node(context, *args, **kwargs):
    overrides = {}
    for name in OVERRIDES:
        value = LaunchConfiguration(name).perform(context)
        if value != "":
            # Same typing rules as --ros-args -p: "0.1" is a double, "1" an integer (which the node accepts
            # for a double parameter), "true" a bool. What YAML cannot read goes as text: the node then
            # rejects it with the reason and stays up.
            try:
                overrides[name] = yaml.safe_load(value)
            except yaml.YAMLError:
                overrides[name] = value
    params_file = LaunchConfiguration("params_file").perform(context)
    return [
        Node(
            package="prune2drive_ros",
            executable="drive_vqa_node",
            name=LaunchConfiguration("node_name").perform(context),
            output="screen",
            emulate_tty=True,
            parameters=[params_file, overrides],
        )
    ]


def generate_launch_description():
    default_params = os.path.join(
        get_package_share_directory("prune2drive_ros"), "config", "drive_vqa.yaml"
    )
    args = [
        DeclareLaunchArgument("params_file", default_value=default_params,
                              description="ROS parameter file for drive_vqa_node"),
        DeclareLaunchArgument("node_name", default_value="drive_vqa",
                              description="node name"),
    ]
    args += [
        DeclareLaunchArgument(name, default_value="", description=f"{text} (empty: from params_file)")
        for name, text in OVERRIDES.items()
    ]
    return LaunchDescription([*args, OpaqueFunction(function=_node)])
