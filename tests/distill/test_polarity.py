import pytest
import torch
import torch.nn.functional as F

from distill.polarity import ClassSeparation, HeadPolarity, apply_signs


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


def test_flat_maps_split_into_equal_halves() -> None:
    heads, tokens, labels = _scenes(n=12)
    acc = HeadPolarity(num_classes=4)
    acc.add(torch.ones_like(heads), tokens, labels)
    # Every image counts in both halves: 12 pooled vectors each, none of them empty.
    assert acc.bright.class_counts.sum(1).tolist() == [12.0] * 3
    assert acc.dark.class_counts.sum(1).tolist() == [12.0] * 3
    assert (acc.dark.sq_norms > 11.99).all()  # every pooled vector is a unit vector
