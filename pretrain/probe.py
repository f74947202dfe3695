"""Frozen-feature probes: the periodic k-NN monitor of pretraining on any labelled set
(faiss, on a GPU when faiss has GPU support), and the single-object-scene helpers (k-NN,
low-shot logistic regression) of the quality benchmarks."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from common.backbone import forward_tokens
from common.config import ConfigError
from common.datasets.classification import (
    LabelledImages,
    eval_transform,
    open_labelled,
    spread_indices,
)
from common.datasets.errors import DatasetNotFoundError
from common.datasets.items import load_rgb
from common.faiss_index import search_ip
from pretrain.augment import IMAGENET_MEAN, IMAGENET_STD

log = logging.getLogger(__name__)


def single_object_images(
    root: str | Path, split: str, max_images: int | None = None
) -> tuple[torch.Tensor, np.ndarray]:
    """Images [N, 3, H, W] in [0, 1] and class ids of the scenes holding exactly one class."""
    from common.datasets.voc import VOCSegmentation

    ds = VOCSegmentation(root, split)
    images, labels = [], []
    for i in range(len(ds)):
        classes = ds.image_labels(i)
        if len(classes) != 1:
            continue
        images.append(ds[i]["image"])
        labels.append(classes[0])
        if max_images is not None and len(images) >= max_images:
            break
    if not images:
        raise ValueError(
            f"split {split!r} of {root} has no single-object image to probe with; "
            "set eval.every=0 to train without the k-NN probe"
        )
    return torch.stack(images), np.asarray(labels)


@torch.no_grad()
def extract_features(
    backbone: torch.nn.Module,
    images: torch.Tensor,
    size: int,
    pooling: str = "cls",
    batch_size: int = 256,
) -> np.ndarray:
    """L2-normalised features [N, D] of images resized to ``size`` (cls, avg or cls+avg tokens)."""
    # Each module's own mode: a teacher in eval mode keeps its batch norm training.
    modes = {module: module.training for module in backbone.modules()}
    backbone.eval()
    device = next(backbone.parameters()).device
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
    out = []
    for start in range(0, len(images), batch_size):
        x = images[start : start + batch_size].to(device)
        if x.dtype == torch.uint8:
            x = x.float() / 255
        if x.shape[-1] != size or x.shape[-2] != size:
            x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True)
        cls, patches = forward_tokens(backbone, (x - mean) / std)
        feats = {
            "cls": cls,
            "avg": patches.mean(dim=(1, 2)),
            "cls_avg": torch.cat([cls, patches.mean(dim=(1, 2))], dim=-1),
        }[pooling]
        out.append(F.normalize(feats.float(), dim=-1).cpu())
    for module, mode in modes.items():
        module.training = mode
    return torch.cat(out).numpy()


def knn_predict(
    bank: np.ndarray, bank_labels: np.ndarray, queries: np.ndarray, k: int, temperature: float
) -> np.ndarray:
    """Class of each query by temperature-weighted voting of its ``k`` cosine neighbours (DINO)."""
    sims, idx = search_ip(bank, queries, k)
    num_classes = int(bank_labels.max()) + 1
    votes = np.zeros((len(queries), num_classes))
    weights = np.exp(sims / temperature)
    np.add.at(votes, (np.arange(len(queries))[:, None], bank_labels[idx]), weights)
    return votes.argmax(axis=1)


def probe_images(
    images: LabelledImages, max_images: int | None, transform
) -> tuple[torch.Tensor, np.ndarray]:
    """uint8 images [N, 3, S, S] (resized and centre-cropped, so any mix of sizes stacks) and
    class ids of at most ``max_images`` items spread evenly over the list (every class of a
    class-sorted folder, not the first few)."""
    index = spread_indices(len(images), max_images)
    pics = [(transform(load_rgb(images.paths[i])) * 255).round().to(torch.uint8) for i in index]
    return torch.stack(pics), images.labels[index]


class KNNProbe:
    """k-NN accuracy of a backbone on a labelled set (any ``common.datasets.classification``
    format): the ``bank_split`` as the labelled bank, the ``query_split`` as queries, each
    image resized (short side ``resize``) and centre-cropped to ``image_size``."""

    def __init__(self, eval_cfg, root: str | Path, image_size: int) -> None:
        size = int(eval_cfg.image_size or image_size)
        resize = int(eval_cfg.resize or round(size * 256 / 224))
        transform = eval_transform(resize, size, "bicubic")
        if eval_cfg.format == "folder":  # its labels file and id lists are fewshot.probe keys
            raise ConfigError(
                "eval.format=folder is not read by the k-NN monitor; use imagefolder, csv or "
                "voc for eval.root, or run fewshot.probe with data.format=folder after training"
            )
        bank = open_labelled(root, eval_cfg.bank_split, eval_cfg.format)
        query = open_labelled(root, eval_cfg.query_split, bank.fmt, bank.classes)
        self.bank_images, self.bank_labels = probe_images(bank, eval_cfg.max_bank, transform)
        self.query_images, self.query_labels = probe_images(query, eval_cfg.max_queries, transform)
        self.k = int(eval_cfg.k)
        self.temperature = float(eval_cfg.temperature)
        self.size = size
        self.pooling = eval_cfg.pooling
        log.info(
            "k-NN probe: %d bank / %d query images (%s format, %d classes) from %s at %d px",
            len(self.bank_labels),
            len(self.query_labels),
            bank.fmt,
            len(bank.classes),
            root,
            size,
        )

    def __call__(self, backbone: torch.nn.Module) -> dict[str, float]:
        bank = extract_features(backbone, self.bank_images, self.size, self.pooling)
        queries = extract_features(backbone, self.query_images, self.size, self.pooling)
        pred = knn_predict(bank, self.bank_labels, queries, self.k, self.temperature)
        return {"knn_top1": float((pred == self.query_labels).mean())}


def make_knn_probe(eval_cfg, data_root: str, image_size: int) -> KNNProbe | None:
    """The monitor of ``eval.root`` (a labelled set must be readable there), or of the
    training folder when it is labelled; an unlabelled training folder turns the monitor
    off with a warning instead of failing the run."""
    if eval_cfg.root:
        return KNNProbe(eval_cfg, eval_cfg.root, image_size)
    try:
        return KNNProbe(eval_cfg, data_root, image_size)
    except DatasetNotFoundError as exc:
        log.warning(
            "k-NN monitor off: the training folder %s is not a labelled set (%s); set "
            "eval.root to one (ImageNet layout, a path,label CSV or VOC scenes)",
            data_root,
            exc,
        )
        return None


def lowshot_accuracy(
    features: np.ndarray,
    labels: np.ndarray,
    test_features: np.ndarray,
    test_labels: np.ndarray,
    shots: int,
    seed: int,
) -> dict[str, float]:
    """Logistic-regression and 1-NN accuracy from ``shots`` labelled examples per class."""
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(seed)
    chosen = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        chosen.extend(rng.choice(members, size=min(shots, len(members)), replace=False))
    chosen = np.asarray(chosen)
    x, y = features[chosen], labels[chosen]
    clf = LogisticRegression(C=10.0, max_iter=2000)
    clf.fit(x, y)
    logreg = float((clf.predict(test_features) == test_labels).mean())
    knn = knn_predict(x, y, test_features, k=1, temperature=1.0)
    return {"logreg": logreg, "knn": float((knn == test_labels).mean())}
