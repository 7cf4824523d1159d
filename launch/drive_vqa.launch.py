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

# Launch argument -> node parameter. Every entry must exist in config/drive_vqa.yaml.
OVERRIDES = {
    "model": "checkpoint folder or hub id",
    "pruning_method": "none | tfps | divprune | fastv | random | pool | mvpruner",
    "retain": "fraction of visual tokens kept",
    "prune_layer": "decoder layer K where pruning happens",
    "vision_backend": "tensorrt | onnxruntime | torch",
    "engine_dir": "TensorRT / ONNX engine cache folder",
    "device": "auto | cpu | cuda | cuda:N",
    "dtype": "auto | float32 | float16 | bfloat16",
    "max_new_tokens": "answer length cap",
    "camera_topics": "six image topics in camera order, e.g. [/a, /b, /c, /d, /e, /f]",
    "image_transport": "compressed | raw",
    "qos_reliability": "best_effort | reliable",
    "sync_slop_s": "max stamp spread of a synchronized set (s)",
    "sync_queue_size": "synchronizer queue per camera",
    "camera_timeout_s": "silence before a camera is WARN (ERROR after 3x)",
    "question_period_s": "period of the standing questions (0 = off)",
    "publish_kept_tokens": "publish the kept-token mosaic on /vlm/kept_tokens",
    "autostart": "configure and activate at start-up",
}
# Parameters that are unset by default, which a ROS parameter file cannot express (no empty lists): they
# appear commented out in config/drive_vqa.yaml and are wired here the same way.
OPTIONAL_OVERRIDES = {
    "view_ratios": "six per-camera kept fractions, e.g. [0.1, 0.1, 0.1, 0.1, 0.1, 0.1] (empty: retain)",
    "questions": "standing questions, e.g. ['What are the important objects?']",
}


def _node(context, *args, **kwargs):
    overrides = {}
    for name in [*OVERRIDES, *OPTIONAL_OVERRIDES]:
        value = LaunchConfiguration(name).perform(context)
        if value != "":
            # Same typing rules as --ros-args -p: "0.1" is a double, "true" a bool.
            overrides[name] = yaml.safe_load(value)
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
        for name, text in {**OVERRIDES, **OPTIONAL_OVERRIDES}.items()
    ]
    return LaunchDescription([*args, OpaqueFunction(function=_node)])
