"""``python -m fewshot --config FILE [key=value ...]``: FS-CS heads (see fewshot/stage.py)."""

from common.cli import stage_main
from fewshot.stage import run

if __name__ == "__main__":
    stage_main(
        "fewshot",
        run,
        "Train a few-shot classification + segmentation (FS-CS) head on a frozen backbone and "
        "evaluate it, next to a random-backbone head and a prototype baseline, on the held-out "
        "fold.",
    )
