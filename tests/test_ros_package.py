"""The ament_python package: colcon builds and installs it; launch files, configs and package.xml are consistent.

``launch``/``launch_ros`` are not installable here, so launch files are checked statically (parsed with ast).
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml
from ros_helpers import PACKAGE_SRC, REPO

pytestmark = pytest.mark.ros

EXECUTABLES = ("stereo_node", "recorder_node", "player")
LAUNCH_FILES = ("stereo.launch.py", "record.launch.py")


@pytest.fixture(scope="module")
def install(tmp_path_factory) -> Path:
    # The venv's own colcon first: `make test` runs .venv/bin/python without activating the venv, so its bin/
    # is not on PATH (this skipped the build test in CI until the third session).
    beside = Path(sys.executable).parent / "colcon"
    colcon = str(beside) if beside.is_file() else shutil.which("colcon")
    if colcon is None:
        pytest.skip("colcon is not installed in this environment (pip install colcon-common-extensions)")
    base = tmp_path_factory.mktemp("colcon")
    env = dict(os.environ)
    env["AMENT_PREFIX_PATH"] = os.environ.get("VIRTUAL_ENV", str(Path(os.sys.executable).parents[1]))
    result = subprocess.run(
        [colcon, "--log-base", str(base / "log"), "build", "--symlink-install", "--base-paths", str(PACKAGE_SRC.parent),
         "--build-base", str(base / "build"), "--install-base", str(base / "install")],
        cwd=base, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return base / "install" / "mono2stereo"


def test_colcon_installs_executables_launch_and_config(install):
    for name in EXECUTABLES:
        exe = install / "lib" / "mono2stereo" / name
        assert exe.is_file() and os.access(exe, os.X_OK), exe
    share = install / "share" / "mono2stereo"
    for name in LAUNCH_FILES:
        assert (share / "launch" / name).resolve().read_text() == (REPO / "launch" / name).read_text()
    for name in ("stereo.yaml", "recorder.yaml", "mono2stereo.rviz", "fastdds_large_images.xml"):
        assert (share / "config" / name).is_file(), name
    assert (install / "share" / "ament_index" / "resource_index" / "packages" / "mono2stereo").is_file()
    # The installed console script runs with the environment's python (and finds rclpy and the core).
    setup_bash = install.parent / "setup.bash"
    result = subprocess.run(
        ["bash", "-c", f'source "{setup_bash}" && exec "{install}/lib/mono2stereo/player" --help'],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "AMENT_PREFIX_PATH": os.environ.get("VIRTUAL_ENV", "")},
    )
    assert result.returncode == 0 and "--exit-when-done" in result.stdout, result.stderr


def _entry_points() -> set[str]:
    setup = (PACKAGE_SRC / "setup.py").read_text()
    return set(re.findall(r'f?"(\w+) = \{PACKAGE\}\.\w+:main"', setup))


def _launch_calls(path: Path) -> list[ast.Call]:
    tree = ast.parse(path.read_text(), filename=str(path))
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call)]


def _keyword(call: ast.Call, name: str):
    for kw in call.keywords:
        if kw.arg == name:
            return kw.value
    return None


@pytest.mark.parametrize("launch_file", LAUNCH_FILES)
def test_launch_file_refers_to_installed_executables_and_existing_params(launch_file):
    path = REPO / "launch" / launch_file
    calls = _launch_calls(path)
    assert "generate_launch_description" in path.read_text()
    nodes = [c for c in calls if isinstance(c.func, ast.Name) and c.func.id == "Node"]
    ours = [c for c in nodes if isinstance(_keyword(c, "package"), ast.Name) and _keyword(c, "package").id == "PACKAGE"]
    assert ours, f"{launch_file} starts no mono2stereo node"
    for node in ours:
        assert _keyword(node, "executable").value in _entry_points()
        # Our nodes start with the installed Fast DDS profile unless the environment names one (docs/ros.md).
        env = _keyword(node, "additional_env")
        assert isinstance(env, ast.Name), f"{launch_file}: a mono2stereo node without additional_env=<profile env>"
        assign = [n for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Assign)
                  and any(isinstance(t, ast.Name) and t.id == env.id for t in n.targets)]
        assert assign and isinstance(assign[0].value, ast.Call) and assign[0].value.func.id == "profile_environment"
        assert "PROFILE_FILE_NAME" in ast.unparse(assign[0].value)
    # Every params file the launch file joins onto share/mono2stereo/config exists in config/.
    joins = [c for c in calls if isinstance(c.func, ast.Attribute) and c.func.attr == "join"]
    from mono2stereo.dds_profile import PROFILE_FILE_NAME

    names = {"PROFILE_FILE_NAME": PROFILE_FILE_NAME}  # constants the launch files import
    configs = [
        c.args[-1].value if isinstance(c.args[-1], ast.Constant) else names[c.args[-1].id]
        for c in joins
        if len(c.args) >= 3 and getattr(c.args[1], "value", None) == "config"
    ]
    assert configs
    for name in configs:
        assert (REPO / "config" / name).is_file(), name
        if name.endswith(".yaml"):
            params = yaml.safe_load((REPO / "config" / name).read_text())["/**"]["ros__parameters"]
            assert params


def test_params_files_only_set_declared_parameters():
    import mono2stereo.stereo_node as stereo_node

    stereo = yaml.safe_load((REPO / "config" / "stereo.yaml").read_text())["/**"]["ros__parameters"]
    assert set(stereo) == set(stereo_node.PARAMETERS)
    for name, value in stereo.items():
        default = stereo_node.PARAMETERS[name][0]
        assert type(value) is type(default), (name, value, default)
    recorder_src = (PACKAGE_SRC / "mono2stereo" / "recorder_node.py").read_text()
    declared = set(re.findall(r'^\s+p\(\s*"(\w+)"', recorder_src, flags=re.M))
    recorder = yaml.safe_load((REPO / "config" / "recorder.yaml").read_text())["/**"]["ros__parameters"]
    assert set(recorder) == declared


def test_package_xml_declares_every_ros_import():
    root = ET.parse(PACKAGE_SRC / "package.xml").getroot()
    assert root.get("format") == "3" and root.findtext("name") == "mono2stereo"
    depends = {e.text for e in root.findall("exec_depend")}
    imported = set()
    for path in (PACKAGE_SRC / "mono2stereo").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module.split(".")[0])
            elif isinstance(node, ast.Import):
                imported.update(a.name.split(".")[0] for a in node.names)
    ros_packages = {m for m in imported if m.endswith(("_msgs", "_srvs", "_interfaces")) or m in ("rclpy", "message_filters")}
    assert ros_packages - depends == set()
