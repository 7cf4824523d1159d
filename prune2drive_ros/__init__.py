"""prune2drive_ros: a ROS 2 driving-assistant node with Prune2Drive visual token pruning."""

__version__ = "0.1.0"
