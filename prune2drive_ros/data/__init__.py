"""Data: synthetic nuScenes samples, nuScenes -> rosbag2, the rclpy bag player, DriveLM questions.

- ``sample_nuscenes.make_sample_nuscenes``: a small synthetic set in the real v1.0-mini layout (+ drivelm.json),
  drawn by ``synthetic_world`` and questioned by ``sample_drivelm``;
- ``nuscenes_to_bag.convert_nuscenes``: nuScenes -> rosbag2 (MCAP or sqlite3) with rosbags, no ROS needed;
- ``player.BagPlayer``: replays a bag with rclpy where rosbag2 is missing; ``rosmsg.to_rclpy`` converts messages;
- ``drivelm``: loading DriveLM question files for evaluation.

Only ``player`` (and ``rosmsg``, through the message packages) touch ROS, and only when used.
"""
