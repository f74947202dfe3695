"""`python -m distill.segment --config FILE backbone=... pseudo_masks=...`."""

from common.cli import stage_main
from distill.segment.stage import run

DESCRIPTION = """\
Weakly-supervised semantic segmentation: train a light decoder on a frozen exported ViT
from pseudo-masks (pseudo_masks=<distill run>/pseudo_masks/weak or mixed), with the SCD
loss between the image and a rescaled view (scd.weight), and evaluate mIoU over all
classes on data.eval_split. With compare_gt the same model is trained on ground truth
too (the upper bound). Writes segmentation.md, per-class IoU in summary.json, a
confusion-matrix plot and prediction overlays in figures/.
"""

if __name__ == "__main__":
    stage_main("distill/segment", run, DESCRIPTION)
