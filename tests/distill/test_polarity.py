import pytest
import torch
import torch.nn.functional as F

from common.backbone import load_backbone
from common.config import ConfigError, load_config
from common.datasets.voc import VOCSegmentation
from distill.attention_maps import extract_attention
from distill.polarity import ClassSeparation, HeadPolarity, apply_signs
from distill.pseudo_labels import PseudoLabeler, iter_batches


def test_fisher_ratio_equals_the_direct_formula() -> None:
    g = torch.Generator().manual_seed(0)
    vectors = torch.randn(50, 2, 6, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 4, (50,), generator=g)
    acc = ClassSeparation(num_classes=4, dim=6, groups=2)
    acc.add(vectors[:20], labels[:20])
    acc.add(vectors[20:], labels[20:])
    for k in range(2):
        v = vectors[:, k]
        mu = v.mean(0)
        total = ((v - mu) ** 2).sum()
        between = sum(
            (labels == c).sum() * ((v[labels == c].mean(0) - mu) ** 2).sum()
            for c in labels.unique()
        )
        assert acc.ratio()[k].item() == pytest.approx((between / total).item(), rel=1e-9)


def _scenes(n: int = 60, grid: int = 4, dim: int = 8):
    """Single-label scenes whose object patches carry a class code, background only noise."""
    g = torch.Generator().manual_seed(1)
    codes = F.normalize(torch.randn(4, dim, generator=g), dim=-1) * 3
    tokens = torch.randn(n, grid, grid, dim, generator=g)
    objects = torch.zeros(n, grid, grid)
    labels = []
    for i in range(n):
        c = 1 + i % 3
        r, q = torch.randint(0, grid - 1, (2,), generator=g).tolist()
        objects[i, r : r + 2, q : q + 2] = 1
        tokens[i][objects[i].bool()] += codes[c]
        labels.append([c])
    noise = 0.1 * torch.rand(n, 3, grid, grid, generator=g)
    # head 0 lights the object, head 1 the background, head 2 the object again
    heads = torch.stack([objects, 1 - objects, objects], dim=1) + noise
    return heads, tokens, labels


def test_heads_that_light_the_background_are_flipped() -> None:
    heads, tokens, labels = _scenes()
    acc = HeadPolarity(num_classes=4)
    acc.add(heads[:30], tokens[:30], labels[:30])
    acc.add(heads[30:], tokens[30:], labels[30:])
    assert acc.images == 60
    assert acc.signs().tolist() == [1.0, -1.0, 1.0]


def test_only_single_label_images_count() -> None:
    heads, tokens, labels = _scenes(n=6)
    acc = HeadPolarity(num_classes=4)
    acc.add(heads, tokens, [[1, 2]] * 6)
    assert acc.images == 0
    with pytest.raises(ValueError, match="exactly one image-level label"):
        acc.signs()


def test_apply_signs_mirrors_within_each_maps_range() -> None:
    heads = torch.tensor([[[[0.2, 0.5], [0.9, 0.2]], [[0.1, 0.3], [0.4, 0.7]]]])
    out = apply_signs(heads, torch.tensor([1.0, -1.0]))
    assert torch.equal(out[0, 0], heads[0, 0])
    assert torch.allclose(out[0, 1], torch.tensor([[0.7, 0.5], [0.4, 0.1]]))


def _labeler(tiny_export, fashion_scenes_root, mode: str, *extra: str):

    cfg = load_config(
        "distill",
        "fashion_tiny",
        [
            f"backbone={tiny_export}",
            f"data.root={fashion_scenes_root}",
            f"mask.head_polarity={mode}",
            *extra,
        ],
    )
    model, _ = load_backbone(tiny_export)
    return PseudoLabeler(model, cfg, torch.device("cpu"))


def test_the_labeler_fits_signs_and_applies_them_to_every_batch(
    tiny_export, fashion_scenes_root
) -> None:

    ds = VOCSegmentation(fashion_scenes_root, "train")
    labeler = _labeler(tiny_export, fashion_scenes_root, "labels", "mask.token_probe=false")
    labeler.fit(iter_batches(ds, range(40), 16), ds.num_classes)
    signs = labeler.head_signs
    assert signs is not None and signs.shape == (4,) and set(signs.tolist()) <= {1.0, -1.0}

    batch = next(iter_batches(ds, range(8), 8))
    raw = extract_attention(labeler.model, batch.images, "cosine", [-1])
    att = labeler.attend(batch.images)
    assert torch.allclose(att.heads, apply_signs(raw.heads, signs))
    assert torch.allclose(att.saliency, att.heads.mean(dim=1))


def test_an_unknown_polarity_mode_is_named(tiny_export, fashion_scenes_root) -> None:

    ds = VOCSegmentation(fashion_scenes_root, "train")
    labeler = _labeler(tiny_export, fashion_scenes_root, "border")
    with pytest.raises(
        ConfigError, match=r"mask.head_polarity must be one of \('labels', 'none'\)"
    ):
        labeler.fit(iter_batches(ds, range(8), 8), ds.num_classes)


def test_flat_maps_split_into_equal_halves() -> None:
    heads, tokens, labels = _scenes(n=12)
    acc = HeadPolarity(num_classes=4)
    acc.add(torch.ones_like(heads), tokens, labels)
    # Every image counts in both halves: 12 pooled vectors each, none of them empty.
    assert acc.bright.class_counts.sum(1).tolist() == [12.0] * 3
    assert acc.dark.class_counts.sum(1).tolist() == [12.0] * 3
    assert (acc.dark.sq_norms > 11.99).all()  # every pooled vector is a unit vector


def test_refitting_without_polarity_clears_the_signs(tiny_export, fashion_scenes_root) -> None:
    ds = VOCSegmentation(fashion_scenes_root, "train")
    labeler = _labeler(tiny_export, fashion_scenes_root, "labels")
    labeler.fit(iter_batches(ds, range(40), 16), ds.num_classes)
    assert labeler.head_signs is not None
    labeler.cfg.mask.head_polarity = "none"
    labeler.fit(iter_batches(ds, range(40), 16), ds.num_classes)
    assert labeler.head_signs is None
    batch = next(iter_batches(ds, range(4), 4))
    raw = extract_attention(labeler.model, batch.images, "cosine", [-1])
    assert torch.equal(labeler.attend(batch.images).heads, raw.heads)
