"""Session-wide test settings.

Every test (and every subprocess a test starts) keeps ROS discovery on this host and never reaches a model hub.
Tests that start ROS processes also pick their own ROS_DOMAIN_ID.
"""

import os

os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ.setdefault("ROS_DOMAIN_ID", "42")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("MPLBACKEND", "Agg")
