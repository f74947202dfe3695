"""``python -m fewshot.probe --config FILE backbone=EXPORT_DIR``: low-shot probes."""

from common.cli import stage_main
from fewshot.probe.stage import run

if __name__ == "__main__":
    stage_main(
        "fewshot/probe",
        run,
        "Measure a frozen backbone with very few labels. Presets dino_knn, msn_lowshot and "
        "dinov2_logreg run DINO's k-NN, MSN's low-shot and DINOv2's logistic regression on a "
        "labelled folder (ImageNet layout, path,label CSV; split files for 1 % or k images "
        "per class: docs/lowshot.md). The default protocol measures FashionScenes: logistic "
        "regression with 1/2/5 labels per class and 1 % of labels, k-NN, a multi-label probe "
        "(mAP) and a patch-level linear segmentation probe (mIoU).",
    )
