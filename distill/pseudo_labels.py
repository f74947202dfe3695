"""The pseudo-label pipeline: attention -> foreground rule -> refine -> classes -> PNGs.

Weak pseudo-masks use only image-level labels; mixed ones replace the weak foreground by
the enhancer's and keep ground truth on the few images that have it. Masks are written as
VOC palette PNGs (0 background, class ids, 255 ignore) to ``pseudo_masks/<kind>/<id>.png``
so ``VOCSegmentation(root, split, mask_dir=...)`` reads them in place of ground truth.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from common.config import Config, ConfigError
from common.datasets.palette import write_mask
from common.metrics import IGNORE_INDEX
from distill.attention_maps import AttentionOutput, extract_attention, upsample
from distill.baselines import border_contrast_saliency
from distill.class_assign import PrototypeBank, assign_classes, class_scores
from distill.enhancer import Enhancer, enhancer_inputs, predict_foreground
from distill.mask_rules import border_polarity, otsu_threshold, threshold_for
from distill.polarity import HeadPolarity, apply_signs
from distill.refine import ParVariationRefine, dual_threshold
from distill.token_probe import FitImages, ForegroundProbe, fit_probe, refine_signs
from distill.varm import VARM

log = logging.getLogger(__name__)
EMPTY_LABEL_POLICIES = ("background", "error")
HEAD_POLARITY_MODES = ("labels", "none")


@dataclass
class Batch:
    """Images [B, 3, H, W], image-level labels, ids and (when known) GT masks [B, H, W]."""

    images: torch.Tensor
    labels: list[list[int]]
    ids: list[str]
    masks: torch.Tensor | None


def iter_batches(
    dataset,
    indices: Sequence[int],
    batch_size: int,
    empty_labels: str = "background",
    desc: str | None = None,
) -> Iterator[Batch]:
    """Batches of ``dataset`` items ``indices`` with ground-truth image-level labels."""
    if empty_labels not in EMPTY_LABEL_POLICIES:
        raise ValueError(
            f"data.empty_labels must be one of {EMPTY_LABEL_POLICIES}, got {empty_labels!r}"
        )
    bar = tqdm(total=len(indices), desc=desc, unit="img", disable=desc is None, leave=False)
    for start in range(0, len(indices), batch_size):
        chunk = list(indices[start : start + batch_size])
        items = [dataset[i] for i in chunk]
        labels = [dataset.image_labels(i) for i in chunk]
        for i, labs in zip(chunk, labels, strict=True):
            if not labs and empty_labels == "error":
                raise ValueError(
                    f"image {dataset.ids[i]!r} of split {dataset.split!r} has no image-level "
                    "label; weak pseudo-labels need at least one class per image. Remove it "
                    "from the split, or set data.empty_labels=background if an empty label "
                    "list means the image shows no object"
                )
        sizes = {tuple(it["image"].shape) for it in items}
        if len(sizes) > 1:
            raise ValueError(
                f"images of one batch differ in size ({sorted(sizes)}); set data.image_size "
                "so every image is resized to one size"
            )
        yield Batch(
            images=torch.stack([it["image"] for it in items]),
            labels=labels,
            ids=[it["id"] for it in items],
            masks=torch.stack([it["mask"] for it in items]),
        )
        bar.update(len(chunk))
    bar.close()


def make_refiner(r: Config) -> torch.nn.Module:
    """The refine named by ``refine.method``: SCD's ``varm`` or our ``par_variation``."""
    if r.method == "varm":
        return VARM()  # SCD's published constants; the other refine.* keys are ours
    if r.method == "par_variation":
        return ParVariationRefine(
            r.dilations, r.num_iter, r.appearance_weight, r.position_weight, r.variation_weight
        )
    raise ValueError(f"refine.method must be varm or par_variation, got {r.method!r}")


class PseudoLabeler:
    """Turns a backbone's attention into foreground and class masks for labelled images."""

    def __init__(
        self, model: torch.nn.Module, cfg: Config, device: torch.device, name: str = "backbone"
    ) -> None:
        self.name = name  # prefixes its log lines: a baseline's fit reads apart from the real one
        self.model = model.to(device).eval()
        self.device = device
        self.cfg = cfg
        self.refiner = make_refiner(cfg.refine)
        self.centre: torch.Tensor | None = None
        self.prototypes: torch.Tensor | None = None
        self.head_signs: torch.Tensor | None = None
        self.fg_probe: ForegroundProbe | None = None

    def attend(self, images: torch.Tensor) -> AttentionOutput:
        """Attention maps of a batch, signed heads, and the probe's P(fg) as saliency if fitted.

        ``attention.image_size`` resizes the backbone's input.
        """
        a = self.cfg.attention
        images = images.to(self.device)
        if a.image_size:
            size = (a.image_size, a.image_size) if isinstance(a.image_size, int) else a.image_size
            images = F.interpolate(images, size=tuple(size), mode="bilinear", align_corners=False)
        att = extract_attention(self.model, images, a.source, a.layers)
        heads, saliency = self._fitted_maps(att.heads, att.tokens)
        return replace(att, heads=heads, saliency=saliency)

    def _fitted_maps(
        self, heads: torch.Tensor, tokens: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw head maps turned by the fitted signs, and the saliency: probe P(fg) or mean."""
        if self.head_signs is not None:
            heads = apply_signs(heads, self.head_signs)
        saliency = self.fg_probe(tokens) if self.fg_probe is not None else heads.mean(dim=1)
        return heads, saliency

    def fit(self, batches: Iterable[Batch], num_classes: int) -> None:
        """Fit on labelled training images: head polarity, the foreground probe, prototypes.

        One backbone pass: the raw head maps and patch tokens of ``batches`` are kept (on
        the CPU; ``assign.max_images`` bounds them) and every fit step reads them.
        """
        mode, m = self.cfg.mask.head_polarity, self.cfg.mask
        if m.token_probe and not 0.0 < m.probe_seed_share <= 0.5:
            raise ConfigError(
                f"mask.probe_seed_share must be in (0, 0.5], got {m.probe_seed_share}"
            )
        if m.token_probe and m.border_polarity:
            raise ConfigError(
                "mask.token_probe and mask.border_polarity are both on: the probe replaces "
                "the head maps that the border rule would mirror per image; set "
                "mask.border_polarity=false (the probe's heads are signed by the labels) or "
                "mask.token_probe=false"
            )
        if mode not in HEAD_POLARITY_MODES:
            raise ConfigError(
                f"mask.head_polarity must be one of {HEAD_POLARITY_MODES}, got {mode!r}"
            )
        self.head_signs, self.fg_probe = None, None
        # iter_batches refused empty label lists unless they mean "no object".
        images = []
        for batch in batches:
            att = self.attend(batch.images)
            images.append((att.heads.cpu(), att.tokens.cpu(), batch.labels))
        if not images:
            raise ValueError("no fit image: fitting on labels needs labelled train images")
        if mode == "labels":
            self.fit_head_polarity(images, num_classes)
        if m.token_probe:
            self.fit_fg_probe(images, num_classes)
        self.fit_prototypes(images, num_classes)

    def fit_head_polarity(self, images: FitImages, num_classes: int) -> None:
        """Signs [K] that turn every head towards the objects (distill.polarity)."""
        acc = HeadPolarity(num_classes)
        for heads, tokens, labels in images:
            acc.add(heads, tokens, labels)
        self.head_signs = acc.signs()
        flipped = (self.head_signs < 0).nonzero().flatten().tolist()
        log.info(
            "%s: head polarity from %d single-label images: heads %s mirrored (of %d)",
            self.name,
            acc.images,
            flipped or "none",
            len(self.head_signs),
        )

    def fit_fg_probe(self, images: FitImages, num_classes: int) -> dict:
        """A linear foreground probe on patch tokens, seeded by the head mean (token_probe).

        With ``mask.head_polarity=labels`` the head signs are then refined on the probe's
        own map (distill.token_probe.refine_signs), where the label criterion is clearer.
        """
        share = self.cfg.mask.probe_seed_share
        if self.head_signs is None:
            flips = torch.ones(images[0][0].shape[1])
            probe = fit_probe(images, flips, share)
            stats = {"flips": flips.tolist()}
        else:
            signed = [(apply_signs(h, self.head_signs), t, labs) for h, t, labs in images]
            flips, probe, sep = refine_signs(signed, num_classes, share)
            self.head_signs = self.head_signs * flips
            stats = {"flips": flips.tolist(), "separation": round(sep, 5)}
        self.fg_probe = probe
        refined = [i for i, f in enumerate(stats["flips"]) if f < 0]
        final = [] if self.head_signs is None else (self.head_signs < 0).nonzero().flatten()
        log.info(
            "%s: foreground probe fitted on the patch tokens; refining on its map mirrored heads "
            "%s%s; heads mirrored in the end: %s",
            self.name,
            refined or "none",
            f" (fg/bg separation {stats['separation']})" if "separation" in stats else "",
            [int(i) for i in final] or "none",
        )
        log.debug("foreground probe stats %s, head signs %s", stats, self.head_signs)
        return stats

    def fit_prototypes(self, images: FitImages, num_classes: int) -> dict:
        """Class prototypes from foreground embeddings of labelled images (class_assign)."""
        bank = PrototypeBank(num_classes, images[0][1].shape[-1])
        for heads, tokens, labels in images:
            keep = [i for i, labs in enumerate(labels) if labs]
            if keep:
                _, saliency = self._fitted_maps(heads[keep], tokens[keep])
                bank.add(tokens[keep], saliency, [labels[i] for i in keep])
        if bank.count == 0:
            raise ValueError("no labelled image to build class prototypes from")
        state = bank.state_dict()
        self.centre, self.prototypes = state["centre"], state["prototypes"]
        return state

    def saliency(self, att: AttentionOutput, size: tuple[int, int]) -> torch.Tensor:
        """The saliency map (probe P(fg), or the head mean) upsampled to pixels [B, H, W].

        With ``mask.border_polarity`` each head is first mirrored if it lights up the
        image border (cut at its own Otsu threshold), so heads that attend to the
        background add to the object instead of cancelling it in the mean.
        """
        if not self.cfg.mask.border_polarity:
            return upsample(att.saliency, size)
        b, k, h, w = att.heads.shape
        flat = att.heads.reshape(b * k, h, w)
        flat = border_polarity(flat, otsu_threshold(flat), border=1)
        return upsample(flat.reshape(b, k, h, w).mean(dim=1), size)

    def foreground(
        self, images: torch.Tensor, raw: torch.Tensor, refine: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(foreground labels 0/1/255 [B, H, W], per-image thresholds [B]) from ``raw``."""
        m = self.cfg.mask
        t = threshold_for(raw, m.rule, m.value_threshold, m.mass)
        if m.border_polarity:
            raw = border_polarity(raw, t)
            t = threshold_for(raw, m.rule, m.value_threshold, m.mass)
        if not refine:
            return (raw >= t[:, None, None]).long(), t
        refined = self.refiner(images.to(raw.device), raw[:, None])[:, 0]
        r = self.cfg.refine
        return dual_threshold(raw, refined, t, r.ignore_band, r.ignore_disagreement), t

    def classes(
        self,
        fg: torch.Tensor,
        labels: list[list[int]],
        att: AttentionOutput,
        rule: str | None = None,
    ) -> torch.Tensor:
        """Class-index masks from foreground labels using ``assign.rule`` (or ``rule``)."""
        rule = rule or self.cfg.assign.rule
        scores = None
        if rule == "prototype" and any(len(labs) > 1 for labs in labels):
            if self.prototypes is None:
                raise RuntimeError("fit_prototypes must run before prototype class assignment")
            scores = class_scores(
                att.tokens, self.centre.to(att.tokens.device), self.prototypes.to(att.tokens.device)
            )
        return assign_classes(
            fg, labels, scores, rule, self.cfg.data.empty_labels, ignore_index=IGNORE_INDEX
        )

    def weak(self, batch: Batch, att: AttentionOutput | None = None, refine: bool | None = None):
        """Weak class masks [B, H, W] (and the foreground labels) of a batch."""
        att = att if att is not None else self.attend(batch.images)
        refine = self.cfg.refine.enabled if refine is None else refine
        raw = self.saliency(att, tuple(batch.images.shape[-2:]))
        fg, _ = self.foreground(batch.images.to(self.device), raw, refine)
        return self.classes(fg, batch.labels, att), fg

    def enhancer_inputs(self, batch: Batch, att: AttentionOutput, weak_fg: torch.Tensor):
        """Enhancer input stack: image, every head map (+ colour contrast), weak foreground.

        Ignore pixels of the weak foreground enter as 0.5. With ``enhancer.colour_contrast``
        the border-contrast map joins the head maps: a global cue (distance to the border's
        colour) that the enhancer's small receptive field could not compute itself.
        """
        coarse = weak_fg.float()
        coarse[weak_fg == IGNORE_INDEX] = 0.5
        images = batch.images.to(coarse.device)
        maps = upsample(att.heads, tuple(images.shape[-2:]))
        if self.cfg.enhancer.colour_contrast:
            maps = torch.cat([maps, border_contrast_saliency(images)[:, None]], dim=1)
        return enhancer_inputs(images, maps, coarse, self.cfg.enhancer.resolution)

    def enhanced(self, batch: Batch, enhancer: Enhancer, att: AttentionOutput | None = None):
        """Class masks whose foreground comes from the enhancer (prob >= 0.5)."""
        att = att if att is not None else self.attend(batch.images)
        _, weak_fg = self.weak(batch, att)
        x = self.enhancer_inputs(batch, att, weak_fg)
        prob = predict_foreground(enhancer.to(x.device), x, tuple(batch.images.shape[-2:]))
        return self.classes((prob >= 0.5).long(), batch.labels, att)


def write_pseudo_masks(
    labeler: PseudoLabeler,
    batches: Iterator[Batch],
    out_root: Path,
    enhancer: Enhancer | None = None,
    gt_ids: set[str] | frozenset[str] = frozenset(),
) -> dict:
    """Write ``weak/<id>.png`` (and ``mixed/<id>.png`` with an enhancer) for every batch.

    Mixed masks keep the ground truth of the images in ``gt_ids`` (the enhancer's training
    images). Returns counts of images and of ignored / foreground pixels.
    """
    stats = {"images": 0, "weak_ignore_fraction": 0.0, "weak_fg_fraction": 0.0}
    pixels = 0
    for batch in batches:
        att = labeler.attend(batch.images)
        weak, weak_fg = labeler.weak(batch, att)
        mixed = None
        if enhancer is not None:
            x = labeler.enhancer_inputs(batch, att, weak_fg)
            prob = predict_foreground(enhancer.to(x.device), x, tuple(batch.images.shape[-2:]))
            mixed = labeler.classes((prob >= 0.5).long(), batch.labels, att)
        for i, name in enumerate(batch.ids):
            write_mask(out_root / "weak" / f"{name}.png", weak[i].cpu().numpy())
            if mixed is not None:
                use_gt = name in gt_ids and batch.masks is not None
                m = batch.masks[i] if use_gt else mixed[i]
                write_mask(out_root / "mixed" / f"{name}.png", m.cpu().numpy())
        stats["images"] += len(batch.ids)
        pixels += weak.numel()
        stats["weak_ignore_fraction"] += (weak == IGNORE_INDEX).sum().item()
        stats["weak_fg_fraction"] += ((weak > 0) & (weak != IGNORE_INDEX)).sum().item()
    for key in ("weak_ignore_fraction", "weak_fg_fraction"):
        stats[key] /= max(pixels, 1)
    return stats
