"""``python -m pretrain``: self-supervised ViT pretraining (DINO / iBOT / MSN / MaskCluster)."""

from common.cli import stage_main
from pretrain.stage import run

DESCRIPTION = """\
Pretrain a ViT with self-supervision on unlabelled images and export the EMA teacher's
backbone (RUN_DIR/export/) for `python -m distill` and `python -m fewshot`.

One objective covers the family; presets switch its terms on and off:
  dino         cls-token clustering across 2 global + N local crops (loss.dino)
  ibot         + masked patch-token clustering on block-masked global crops (loss.ibot)
  msn          cls clustering of masked views with ME-MAX instead of centering
  maskcluster  cls + patch clustering + l1 reconstruction of masked pixels (loss.pixel)
  fashion_tiny the embedded default: a small MaskCluster on FashionScenes, minutes on a CPU

Collapse avoidance is chosen per head: loss.dino.collapse / loss.ibot.collapse =
centering (DINO: subtract an EMA centre of teacher logits) | sinkhorn (uniform prototype
marginals over the global batch) | memax (MSN: maximise the entropy of the mean prediction).

Why the key defaults are what they are:
  loss.teacher_temp 0.04 -> 0.07 warm-up: a sharp teacher early avoids the uniform collapse;
      lower loss.teacher_temp if the teacher entropy in metrics.jsonl climbs to log(K).
  train.lr is the rate for a global batch of 256 and is scaled linearly with yours.
  train.clip_grad 3.0 and freezing the prototypes for the first epoch stabilise early training;
      train.clip per_param clips each tensor's gradient on its own, as DINO and iBOT do.
  dino and ibot step like the official main_dino.py / main_ibot.py (schedules, clipping,
      position interpolation of local crops: model.pos_interp); docs/pretrain.md shows
      the per-step comparison.
  train.precision bf16 on GPUs that support it; fp16 adds a grad scaler; fp32 on CPU.

Re-running the same command on the same --output-dir resumes exactly from
checkpoints/last.pt (weights, optimiser, schedules, data position, RNG). Run several
processes with torchrun or srun (gloo on CPU, NCCL on GPU). Monitoring: metrics.jsonl holds
each loss term, lr, wd, momentum, teacher entropy, centre norm, images/s, peak memory and
the k-NN probe (eval.every).

Examples:
  python -m pretrain --config fashion_tiny --output-dir runs/pt
  python -m pretrain --config maskcluster data.root=/data/images model.arch=vit_small
  torchrun --nproc_per_node 8 -m pretrain --config dino --output-dir runs/dino train.precision=bf16
"""


def main() -> dict:
    return stage_main("pretrain", run, DESCRIPTION)


if __name__ == "__main__":
    main()
