#!/usr/bin/env python3
"""Docker HEALTHCHECK: healthy while a mono2stereo stereo_node process is alive in this container.

Scans /proc instead of relying on pgrep (procps is not in the JetPack base image).
"""

import os
import sys


def stereo_node_running(proc_root: str = "/proc") -> bool:
    for pid in os.listdir(proc_root):
        if not pid.isdigit():
            continue
        try:
            with open(os.path.join(proc_root, pid, "cmdline"), "rb") as f:
                cmdline = f.read().replace(b"\0", b" ")
        except OSError:
            continue
        if b"stereo_node" in cmdline and b"healthcheck" not in cmdline:
            return True
    return False


if __name__ == "__main__":
    sys.exit(0 if stereo_node_running() else 1)
