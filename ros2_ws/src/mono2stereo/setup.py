"""ament_python build of the `mono2stereo` ROS 2 package.

`launch/` and `config/` live at the repository root (the project layout is fixed there) and are installed
into `share/mono2stereo/` from there, so `ros2 launch mono2stereo stereo.launch.py` finds them.
"""

from glob import glob
from pathlib import Path

from setuptools import find_packages, setup

PACKAGE = "mono2stereo"
HERE = Path(__file__).resolve().parent
# ros2_ws/src/mono2stereo -> repository root. setuptools wants data_files relative to setup.py.
REPO_ROOT = Path("..", "..", "..")


def _repo_files(pattern: str) -> list[str]:
    files = sorted(glob(str(REPO_ROOT / pattern)))
    if not files:
        raise FileNotFoundError(f"no files match {REPO_ROOT / pattern} (relative to {HERE}); is the repository complete?")
    return files


setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(exclude=["test"]),
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", _repo_files("launch/*.launch.py")),
        # Only this package's node configs: config/ also holds training recipes that ROS has no use for.
        (
            f"share/{PACKAGE}/config",
            _repo_files("config/stereo.yaml") + _repo_files("config/recorder.yaml") + _repo_files("config/*.rviz")
            + _repo_files("config/fastdds_large_images.xml"),
        ),
    ],
    install_requires=["setuptools"],
    zip_safe=True,
    maintainer="mono2stereo maintainers",
    maintainer_email="maintainers@mono2stereo.invalid",
    description="Learned stereo depth (Mono2Stereo) ROS 2 nodes: stereo_node, recorder_node, player.",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            f"stereo_node = {PACKAGE}.stereo_node:main",
            f"recorder_node = {PACKAGE}.recorder_node:main",
            f"player = {PACKAGE}.player:main",
        ],
    },
)
