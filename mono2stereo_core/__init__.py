"""mono2stereo_core: learned stereo depth trained with monocular knowledge transfer.

Framework-agnostic library (never imports rclpy): geometry, monocular depth backends, stage-1 stereo
synthesis, stereo networks, training (incl. S2DKD), inference runners, rosbag2 I/O.
"""

__version__ = "0.1.0"
