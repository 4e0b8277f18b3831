"""The Fast DDS writer profile shipped with this package (``config/fastdds_large_images.xml``: one default
``<data_writer>`` profile with a 50 ms heartbeat; docs/ros.md, "Large images over DDS").

Fast DDS reads the file named by an environment variable when a process creates its first participant, so a
process that starts ROS nodes (or is one) calls :func:`use_profile` before that. No rclpy here.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, MutableMapping
from pathlib import Path

PROFILE_FILE_NAME = "fastdds_large_images.xml"
# Fast DDS 3 (Kilted) reads the first, Fast DDS 2 (Humble, Jazzy) the second.
PROFILE_VARIABLES = ("FASTDDS_DEFAULT_PROFILES_FILE", "FASTRTPS_DEFAULT_PROFILES_FILE")


def profile_environment(path: str | Path, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The profile variables to add to a child process's environment so that it loads ``path``: those not
    already set in ``environ`` (default: this process's environment; an explicit setting wins). The launch
    files pass this as their nodes' ``additional_env``."""
    environ = os.environ if environ is None else environ
    return {variable: str(path) for variable in PROFILE_VARIABLES if variable not in environ}


def use_profile(path: str | Path, environ: MutableMapping[str, str] | None = None) -> None:
    """Points both profile variables of ``environ`` (default: this process's environment, which child processes
    inherit) at ``path``; a variable that is already set is left alone (an explicit setting wins)."""
    environ = os.environ if environ is None else environ
    environ.update(profile_environment(path, environ))
