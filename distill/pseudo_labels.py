"""The pseudo-label pipeline: attention -> foreground -> refine -> classes -> PNGs.

:meth:`PseudoLabeler.fit` learns, once, what the labelled train images tell (head signs, the
foreground probe, class prototypes) and returns it as a frozen :class:`Fit`;
:meth:`PseudoLabeler.label` then runs the whole path for a batch, top to bottom. Weak
pseudo-masks use only image-level labels; mixed ones replace the weak foreground by
the enhancer's and keep ground truth on the few images that have it. Masks are written as
VOC palette PNGs (0 background, class ids, 255 ignore) to ``pseudo_masks/<kind>/<id>.png``
at each image's own size, so ``VOCSegmentation(root, split, mask_dir=...)`` and
``LabelledFolder(root, labels, masks=...)`` read them in place of ground truth.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
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
from distill.mask_rules import RULES, threshold_for
from distill.polarity import apply_signs
from distill.refine import ParVariationRefine, dual_threshold
from distill.token_probe import FitImages, ForegroundProbe, fit_probe, search_signs
from distill.varm import VARM

log = logging.getLogger(__name__)
EMPTY_LABEL_POLICIES = ("background", "error")
HEAD_POLARITY_MODES = ("search", "none")


@dataclass
class Batch:
    """Images [B, 3, H, W], image-level labels, ids, (when known) GT masks [B, H, W] and
    each image's own (height, width), at which its pseudo-masks are written."""

    images: torch.Tensor
    labels: list[list[int]]
    ids: list[str]
    masks: torch.Tensor | None
    sizes: list[tuple[int, int]] | None = None


def _same_size_runs(items: list[dict]) -> Iterator[list[int]]:
    """Positions of consecutive items of one image size: a batch never mixes sizes."""
    run: list[int] = []
    for n, item in enumerate(items):
        if run and item["image"].shape != items[run[0]]["image"].shape:
            yield run
            run = []
        run.append(n)
    if run:
        yield run


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
        # Images of other sizes (no data.image_size) go through the backbone in runs of one
        # size: slower than one resized batch, but each keeps its own aspect ratio.
        for run in _same_size_runs(items):
            part = [items[n] for n in run]
            yield Batch(
                images=torch.stack([it["image"] for it in part]),
                labels=[labels[n] for n in run],
                ids=[it["id"] for it in part],
                masks=torch.stack([it["mask"] for it in part]),
                sizes=[tuple(it.get("size", it["image"].shape[-2:])) for it in part],
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


def check_mask_config(m: Config) -> None:
    """Refuse a ``mask`` section whose keys contradict each other, naming the fix."""
    if m.head_polarity not in HEAD_POLARITY_MODES:
        raise ConfigError(
            f"mask.head_polarity must be one of {HEAD_POLARITY_MODES}, got {m.head_polarity!r}"
        )
    if m.head_polarity == "search" and not m.token_probe:
        raise ConfigError(
            "mask.head_polarity=search judges head signs on the foreground probe's map; set "
            "mask.token_probe=true, or mask.head_polarity=none for the plain head mean"
        )
    if m.rule not in RULES:
        raise ConfigError(f"mask.rule must be one of {RULES}, got {m.rule!r}")


@dataclass(frozen=True)
class Fit:
    """What :meth:`PseudoLabeler.fit` learnt from labelled train images, read by every step."""

    head_signs: torch.Tensor | None  # [K] -1 mirrors a head before anything reads it; None: as is
    probe: ForegroundProbe | None  # saliency = its P(fg) of the patch tokens; None: head mean
    centre: torch.Tensor  # [C] mean foreground embedding, removed before class cosines
    prototypes: torch.Tensor  # [num_classes, C] unit class prototypes (distill.class_assign)


def fitted_maps(
    heads: torch.Tensor,
    tokens: torch.Tensor,
    signs: torch.Tensor | None,
    probe: ForegroundProbe | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw head maps turned by ``signs``, and the saliency: the probe's P(fg) or the mean."""
    if signs is not None:
        heads = apply_signs(heads, signs)
    return heads, probe(tokens) if probe is not None else heads.mean(dim=1)


class PseudoLabeler:
    """Turns a backbone's attention into foreground and class masks for labelled images."""

    def __init__(
        self, model: torch.nn.Module, cfg: Config, device: torch.device, name: str = "backbone"
    ) -> None:
        check_mask_config(cfg.mask)
        self.name = name  # prefixes its log lines: a baseline's fit reads apart from the real one
        self.model = model.to(device).eval()
        self.device = device
        self.cfg = cfg
        self.refiner = make_refiner(cfg.refine)

    def fit(self, batches: Iterable[Batch], num_classes: int) -> Fit:
        """Learn head signs, the foreground probe and class prototypes from labelled images.

        One backbone pass: the raw head maps and patch tokens of ``batches`` are kept (on
        the CPU; ``assign.max_images`` bounds them) and every fit step reads them.
        """
        m = self.cfg.mask
        # iter_batches refused empty label lists unless they mean "no object".
        images: FitImages = []
        for batch in batches:
            att = self._raw_attention(batch.images)
            images.append((att.heads.cpu(), att.tokens.cpu(), batch.labels))
        if not images:
            raise ValueError("no fit image: fitting on labels needs labelled train images")
        signs, probe = None, None
        if m.head_polarity == "search":
            found = search_signs(images, num_classes)
            signs, probe = found.signs, found.probe
            log.info(
                "%s: head signs from %d single-label images: per head mirrored %s, after the "
                "search on the foreground probe's map mirrored %s (of %d; fg/bg separation %.5f)",
                self.name,
                found.single_label_images,
                _mirrored(found.start),
                _mirrored(found.signs),
                len(found.signs),
                found.separation,
            )
        elif m.token_probe:
            probe = fit_probe(images, torch.ones(images[0][0].shape[1]))
            log.info("%s: foreground probe fitted on unsigned heads", self.name)
        centre, prototypes = self._fit_prototypes(images, num_classes, signs, probe)
        return Fit(signs, probe, centre, prototypes)

    def _fit_prototypes(
        self,
        images: FitImages,
        num_classes: int,
        signs: torch.Tensor | None,
        probe: ForegroundProbe | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(centre, prototypes) from saliency-weighted patch tokens of labelled images."""
        bank = PrototypeBank(num_classes, images[0][1].shape[-1])
        for heads, tokens, labels in images:
            keep = [i for i, labs in enumerate(labels) if labs]
            if keep:
                _, saliency = fitted_maps(heads[keep], tokens[keep], signs, probe)
                bank.add(tokens[keep], saliency, [labels[i] for i in keep])
        if bank.count == 0:
            raise ValueError("no labelled image to build class prototypes from")
        return bank.prototypes()

    def _raw_attention(self, images: torch.Tensor) -> AttentionOutput:
        """Head maps and patch tokens as the backbone gives them (``attention.image_size``)."""
        a = self.cfg.attention
        images = images.to(self.device)
        if a.image_size:
            size = (a.image_size, a.image_size) if isinstance(a.image_size, int) else a.image_size
        else:  # the image's size, to the nearest whole number of patches
            ph, pw = self.model.patch_embed.patch_size
            h, w = images.shape[-2:]
            size = (max(ph, round(h / ph) * ph), max(pw, round(w / pw) * pw))
        if tuple(size) != tuple(images.shape[-2:]):
            images = F.interpolate(images, size=tuple(size), mode="bilinear", align_corners=False)
        return extract_attention(self.model, images, a.layers)

    def attend(self, images: torch.Tensor, fit: Fit) -> AttentionOutput:
        """Attention of a batch with ``fit``'s head signs, and its saliency (probe or mean)."""
        att = self._raw_attention(images)
        heads, saliency = fitted_maps(att.heads, att.tokens, fit.head_signs, fit.probe)
        return replace(att, heads=heads, saliency=saliency)

    def label(
        self,
        batch: Batch,
        fit: Fit,
        att: AttentionOutput | None = None,
        refine: bool | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Weak class masks [B, H, W] of a batch and their foreground (0 / 1 / 255).

        The whole path of an image, in order (``att`` reuses step 1 computed earlier):
        1. attention: head maps turned by the fitted signs, and the saliency (the probe's
           P(fg) of each patch token, or the head mean);
        2. foreground: the saliency upsampled to pixels and cut once per image (mask.rule);
        3. refine: the map propagated along the image's colours and cut at the same
           threshold; pixels the refine moves, or leaves near the cut, become ignore (255);
        4. classes: every foreground pixel gets one of the image's labels (prototypes).
        """
        att = att if att is not None else self.attend(batch.images, fit)
        images = batch.images.to(self.device)
        saliency = upsample(att.saliency, tuple(images.shape[-2:]))
        m, r = self.cfg.mask, self.cfg.refine
        threshold = threshold_for(saliency, m.rule, m.value_threshold)
        if r.enabled if refine is None else refine:
            refined = self.refiner(images.to(saliency.device), saliency[:, None])[:, 0]
            fg = dual_threshold(saliency, refined, threshold, r.ignore_band, r.ignore_disagreement)
        else:
            fg = (saliency >= threshold[:, None, None]).long()
        return self.classes(fg, batch.labels, att, fit), fg

    def classes(
        self,
        fg: torch.Tensor,
        labels: list[list[int]],
        att: AttentionOutput,
        fit: Fit,
        rule: str = "prototype",
    ) -> torch.Tensor:
        """Class-index masks from foreground labels: ``prototype``, or ``first_label``."""
        scores = None
        if rule == "prototype" and any(len(set(labs)) > 1 for labs in labels):
            d = att.tokens.device
            scores = class_scores(att.tokens, fit.centre.to(d), fit.prototypes.to(d))
        return assign_classes(
            fg, labels, scores, rule, self.cfg.data.empty_labels, ignore_index=IGNORE_INDEX
        )

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

    def enhanced(
        self, batch: Batch, fit: Fit, enhancer: Enhancer, att: AttentionOutput | None = None
    ) -> torch.Tensor:
        """Class masks whose foreground comes from the enhancer (prob >= 0.5)."""
        att = att if att is not None else self.attend(batch.images, fit)
        _, weak_fg = self.label(batch, fit, att)
        x = self.enhancer_inputs(batch, att, weak_fg)
        prob = predict_foreground(enhancer.to(x.device), x, tuple(batch.images.shape[-2:]))
        return self.classes((prob >= 0.5).long(), batch.labels, att, fit)


def _mirrored(signs: torch.Tensor) -> list[int] | str:
    """Indices of the heads with sign -1, or "none", for a log line."""
    return (signs < 0).nonzero().flatten().tolist() or "none"


def _at_size(mask: torch.Tensor, size: tuple[int, int] | None) -> np.ndarray:
    """A class mask [h, w] at the image's own ``size`` (nearest: class ids stay exact)."""
    mask = mask.cpu()
    if size is not None and tuple(mask.shape) != tuple(size):
        mask = F.interpolate(mask[None, None].float(), size=tuple(size), mode="nearest")[0, 0]
    return mask.to(torch.uint8).numpy()


def write_pseudo_masks(
    labeler: PseudoLabeler,
    fit: Fit,
    batches: Iterator[Batch],
    out_root: Path,
    enhancer: Enhancer | None = None,
    gt_masks: Mapping[str, Callable[[], np.ndarray]] | None = None,
) -> dict:
    """Write ``weak/<id>.png`` (and ``mixed/<id>.png`` with an enhancer) for every batch, at
    each image's own size; an id with folders (``shop/img1``) keeps them.

    Mixed masks of the images in ``gt_masks`` (the enhancer's training images) are their
    ground truth, read at its own size. Returns counts of images and of ignored /
    foreground pixels.
    """
    gt_masks = gt_masks or {}
    stats = {"images": 0, "weak_ignore_fraction": 0.0, "weak_fg_fraction": 0.0}
    pixels = 0
    for batch in batches:
        att = labeler.attend(batch.images, fit)
        weak, weak_fg = labeler.label(batch, fit, att)
        mixed = None
        if enhancer is not None:
            x = labeler.enhancer_inputs(batch, att, weak_fg)
            prob = predict_foreground(enhancer.to(x.device), x, tuple(batch.images.shape[-2:]))
            mixed = labeler.classes((prob >= 0.5).long(), batch.labels, att, fit)
        for i, name in enumerate(batch.ids):
            size = batch.sizes[i] if batch.sizes else None
            written = _at_size(weak[i], size)
            write_mask(out_root / "weak" / f"{name}.png", written)
            if mixed is not None:
                m = gt_masks[name]() if name in gt_masks else _at_size(mixed[i], size)
                write_mask(out_root / "mixed" / f"{name}.png", m)
            # The shares describe the masks as written (each image's own size), not the
            # working resolution they were computed at.
            pixels += written.size
            stats["weak_ignore_fraction"] += int((written == IGNORE_INDEX).sum())
            stats["weak_fg_fraction"] += int(((written > 0) & (written != IGNORE_INDEX)).sum())
        stats["images"] += len(batch.ids)
    for key in ("weak_ignore_fraction", "weak_fg_fraction"):
        stats[key] /= max(pixels, 1)
    return stats
