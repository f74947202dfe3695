"""What do a backbone's patch tokens and attention know about the objects? (stages 2 and 3)

Stage 2 builds pseudo-masks from attention and splits multi-object foreground by patch
tokens; stage 3's FS-CS head correlates patch tokens. Both need patch-level signal. For each
exported backbone and a randomly initialised twin of the first (same architecture, seeded),
on the eval scenes of a VOC-layout set, this reports:

- per block, **foreground AUC** of a logistic-regression probe on the patch tokens (fitted
  on half of the scenes, scored on the other half; a patch is foreground when half of it is);
- per block, **presence AUC**: for random (support, query) scene pairs, the best cosine of a
  query patch to the support's class foreground prototype, against "the query shows that
  class" (the cue an FS-CS head correlates);
- per last-block head, the **attention AUC** against the foreground (below 0.5: the head
  lights up the background), and two ceilings of the attention pseudo-mask: the heads
  averaged with their best signs (chosen on ground truth), cut at the best global quantile
  (chosen on ground truth): no threshold rule can do better with those maps;
- the **colour-contrast saliency** (no learning) as the reference: AUC and FB-IoU with Otsu.

    python benchmarks/bench_patch_signal.py --data data/fashion_scenes \
        --runs runs/demo/pretrain/export
"""

from __future__ import annotations

import argparse
import logging

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from benchmarks.record import record_printed
from common.backbone import build_backbone, load_backbone, num_prefix_tokens
from common.datasets.voc import VOCSegmentation
from common.metrics import IGNORE_INDEX
from distill.attention_maps import extract_attention, upsample
from distill.baselines import border_contrast_saliency
from distill.mask_rules import otsu_threshold

log = logging.getLogger("bench_patch_signal")
QUANTILES = np.linspace(0.3, 0.9, 13)


def load_scenes(root: str, split: str, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` scenes of ``split``: images [N, 3, H, W] and masks [N, H, W]."""
    ds = VOCSegmentation(root, split)
    items = [ds[i] for i in range(min(n, len(ds)))]
    return torch.stack([it["image"] for it in items]), torch.stack([it["mask"] for it in items])


@torch.no_grad()
def block_tokens(model: torch.nn.Module, images: torch.Tensor) -> list[torch.Tensor]:
    """Patch tokens [N, h, w, C] after every block (the last one after the final norm)."""
    outs: list[torch.Tensor] = []
    hooks = [b.register_forward_hook(lambda m, i, o: outs.append(o)) for b in model.blocks]
    try:
        final = model.forward_features(images)
    finally:
        for h in hooks:
            h.remove()
    outs[-1] = final
    prefix = num_prefix_tokens(model)
    side = int(round((final.shape[1] - prefix) ** 0.5))
    return [o[:, prefix:].reshape(len(o), side, side, -1) for o in outs]


def patch_fraction(masks: torch.Tensor, grid: int, cls: int | None = None) -> torch.Tensor:
    """Share of each patch [N, grid, grid] covered by foreground (or by class ``cls``)."""
    hit = (masks > 0) & (masks != IGNORE_INDEX) if cls is None else masks == cls
    return F.adaptive_avg_pool2d(hit.float()[:, None], grid)[:, 0]


def fg_probe_auc(tokens: torch.Tensor, masks: torch.Tensor) -> float:
    """AUC of a linear fg/bg probe on patch tokens, fitted on the first half of the scenes."""
    y = (patch_fraction(masks, tokens.shape[1]) >= 0.5).flatten(1).numpy()
    x = F.normalize(tokens.float(), dim=-1).flatten(1, 2).numpy()
    half = len(x) // 2
    probe = LogisticRegression(max_iter=2000).fit(
        x[:half].reshape(-1, x.shape[-1]), y[:half].reshape(-1)
    )
    scores = probe.decision_function(x[half:].reshape(-1, x.shape[-1]))
    return float(roc_auc_score(y[half:].reshape(-1), scores))


def presence_auc(tokens: torch.Tensor, masks: torch.Tensor, pairs: int, seed: int) -> float:
    """AUC of the best query-patch cosine to a support class prototype, for class presence."""
    grid = tokens.shape[1]
    t = F.normalize(tokens.float(), dim=-1)
    labels = [sorted(set(m.unique().tolist()) - {0, IGNORE_INDEX}) for m in masks]
    rng = np.random.default_rng(seed)
    scores, present = [], []
    for _ in range(pairs):
        s, q = rng.integers(len(t), size=2)
        if s == q or not labels[s]:
            continue
        c = int(rng.choice(labels[s]))
        region = patch_fraction(masks[s : s + 1], grid, c)[0] > 0.3
        if not region.any():
            continue
        proto = F.normalize(t[s][region].mean(0), dim=0)
        scores.append(float((t[q] @ proto).max()))
        present.append(int(c in labels[q]))
    return float(roc_auc_score(present, scores))


def fb_iou(pred: torch.Tensor, fg: torch.Tensor) -> float:
    """Mean IoU of foreground and background (%)."""
    pairs = ((pred, fg), (~pred, ~fg))
    ious = [((a & b).sum() / (a | b).sum().clamp_min(1)).item() for a, b in pairs]
    return 100 * float(np.mean(ious))


def attention_rows(model: torch.nn.Module, images: torch.Tensor, masks: torch.Tensor) -> dict:
    """Per-head attention AUC and the oracle ceiling of the signed head mean."""
    heads = extract_attention(model, images, [-1]).heads  # [N, K, h, w]
    fg_patch = (patch_fraction(masks, heads.shape[-1]) >= 0.5).flatten().numpy()
    aucs = [roc_auc_score(fg_patch, heads[:, k].flatten().numpy()) for k in range(heads.shape[1])]
    lo = heads.flatten(2).amin(-1)[..., None, None]
    span = (heads.flatten(2).amax(-1)[..., None, None] - lo).clamp_min(1e-8)
    scaled = (heads - lo) / span
    signed = torch.stack(
        [scaled[:, k] if a >= 0.5 else 1 - scaled[:, k] for k, a in enumerate(aucs)], 1
    ).mean(1)
    pixel_map = upsample(signed, tuple(masks.shape[-2:]))
    fg = (masks > 0) & (masks != IGNORE_INDEX)
    cuts = torch.quantile(pixel_map.flatten()[::7], torch.tensor(QUANTILES, dtype=torch.float32))
    best = max(fb_iou(pixel_map >= c, fg) for c in cuts)
    return {
        "head_auc": aucs,
        "oracle_auc": float(roc_auc_score(fg.flatten().numpy(), pixel_map.flatten().numpy())),
        "oracle_fb_iou": best,
    }


def saliency_row(images: torch.Tensor, masks: torch.Tensor) -> dict:
    sal = border_contrast_saliency(images)
    fg = (masks > 0) & (masks != IGNORE_INDEX)
    pred = sal >= otsu_threshold(sal)[:, None, None]
    return {
        "auc": float(roc_auc_score(fg.flatten().numpy(), sal.flatten().numpy())),
        "fb_iou": fb_iou(pred, fg),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", default="data/fashion_scenes", help="VOC-layout root")
    p.add_argument("--split", default="val")
    p.add_argument("--runs", nargs="+", required=True, help="exported backbones (export/ dirs)")
    p.add_argument("--images", type=int, default=600, help="eval scenes used")
    p.add_argument("--pairs", type=int, default=3000, help="(support, query) pairs for presence")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    images, masks = load_scenes(args.data, args.split, args.images)
    models = []
    for i, run in enumerate(args.runs):
        model, info = load_backbone(run)
        models.append((run, model.eval()))
        if i == 0:
            torch.manual_seed(args.seed)
            models.append(("random-init twin", build_backbone(info["timm_kwargs"]).eval()))
    print("| backbone | block | fg probe AUC | presence AUC |\n| --- | ---: | ---: | ---: |")
    for name, model in models:
        for b, tok in enumerate(block_tokens(model, images)):
            fg_auc = fg_probe_auc(tok, masks)
            pres = presence_auc(tok, masks, args.pairs, args.seed)
            print(f"| {name} | {b} | {fg_auc:.3f} | {pres:.3f} |")
    print("\n| backbone | last-block head AUCs | oracle-signed mean AUC | oracle FB-IoU |")
    print("| --- | --- | ---: | ---: |")
    for name, model in models:
        r = attention_rows(model, images, masks)
        heads = " / ".join(f"{a:.2f}" for a in r["head_auc"])
        print(f"| {name} | {heads} | {r['oracle_auc']:.3f} | {r['oracle_fb_iou']:.1f} |")
    s = saliency_row(images, masks)
    print(f"\ncolour-contrast saliency (no learning): AUC {s['auc']:.3f}, ", end="")
    print(f"FB-IoU (Otsu) {s['fb_iou']:.1f}")


if __name__ == "__main__":
    with record_printed("patch_signal", ["signal", "heads"]):
        main()
