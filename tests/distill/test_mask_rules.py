import pytest
import torch

from distill.mask_rules import (
    apply_threshold,
    border_polarity,
    mass_threshold,
    otsu_threshold,
    threshold_for,
)


def test_value_rule_is_a_fixed_cut():
    maps = torch.tensor([[[0.1, 0.4], [0.5, 0.9]]])
    fg = apply_threshold(maps, threshold_for(maps, "value", value=0.4))
    assert fg.tolist() == [[[False, True], [True, True]]]


def test_mass_rule_keeps_the_share_of_the_total():
    # Values 5, 3, 1.5, 0.5 (sum 10): the top pixel holds 50%, the top two 80%, three 95%.
    maps = torch.tensor([[[5.0, 1.5], [3.0, 0.5]]])
    assert apply_threshold(maps, mass_threshold(maps, 0.45)).sum() == 1
    assert apply_threshold(maps, mass_threshold(maps, 0.75)).sum() == 2
    assert apply_threshold(maps, mass_threshold(maps, 0.85)).sum() == 3
    with pytest.raises(ValueError, match="mask.mass"):
        mass_threshold(maps, 1.5)


def test_otsu_splits_two_modes_per_image():
    g = torch.Generator().manual_seed(0)
    low = 0.2 + 0.02 * torch.randn(2, 8, 4, generator=g)
    a = torch.cat([low[0], 0.6 + 0.02 * torch.randn(8, 4, generator=g)], dim=1)
    b = torch.cat([low[1] + 0.5, 0.95 + 0.01 * torch.randn(8, 4, generator=g)], dim=1)
    maps = torch.stack([a, b])
    t = otsu_threshold(maps)
    assert 0.3 < t[0] < 0.5 and 0.8 < t[1] < 0.9  # per image, between its own modes
    fg = apply_threshold(maps, t)
    assert fg[:, :, 4:].all() and not fg[:, :, :4].any()


def test_unknown_rule_names_the_choices():
    with pytest.raises(ValueError, match="value, mass|'value', 'mass'"):
        threshold_for(torch.rand(1, 2, 2), "median")


def test_border_polarity_flips_maps_that_highlight_the_background():
    inverted = torch.ones(1, 8, 8)
    inverted[0, 3:5, 3:5] = 0.0  # a dark object in a bright frame
    normal = 1 - inverted
    maps = torch.cat([inverted, normal])
    t = torch.full((2,), 0.5)
    out = border_polarity(maps, t)
    assert torch.equal(out[0], normal[0]) and torch.equal(out[1], normal[0])
