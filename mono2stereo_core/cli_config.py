"""YAML ``--config`` files for the flat command-line tools (``training/evaluate.py``, ``training/export.py``).

A config file is a mapping of option names (``--max-disparity`` may be written ``max-disparity`` or
``max_disparity``) to values; it sets the parser's defaults, so the command line still overrides it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml


def apply_yaml_config(parser: argparse.ArgumentParser, path: Path) -> None:
    """Sets ``parser``'s defaults from the YAML mapping in ``path``; ``parser.error`` (exit 2) on a missing
    file, a file that is not a mapping, or keys that name no option."""
    if not path.is_file():
        parser.error(f"--config {path} does not exist")
    values = yaml.safe_load(path.read_text()) or {}
    if not isinstance(values, dict):
        parser.error(f"--config {path} must hold a mapping of option: value, instead got {type(values).__name__}")
    dests = {action.dest for action in parser._actions}
    unknown = sorted({k.replace("-", "_") for k in values} - dests)
    if unknown:
        parser.error(f"--config {path} has unknown keys {unknown}")
    parser.set_defaults(**{k.replace("-", "_"): v for k, v in values.items()})
