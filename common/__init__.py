"""Shared by every stage: config, run directory, checkpoints, backbone, data, metrics.

`common` imports no stage package; stages import from here.
"""
