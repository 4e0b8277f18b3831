"""mono2stereo_core.training: everything between data and a checkpoint.

- ``config``: YAML recipes with defaults, ``--set key=value`` overrides and a stable hash.
- ``datasets``: procedural, stage-1 synthesized, Middlebury/KITTI and rosbag2 datasets (crops, flips, teachers).
- ``losses``: ``sequence_loss`` (stage 1), ``S2DKDLoss`` and ``align_to_sparse`` (stage 2).
- ``objectives``: adapters from a network output and a batch to the loss terms of each stage.
- ``trainer``: ``Trainer`` (AdamW + one-cycle, clipping, AMP, DDP, checkpoints, exact resume, validation).
- ``distributed``: ``torchrun`` process groups and the resumable distributed sampler.

Submodules are imported explicitly (``from mono2stereo_core.training.trainer import Trainer``) so that
importing one (e.g. the losses) does not pull in the others.
"""
