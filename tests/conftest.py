"""Session-wide test settings.

Every test (and every subprocess a test starts) keeps ROS discovery on this host and never reaches a model hub.
Tests that start ROS processes also pick their own ROS_DOMAIN_ID.
"""

import os

import pytest

os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ.setdefault("ROS_DOMAIN_ID", "42")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(scope="session")
def tiny_depth_anything(tmp_path_factory):
    """A randomly initialised, tiny Depth Anything V2 checkpoint on disk (loads offline)."""
    import torch
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config

    torch.manual_seed(0)
    backbone = Dinov2Config(
        hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64, patch_size=14,
        image_size=518, out_features=["stage1", "stage2", "stage3", "stage4"], reshape_hidden_states=False,
    )
    config = DepthAnythingConfig(
        backbone_config=backbone, fusion_hidden_size=16, neck_hidden_sizes=[8, 16, 32, 32], head_hidden_size=8,
        reassemble_hidden_size=32, depth_estimation_type="relative",
    )
    directory = tmp_path_factory.mktemp("da2_tiny")
    DepthAnythingForDepthEstimation(config).eval().save_pretrained(directory)
    return directory
