"""How learnable is a FashionScenes set within a CPU budget, with every label? A ceiling check.

Trains, fully supervised on every single-object train scene (cross-entropy, AdamW, batch 64,
horizontal flips), the ``fashion_tiny`` ViT (same timm kwargs and input size as the preset),
the same ViT with the convolutional stem (``model.stem=conv``) and a three-layer CNN, and
reports test accuracy on the single-object test scenes after
each epoch with the wall-clock. Self-supervised features cannot be expected to beat what
the same network learns from all labels in the same time.

    python benchmarks/bench_supervised_ceiling.py --data data/fashion_scenes --epochs 10 \
        --models vit vit_conv cnn --seeds 0 1
"""

from __future__ import annotations

import argparse
import logging
import time

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.record import record_printed
from common.backbone import build_backbone
from common.config import load_config
from pretrain.augment import IMAGENET_MEAN, IMAGENET_STD
from pretrain.model import backbone_kwargs_from_config
from pretrain.probe import single_object_images

log = logging.getLogger("bench_supervised_ceiling")


class ViTClassifier(nn.Module):
    """The preset's backbone with a linear layer on the cls token."""

    def __init__(self, config: str, num_classes: int, overrides: tuple[str, ...] = ()) -> None:
        super().__init__()
        cfg = load_config("pretrain", config, list(overrides))
        self.size = int(cfg.crops.global_size)
        self.backbone = build_backbone(backbone_kwargs_from_config(cfg.model, self.size))
        self.head = nn.Linear(self.backbone.embed_dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone.forward_features(x)[:, 0])


def small_cnn(num_classes: int) -> nn.Module:
    """Three conv layers and a global max pool: a translation-invariant reference."""
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(64, 64, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveMaxPool2d(1),
        nn.Flatten(),
        nn.Linear(64, num_classes),
    )


def prepare(images: torch.Tensor, size: int) -> torch.Tensor:
    """Resize to ``size`` and normalise as the pretraining crops are."""
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    if images.shape[-1] != size:
        images = F.interpolate(images, size=(size, size), mode="bilinear", antialias=True)
    return (images - mean) / std


def train_and_track(
    model: nn.Module, data: tuple, epochs: int, lr: float, seed: int
) -> list[tuple[int, float, float]]:
    """(epoch, test accuracy %, seconds) after each epoch of supervised training."""
    train_x, train_y, test_x, test_y = data
    generator = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    start, rows = time.perf_counter(), []
    for epoch in range(1, epochs + 1):
        model.train()
        order = torch.randperm(len(train_y), generator=generator)
        for i in range(0, len(order), 64):
            idx = order[i : i + 64]
            x = train_x[idx]
            flip = torch.rand(len(idx), generator=generator) < 0.5
            x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
            loss = F.cross_entropy(model(x), train_y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            acc = (model(test_x).argmax(1) == test_y).float().mean().item() * 100
        rows.append((epoch, acc, time.perf_counter() - start))
        log.info("epoch %d: test accuracy %.1f %% (%.0f s)", epoch, acc, rows[-1][2])
    return rows


# Model name -> pretrain-config overrides of the ViT (None = the CNN).
MODELS = {"vit": (), "vit_conv": ("model.stem=conv",), "cnn": None}


def build_model(name: str, config: str, cnn_size: int) -> tuple[nn.Module, int, str]:
    """(model, input side, table label) for a ``MODELS`` name."""
    if MODELS[name] is None:
        return small_cnn(10), cnn_size, "3-layer CNN"
    model = ViTClassifier(config, 10, MODELS[name])
    stem = " + conv stem" if name == "vit_conv" else ""
    return model, model.size, f"{config} ViT{stem}"


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", nargs="+", default=["data/fashion_scenes"], help="set roots")
    parser.add_argument("--config", default="fashion_tiny", help="pretrain preset of the ViT")
    parser.add_argument("--epochs", type=int, default=10, help="supervised epochs per model")
    parser.add_argument("--cnn-size", type=int, default=64, help="CNN input side (px)")
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=list(MODELS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0], help="one row per seed")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    lines = [
        "| set | model | seed | input | train scenes | "
        + " | ".join(f"ep {e}" for e in range(1, args.epochs + 1))
        + " | wall-clock |",
        "|" + "---|" * (args.epochs + 6),
    ]
    for root in args.data:
        train_x, train_y = single_object_images(root, "train")
        test_x, test_y = single_object_images(root, "val")
        labels = (torch.as_tensor(train_y) - 1, torch.as_tensor(test_y) - 1)
        for name in args.models:
            for seed in args.seeds:
                torch.manual_seed(seed)
                model, size, label = build_model(name, args.config, args.cnn_size)
                data = (prepare(train_x, size), labels[0], prepare(test_x, size), labels[1])
                rows = train_and_track(model, data, args.epochs, 1e-3, seed)
                accs = " | ".join(f"{acc:.1f}" for _, acc, _ in rows)
                lines.append(
                    f"| {root} | {label} | {seed} | {size} px | {len(train_y)} | {accs} "
                    f"| {rows[-1][2]:.0f} s |"
                )
    table = "\n".join(lines)
    print(table)
    return table


if __name__ == "__main__":
    with record_printed("supervised_ceiling", ["ceiling"]):
        main()
