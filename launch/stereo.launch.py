"""Stereo depth with mono2stereo: ``ros2 launch mono2stereo stereo.launch.py camera:=/stereo model_path:=m.onnx``.

Inputs are ``<camera>/left/image_rect``, ``<camera>/right/image_rect`` and their ``camera_info``
(stereo_image_proc names); outputs (``disparity``, ``depth``, ``points2``, ...) are published in the same
namespace. ``use_rviz:=true`` opens the bundled RViz view.
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch.actions import DeclareLaunchArgument
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue
from mono2stereo.dds_profile import PROFILE_FILE_NAME, profile_environment

from launch import LaunchDescription

PACKAGE = "mono2stereo"


def generate_launch_description() -> LaunchDescription:
    share = get_package_share_directory(PACKAGE)
    default_params = os.path.join(share, "config", "stereo.yaml")
    default_rviz = os.path.join(share, "config", "mono2stereo.rviz")
    # The installed Fast DDS profile (50 ms writer heartbeat, docs/ros.md "Large images over DDS") for the nodes
    # started here, unless the environment already names a profile.
    dds_env = profile_environment(os.path.join(share, "config", PROFILE_FILE_NAME))
    arguments = [
        DeclareLaunchArgument("camera", default_value="/stereo", description="namespace of the stereo camera topics"),
        DeclareLaunchArgument("model_path", default_value="", description=".engine/.onnx/.safetensors; '' = shipped default"),
        DeclareLaunchArgument("backend", default_value="auto", description="auto|tensorrt|onnxruntime|torch"),
        DeclareLaunchArgument("params_file", default_value=default_params, description="stereo_node parameters (YAML)"),
        DeclareLaunchArgument("use_rviz", default_value="false", description="start RViz with the bundled view"),
        DeclareLaunchArgument("rviz_config", default_value=default_rviz, description="RViz configuration"),
    ]
    stereo = Node(
        package=PACKAGE,
        executable="stereo_node",
        name="stereo_node",
        namespace=LaunchConfiguration("camera"),
        parameters=[
            LaunchConfiguration("params_file"),
            # value_type=str: launch would YAML-parse the text, turning model_path:='' into null.
            {
                "model_path": ParameterValue(LaunchConfiguration("model_path"), value_type=str),
                "backend": ParameterValue(LaunchConfiguration("backend"), value_type=str),
            },
        ],
        output="screen",
        emulate_tty=True,
        additional_env=dds_env,
    )
    rviz = Node(
        package="rviz2",
        executable="rviz2",
        name="rviz2",
        arguments=["-d", LaunchConfiguration("rviz_config")],
        condition=IfCondition(LaunchConfiguration("use_rviz")),
        output="screen",
    )
    return LaunchDescription([*arguments, stereo, rviz])
