from dataclasses import FrozenInstanceError

import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

from distill.polarity import apply_signs
from distill.token_probe import (
    ProbeSeeds,
    fit_probe,
    probe_separation,
    search_signs,
    seed_labels,
)


def test_seeds_are_the_top_and_bottom_share_of_each_image() -> None:
    maps = torch.arange(20.0).reshape(2, 2, 5)
    maps[1] = maps[1].flip(-1)
    seeds = seed_labels(maps, 0.3)  # 3 of 10 patches each way
    for i in range(2):
        flat, s = maps[i].flatten(), seeds[i].flatten()
        assert (s == 1).sum() == 3 and (s == 0).sum() == 3 and (s == -1).sum() == 4
        assert flat[s == 1].min() > flat[s == -1].max() > flat[s == -1].min() > flat[s == 0].max()
    flat = seed_labels(torch.ones(1, 4, 4), 0.25)  # ties: still 4 seeds each way, by rank
    assert (flat == 1).sum() == 4 and (flat == 0).sum() == 4
    with pytest.raises(ValueError, match="seed share"):
        seed_labels(maps, 0.6)
    odd = seed_labels(torch.rand(1, 3, 5), 0.5)  # 15 patches: 7 each way, never overlapping
    assert (odd == 1).sum() == 7 and (odd == 0).sum() == 7


def _scenes(n: int = 64, grid: int = 8, dim: int = 16, seed: int = 0):
    """Tokens whose foreground carries one direction, and blurred, shifted seed maps."""
    g = torch.Generator().manual_seed(seed)
    fg = torch.zeros(n, grid, grid, dtype=torch.bool)
    for i in range(n):
        r, c = torch.randint(0, grid - 4, (2,), generator=g).tolist()
        fg[i, r : r + 4, c : c + 4] = True
    direction = F.normalize(torch.randn(dim, generator=g), dim=0)
    tokens = torch.randn(n, grid, grid, dim, generator=g) + 2.5 * fg[..., None] * direction
    # The seed map is a coarse, shifted blob: right on most foreground, wrong near its edges.
    blob = F.avg_pool2d(fg.float()[:, None], 5, stride=1, padding=2)[:, 0]
    maps = blob.roll(1, dims=-1) + 0.3 * torch.rand(n, grid, grid, generator=g)
    return tokens, maps, fg


def test_the_probe_is_sharper_than_the_maps_that_seed_it() -> None:
    """token_probe earns its place: its map beats the head mean it replaced."""
    tokens, maps, fg = _scenes()
    seeds = ProbeSeeds()
    seeds.add(tokens[:48], maps[:48])
    assert seeds.count == 48 * 2 * 19  # round(0.3 * 64) patches each way per image
    probe = seeds.fit()
    held = slice(48, None)
    auc_maps = roc_auc_score(fg[held].flatten(), maps[held].flatten())
    prob = probe(tokens[held])
    auc_probe = roc_auc_score(fg[held].flatten(), prob.flatten())
    assert prob.shape == fg[held].shape and prob.min() >= 0 and prob.max() <= 1
    assert auc_maps < 0.9 and auc_probe > max(0.92, auc_maps + 0.05)


def test_images_without_objects_add_background_seeds_only() -> None:
    tokens, maps, _ = _scenes(n=4)
    seeds = ProbeSeeds(0.25)
    seeds.add_background(tokens[:2])
    with pytest.raises(ValueError, match="LogisticRegression|class|solver"):
        seeds.fit()  # background alone: one class, nothing to separate
    seeds = ProbeSeeds(0.25)
    seeds.add(tokens[2:], maps[2:])
    seeds.add_background(tokens[:2])
    assert seeds.count == 2 * 32 + 2 * 64
    with pytest.raises(ValueError, match="no image was added"):
        ProbeSeeds().fit()


def _labelled_scenes(n: int = 60, grid: int = 8, dim: int = 16, interior: bool = False):
    """Single-label scenes: foreground tokens carry their class, heads 1 and 2 are inverted.

    ``interior`` keeps every object off the one-patch frame of the image.
    """
    g = torch.Generator().manual_seed(1)
    classes = F.normalize(torch.randn(4, dim, generator=g), dim=-1)
    background = F.normalize(torch.randn(dim, generator=g), dim=0)
    labels = [[1 + i % 3] for i in range(n)]
    fg = torch.zeros(n, grid, grid)
    for i in range(n):
        r, c = torch.randint(int(interior), grid - 4, (2,), generator=g).tolist()
        fg[i, r : r + 4, c : c + 4] = 1
    cls = torch.stack([classes[lab[0]] for lab in labels])[:, None, None]
    tokens = 2 * (fg[..., None] * cls + (1 - fg[..., None]) * background)
    tokens = tokens + 0.5 * torch.randn(n, grid, grid, dim, generator=g)
    blob = F.avg_pool2d(fg[:, None], 3, stride=1, padding=1)[:, 0]
    noise = 0.2 * torch.rand(3, n, grid, grid, generator=g)
    heads = torch.stack([blob + noise[0], 1 - blob + noise[1], 1 - blob + noise[2]], dim=1)
    return heads, tokens, labels, fg


def test_the_sign_search_beats_unsigned_heads() -> None:
    """head_polarity=search earns its place against `none` (the heads as they come)."""
    heads, tokens, labels, fg = _labelled_scenes()
    images = [(heads[i : i + 20], tokens[i : i + 20], labels[i : i + 20]) for i in (0, 20, 40)]
    # Two scenes known to be empty: background tokens only, every patch a background seed.
    bg = tokens[:2].clone()
    bg[:] = tokens[0][fg[0] == 0].mean(0)
    images.append((heads[:2], bg, [[], []]))
    unsigned = fit_probe(images, torch.ones(3))
    assert roc_auc_score(fg.flatten(), unsigned(tokens).flatten()) < 0.5  # seeds on the background
    found = search_signs(images, num_classes=4)
    assert found.single_label_images == 60
    assert found.start.tolist() == [1.0, -1.0, -1.0]
    assert found.signs.tolist() == [1.0, -1.0, -1.0]  # a flip that only ties is not taken
    signed = apply_signs(heads, found.signs).mean(dim=1)
    assert roc_auc_score(fg.flatten(), signed.flatten()) > 0.9
    assert roc_auc_score(fg.flatten(), found.probe(tokens).flatten()) > 0.95
    assert found.separation > probe_separation(unsigned, images, 4)
    with pytest.raises(FrozenInstanceError):
        found.probe.bias = 0.0  # a fitted probe is a value: nothing changes it afterwards


def test_the_sign_search_beats_per_head_signs_when_a_frame_outshines_the_object() -> None:
    """The search earns its place against the per-head signs it starts from."""
    heads, tokens, labels, fg = _labelled_scenes(interior=True)
    border = torch.ones(8, 8)
    border[1:-1, 1:-1] = 0
    g = torch.Generator().manual_seed(2)
    noise = 0.1 * torch.rand(3, *fg.shape, generator=g)
    # Head 0 lights the object. Heads 1 and 2 light it too, but the frame (as a conv stem's
    # padding can) brighter still: their bright half is the frame, the object sits in the
    # dark half, so each head alone is judged inverted.
    heads = torch.stack([fg, 0.6 * fg + border, 0.6 * fg + border], dim=1) + noise.transpose(0, 1)
    images = [(heads[i : i + 20], tokens[i : i + 20], labels[i : i + 20]) for i in (0, 20, 40)]
    found = search_signs(images, num_classes=4)
    assert found.start.tolist() == [1.0, -1.0, -1.0]
    per_head = fit_probe(images, found.start)
    assert roc_auc_score(fg.flatten(), per_head(tokens).flatten()) < 0.93
    assert (found.signs[1:] == 1).any()
    assert roc_auc_score(fg.flatten(), found.probe(tokens).flatten()) > 0.99
