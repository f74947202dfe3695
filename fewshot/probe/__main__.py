"""``python -m fewshot.probe --config FILE backbone=EXPORT_DIR``: low-shot probes."""

from common.cli import stage_main
from fewshot.probe.stage import run

if __name__ == "__main__":
    stage_main(
        "fewshot/probe",
        run,
        "Measure a frozen backbone with very few labels: logistic regression with 1/2/5 labels "
        "per class and 1 % of labels (several seeded splits), k-NN, a multi-label probe (mAP) "
        "and a patch-level linear segmentation probe (mIoU).",
    )
