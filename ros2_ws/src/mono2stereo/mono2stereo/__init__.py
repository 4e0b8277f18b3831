"""ROS 2 adapters for mono2stereo: thin nodes that move messages in and out of ``mono2stereo_core``.

Executables: ``stereo_node`` (disparity, depth, points2, confidence), ``recorder_node`` (MCAP bags for
fine-tuning) and ``player`` (publishes a rosbag2 directory with its recorded timing).
"""

__all__ = ["__version__"]
__version__ = "0.1.0"
