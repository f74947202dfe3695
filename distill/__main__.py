"""`python -m distill --config FILE backbone=RUN/export [key=value ...]`."""

from common.cli import stage_main
from distill.stage import run

DESCRIPTION = """\
Turn a self-supervised ViT's attention into pixel pseudo-labels.

For every image of data.train_split that has image-level labels it takes the heads of the
attention.layers blocks (cosine of the cls query to the patch keys), replaces their mean by
a linear foreground probe on the patch tokens (mask.token_probe) seeded by heads whose signs
were searched on the labels (mask.head_polarity: search), cuts it (mask.rule: otsu), refines
it (refine.*) and gives foreground pixels the image's classes by class prototypes;
masks go to <output-dir>/pseudo_masks/weak/<id>.png. With mixed.enabled an enhancer trained
on mixed.num_gt_images GT masks writes pseudo_masks/mixed/. quality.md / figures/ compare the
pseudo-labels with ground truth and with no-learning and random-ViT baselines.

Example:
  python -m distill --config fashion_tiny backbone=runs/pt --output-dir runs/distill
"""

if __name__ == "__main__":
    stage_main("distill", run, DESCRIPTION)
