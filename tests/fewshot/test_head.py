"""The correlation-transformer head: shapes, mask-aware pooling, key masking, correlations."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fewshot.correlation import correlate, patch_mask, support_tokens
from fewshot.head import CorrelationTransformer, masked_pool
from fewshot.model import FSCSModel


def test_masked_pool_averages_foreground_only():
    x = torch.arange(1 + 16, dtype=torch.float32).view(1, 1, 1, 17)  # cls = 0, patches 1..16
    mask = torch.zeros(1, 16, dtype=torch.bool)
    mask[0, [0, 5]] = True  # patches 1 and 6: both in the top-left 2x2 window
    mask[0, 15] = True  # patch 16: bottom-right window
    out, pooled = masked_pool(x, mask, 2)
    assert out.shape == (1, 1, 1, 5)
    assert out[0, 0, 0].tolist() == [0.0, 3.5, 0.0, 0.0, 16.0]
    assert pooled[0].tolist() == [True, False, False, True]


def test_head_shapes():
    head = CorrelationTransformer(6, channels=(16, 32), pool_sizes=(2, 2), attn_heads=2)
    corr = torch.randn(3, 6, 4 * 5, 1 + 16)
    presence, seg = head(corr, torch.rand(3, 16) > 0.5, (4, 5))
    assert presence.shape == (3, 2)
    assert seg.shape == (3, 2, 8, 10)
    with pytest.raises(ValueError, match="support axis has 10 tokens"):
        head(torch.randn(1, 6, 20, 10), torch.ones(1, 9, dtype=torch.bool), (4, 5))


def test_masked_support_positions_do_not_change_the_output():
    torch.manual_seed(0)
    head = CorrelationTransformer(6, channels=(16, 32), pool_sizes=(2, 2), attn_heads=2).eval()
    corr = torch.randn(2, 6, 16, 17)
    mask = torch.rand(2, 16) > 0.5
    mask[1] = False  # an empty support mask: only the (never masked) cls token remains
    changed = corr.clone()
    img = changed[..., 1:]
    img[(~mask)[:, None, None, :].expand_as(img)] = 50.0
    p0, s0 = head(corr, mask, (4, 4))
    p1, s1 = head(changed, mask, (4, 4))
    torch.testing.assert_close(p0, p1)
    torch.testing.assert_close(s0, s1)
    assert torch.isfinite(s0).all()
    # Changing a visible position or the cls token does change it.
    visible = corr.clone()
    visible[0, :, :, 1 + int(mask[0].nonzero()[0])] += 5.0
    assert not torch.allclose(head(visible, mask, (4, 4))[1][0], s0[0])
    cls_changed = corr.clone()
    cls_changed[1, :, :, 0] += 5.0
    assert not torch.allclose(head(cls_changed, mask, (4, 4))[1][1], s0[1])


def test_correlation_is_per_layer_per_head_cosine():
    torch.manual_seed(0)
    b, layers, heads, c, grid = 2, 3, 2, 8, 4
    raw = torch.randn(b, layers, 1 + grid * grid, heads, c // heads)
    tokens = F.normalize(raw, dim=-1).reshape(b, layers, 1 + grid * grid, c)
    full = torch.ones(b, grid, grid, dtype=torch.bool)
    s_tok, s_mask = support_tokens(tokens, full, 2, heads)
    assert s_tok.shape == (b, layers, 5, c) and s_mask.all()
    corr = correlate(tokens, s_tok, heads)
    assert corr.shape == (b, layers * heads, 16, 5)
    # channel (layer 1, head 1), query patch 3, support cls token: a plain cosine.
    expect = F.cosine_similarity(raw[0, 1, 1 + 3, 1], raw[0, 1, 0, 1], dim=0)
    assert corr[0, 1 * heads + 1, 3, 0] == pytest.approx(float(expect), abs=1e-5)
    assert corr.abs().max() <= 1 + 1e-5


def test_patch_mask_marks_patches_with_any_foreground():
    mask = torch.zeros(1, 8, 8, dtype=torch.bool)
    mask[0, 5, 1] = True
    assert patch_mask(mask, 4)[0].tolist() == [[False, False], [True, False]]


def test_model_rejects_pool_sizes_that_do_not_divide_the_grid():
    with pytest.raises(ValueError, match="does not divide the 4x4 patch grid"):
        FSCSModel(2, 3, 8, 32, (16, 32), (3, 1), 2)
    model = FSCSModel(2, 3, 8, 64, (16, 32), (2, 2), 2)
    tokens = F.normalize(torch.randn(2, 2, 65, 48), dim=-1)
    presence, seg = model(tokens, tokens, torch.rand(2, 64, 64) > 0.5)
    assert presence.shape == (2, 2) and seg.shape == (2, 2, 64, 64)
