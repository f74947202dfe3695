"""Assign foreground pixels of an image to one of its image-level labels.

``prototype`` rule (the pipeline's): each training image contributes its foreground embedding
(the saliency-weighted mean of its patch tokens); the prototype of class c is the mean of
those embeddings over the images labelled c, each image weighted by 1 / (its number of
labels) so single-object images dominate. Prototypes and tokens are centred by the mean
embedding (removing the direction every token shares) and compared by cosine. A patch of
a multi-label image is given the label, among that image's labels, whose prototype is most
similar; the per-label score maps are upsampled bilinearly before the pixel-wise argmax.

``first_label`` rule (the no-learning reference of the quality report and of the colour
saliency baseline): every foreground pixel gets the image's lowest class id; it is exact on
single-label images. It beats a random label only where class ids carry a size prior, as
in FashionScenes (docs/distill.md). When the patch tokens name the classes, ``prototype``
splits the objects and ``first_label`` cannot (tests/distill/test_class_assign.py).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

RULES = ("prototype", "first_label")


class PrototypeBank:
    """Accumulates per-class foreground embeddings, then gives centred unit prototypes."""

    def __init__(self, num_classes: int, dim: int) -> None:
        self.num_classes = num_classes
        self.sums = torch.zeros(num_classes, dim, dtype=torch.float64)
        self.weights = torch.zeros(num_classes, dtype=torch.float64)
        self.mean_sum = torch.zeros(dim, dtype=torch.float64)
        self.count = 0

    def add(self, tokens: torch.Tensor, saliency: torch.Tensor, labels: Sequence[Sequence[int]]):
        """Add a batch: ``tokens`` [B, h, w, C], ``saliency`` [B, h, w], labels per image."""
        w = saliency.clamp_min(0).flatten(1).double()
        emb = (w[..., None] * tokens.flatten(1, 2).double()).sum(1) / w.sum(
            1, keepdim=True
        ).clamp_min(1e-12)
        for e, labs in zip(emb, labels, strict=True):
            labs = sorted(set(int(c) for c in labs))
            for c in labs:
                if not 0 < c < self.num_classes:
                    raise ValueError(
                        f"image label {c} is outside 1..{self.num_classes - 1}; image-level "
                        "labels must be foreground class ids (background is 0)"
                    )
                self.sums[c] += e / len(labs)
                self.weights[c] += 1.0 / len(labs)
            self.mean_sum += e
            self.count += 1

    def prototypes(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(centre [C], unit prototypes [num_classes, C]); classes never seen are zero rows."""
        if self.count == 0:
            raise ValueError("no labelled images were added; prototypes need image-level labels")
        centre = (self.mean_sum / self.count).float()
        protos = (self.sums / self.weights.clamp_min(1e-12)[:, None]).float() - centre
        protos[self.weights == 0] = 0
        return centre, F.normalize(protos, dim=-1)


def class_scores(
    tokens: torch.Tensor, centre: torch.Tensor, prototypes: torch.Tensor
) -> torch.Tensor:
    """Cosine of centred tokens [B, h, w, C] with every prototype: [B, num_classes, h, w]."""
    t = F.normalize(tokens.float() - centre, dim=-1)
    return torch.einsum("bhwc,kc->bkhw", t, prototypes)


def assign_classes(
    foreground: torch.Tensor,
    labels: Sequence[Sequence[int]],
    scores: torch.Tensor | None = None,
    rule: str = "prototype",
    empty_labels: str = "error",
    ignore_index: int = 255,
) -> torch.Tensor:
    """Class-index masks [B, H, W] from foreground labels [B, H, W] (0 / 1 / ignore).

    ``scores`` [B, num_classes, h, w] (from :func:`class_scores`) is needed by ``prototype``;
    it is upsampled to the mask size. Ignore pixels stay ignore. An image without labels is
    an error, or, with ``empty_labels="background"``, known to hold no object: all background.
    """
    if rule not in RULES:
        raise ValueError(f"assign.rule must be one of {RULES}, got {rule!r}")
    out = torch.zeros_like(foreground, dtype=torch.long)
    size = foreground.shape[-2:]
    multi, empty = [], []
    for i, labs in enumerate(labels):
        labs = sorted(set(int(c) for c in labs))
        if not labs and empty_labels == "background":
            empty.append(i)
            continue
        if not labs:
            raise ValueError(
                f"image {i} of the batch has no image-level label; weak pseudo-labels need "
                "at least one foreground class per image; drop unlabeled images from the "
                "split, or set data.empty_labels=background if an empty label list means "
                "'no object'"
            )
        if rule == "first_label" or len(labs) == 1:
            out[i][foreground[i] == 1] = labs[0]
        else:
            multi.append((i, labs))
    if multi:
        if scores is None:
            raise ValueError("assign.rule=prototype needs class scores for multi-label images")
        rows = [i for i, _ in multi]
        # Only the image's own labels compete: the others get -inf before the argmax.
        allowed = torch.zeros(len(rows), scores.shape[1], dtype=torch.bool)
        for r, (_, labs) in enumerate(multi):
            allowed[r, labs] = True
        sel = F.interpolate(scores[rows].float(), size=size, mode="bilinear", align_corners=False)
        sel = sel.masked_fill(~allowed.to(sel.device)[:, :, None, None], float("-inf"))
        best = sel.argmax(dim=1)
        for r, i in enumerate(rows):
            fg = foreground[i] == 1
            out[i][fg] = best[r][fg].to(out.device)
    out[foreground == ignore_index] = ignore_index
    out[empty] = 0  # known to show no object: background everywhere, nothing to ignore
    return out
