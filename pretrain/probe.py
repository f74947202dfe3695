"""Frozen-feature probes on labelled single-object scenes: k-NN (faiss, on a GPU when faiss
has GPU support) and low-shot logistic regression. Used for the periodic k-NN monitor during
training and by the quality benchmark."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from common.backbone import forward_tokens
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


class KNNProbe:
    """k-NN accuracy of a backbone: train-split single-object scenes as the labelled bank,
    val-split single-object scenes as queries."""

    def __init__(self, eval_cfg, data_root: str, image_size: int) -> None:
        root = eval_cfg.root or data_root
        self.bank_images, self.bank_labels = single_object_images(
            root, eval_cfg.bank_split, eval_cfg.max_bank
        )
        self.query_images, self.query_labels = single_object_images(
            root, eval_cfg.query_split, eval_cfg.max_queries
        )
        self.k = int(eval_cfg.k)
        self.temperature = float(eval_cfg.temperature)
        self.size = image_size
        self.pooling = eval_cfg.pooling
        log.info(
            "k-NN probe: %d bank / %d query single-object images from %s",
            len(self.bank_labels),
            len(self.query_labels),
            root,
        )

    def __call__(self, backbone: torch.nn.Module) -> dict[str, float]:
        bank = extract_features(backbone, self.bank_images, self.size, self.pooling)
        queries = extract_features(backbone, self.query_images, self.size, self.pooling)
        pred = knn_predict(bank, self.bank_labels, queries, self.k, self.temperature)
        return {"knn_top1": float((pred == self.query_labels).mean())}


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
