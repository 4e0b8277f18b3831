#!/usr/bin/env python3
"""Convert a stereo checkpoint to different architecture settings, without training.

    python training/convert.py --checkpoint runs/pretrain_rt_gpu/checkpoints/step_0000974.safetensors \\
        --set edge_refinement=false --out runs/convert/m2s_rt_no_edge.safetensors

The settings that convert (``models.stereo_net.CONVERTIBLE_SETTINGS``): ``edge_refinement`` true -> false
(the full-resolution edge stage is dropped: the network then ends at the convex upsampling, and its output is
exactly what the edge stage received), ``volume_in_kernel`` / ``volume_out_kernel`` 3 -> 1 and
``hourglass_upsample`` deconv -> trilinear, more ``refine_iterations`` (copies of the last trained
iteration) (starting points for fine-tuning, not equivalent networks), fewer ``refine_iterations`` (the last
ones dropped; 0 ends the network at the 1/4 cost volume's estimate), any ``working_scale`` (the same weights
on a pair resized inside the network) and any ``discontinuity_px`` (how a network without the 1/2 stage
upsamples its 1/4 estimate: no weights). The
training runs do the same conversion on load when ``model.init`` names a checkpoint with other settings; this
command is for a conversion that is shipped as it is.

The new sidecar keeps the source's (recipe, data, step) and adds ``converted_from`` (source file, its sha256,
the changed settings, the source's in-run validation) and ``reproduce`` (the source's command, then this one).
``--evaluate`` scores source and result on the motorcycle pair as the trainer's validation does (all,
non-occluded and SGBM's pixels, SGBM in the same run).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from common import check_output_checkpoint, derived_sidecar  # also puts the checkout on sys.path

from mono2stereo_core.models import build_from_config, load_model, save_checkpoint  # noqa: E402
from mono2stereo_core.models.checkpoint import CheckpointError, read_sidecar  # noqa: E402
from mono2stereo_core.models.stereo_net import CONVERTIBLE_SETTINGS  # noqa: E402
from mono2stereo_core.training.config import parse_override  # noqa: E402
from mono2stereo_core.training.trainer import GroundTruthValidation, load_network_weights  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint", type=Path, required=True, help="source X.safetensors (with X.json)")
    parser.add_argument("--out", type=Path, required=True, help="converted checkpoint to write (.safetensors)")
    parser.add_argument(
        "--set", dest="settings", action="append", default=[], metavar="SETTING=VALUE", required=True,
        help=f"architecture setting to change (repeatable; value parsed as YAML): {', '.join(CONVERTIBLE_SETTINGS)}",
    )
    parser.add_argument("--evaluate", action="store_true", help="score source and result on the motorcycle pair")
    parser.add_argument("--force", action="store_true", help="overwrite --out")
    args = parser.parse_args(argv)
    check_output_checkpoint(parser, args.out, force=args.force)
    return args


def requested_settings(texts: list[str]) -> dict:
    settings = {}
    for text in texts:
        keys, value = parse_override(text)
        if len(keys) != 1 or keys[0] not in CONVERTIBLE_SETTINGS:
            raise ValueError(f"cannot convert {'.'.join(keys)!r}: the settings that convert are "
                             f"{', '.join(CONVERTIBLE_SETTINGS)}")
        settings[keys[0]] = value
    return settings


def convert(source: Path, out: Path, settings: dict) -> Path:
    """Writes the converted checkpoint; returns its path."""
    from mono2stereo_core.inference.engine_cache import file_sha256

    sidecar = read_sidecar(source)
    config = {**sidecar["architecture"], **settings}
    network = build_from_config(config)
    # Both configs leave settings at their legacy value out (StereoNet.config, the sidecar written from it).
    if network.config == sidecar["architecture"]:
        raise ValueError(f"{source} already has {settings}: nothing to convert")
    load_network_weights(network, source)  # converts (or raises CheckpointError naming what cannot)
    new_sidecar = derived_sidecar(sidecar, "converted_from", {
        "checkpoint": str(source),
        "weights_sha256": file_sha256(source),
        "settings": settings,
        # The trainer's in-run validation describes the source network, not this one.
        "source_validation": sidecar.get("validation"),
    })
    out.parent.mkdir(parents=True, exist_ok=True)
    return save_checkpoint(out, network.eval(), sidecar=new_sidecar)


def motorcycle_scores(path: Path, validation) -> str:
    network, _ = load_model(path)
    m, _ = validation(network.eval(), device=torch.device("cpu"))
    return (f"bad-2 all {m['bad2']:.2f} %, non-occluded {m['noc_bad2']:.2f} %, where SGBM answers "
            f"{m['both_bad2']:.2f} % (SGBM {m['sgbm_both_bad2']:.2f} %), EPE {m['epe']:.3f} px")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        settings = requested_settings(args.settings)
        written = convert(args.checkpoint, args.out, settings)
    except (ValueError, CheckpointError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    after = read_sidecar(written)
    print(f"wrote {written} ({after['num_parameters']} parameters, {after['gmac_640x480']:.2f} GMAC at 640x480)")
    if args.evaluate:
        validation = GroundTruthValidation("motorcycle")  # the trainer's in-run validation, SGBM included
        print(f"motorcycle, source:    {motorcycle_scores(args.checkpoint, validation)}")
        print(f"motorcycle, converted: {motorcycle_scores(written, validation)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
