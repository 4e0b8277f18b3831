"""mono2stereo_core must stay framework-agnostic: importing every module must not import rclpy."""

import subprocess
import sys
from pathlib import Path

CORE = Path(__file__).resolve().parents[1] / "mono2stereo_core"


def test_core_never_imports_rclpy():
    modules = sorted(
        ".".join(p.relative_to(CORE.parent).with_suffix("").parts).removesuffix(".__init__")
        for p in CORE.rglob("*.py")
    )
    assert len(modules) > 5
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}:\n"
        "    importlib.import_module(m)\n"
        "bad = sorted(k for k in sys.modules if k == 'rclpy' or k.startswith('rclpy.'))\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"mono2stereo_core imported {out.stdout.strip()}"


def test_source_has_no_rclpy_import():
    offenders = [
        str(p) for p in CORE.rglob("*.py") if "import rclpy" in p.read_text() or "from rclpy" in p.read_text()
    ]
    assert offenders == []
