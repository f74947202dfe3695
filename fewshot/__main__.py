"""``python -m fewshot --config FILE [key=value ...]``: FS-CS heads (see fewshot/stage.py)."""

from common.cli import stage_main
from fewshot.stage import run

DESCRIPTION = """\
Train a few-shot classification + segmentation (FS-CS) head on a frozen backbone and evaluate
it, next to a random-backbone head and a prototype baseline, on the held-out fold.

The run is set by backbone (required), fold (the held-out classes), way and shot (the test
episodes) and supervision (full = ground-truth masks; weak / mixed = a distill run's
pseudo-masks, given as pseudo_masks=<distill run dir>; cst_weak = CST's weak setting: no
support masks, query pseudo-masks made on the fly from the backbone's last block).

Example:
  python -m fewshot --config fashion_tiny backbone=runs/pt pseudo_masks=runs/distill \\
      fold=0 way=2 shot=1 supervision=weak --output-dir runs/fscs
"""

if __name__ == "__main__":
    stage_main(
        "fewshot",
        run,
        DESCRIPTION,
    )
