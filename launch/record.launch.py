"""Record fine-tuning bags: ``ros2 launch mono2stereo record.launch.py camera:=/stereo output_dir:=recorded``.

Toggle sessions with ``ros2 service call /<camera>/recorder_node/record std_srvs/srv/SetBool "{data: true}"``.
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue
from mono2stereo.dds_profile import PROFILE_FILE_NAME, profile_environment

from launch import LaunchDescription

PACKAGE = "mono2stereo"


def generate_launch_description() -> LaunchDescription:
    share = get_package_share_directory(PACKAGE)
    default_params = os.path.join(share, "config", "recorder.yaml")
    # The installed Fast DDS profile (50 ms writer heartbeat, docs/ros.md "Large images over DDS") for the nodes
    # started here, unless the environment already names a profile.
    dds_env = profile_environment(os.path.join(share, "config", PROFILE_FILE_NAME))
    arguments = [
        DeclareLaunchArgument("camera", default_value="/stereo", description="namespace of the stereo camera topics"),
        DeclareLaunchArgument("output_dir", default_value="recorded", description="directory receiving one bag per session"),
        DeclareLaunchArgument("params_file", default_value=default_params, description="recorder_node parameters (YAML)"),
    ]
    recorder = Node(
        package=PACKAGE,
        executable="recorder_node",
        name="recorder_node",
        namespace=LaunchConfiguration("camera"),
        parameters=[
            LaunchConfiguration("params_file"),
            {"output_dir": ParameterValue(LaunchConfiguration("output_dir"), value_type=str)},
        ],
        output="screen",
        emulate_tty=True,
        additional_env=dds_env,
        # SIGINT first so the bag is finalized; launch escalates to SIGTERM after sigterm_timeout.
        sigterm_timeout="30",
    )
    return LaunchDescription([*arguments, recorder])
