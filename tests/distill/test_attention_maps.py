import pytest
import torch

from common.backbone import load_backbone
from common.checkpoint import CheckpointError
from distill.attention_maps import check_attention_access, extract_attention, upsample


def test_maps_per_head_and_layer_in_unit_range(tiny_export):
    model, _ = load_backbone(tiny_export)
    images = torch.rand(2, 3, 64, 64)
    out = extract_attention(model, images, layers=[-1])
    assert out.heads.shape == (2, 4, 8, 8) and out.tokens.shape == (2, 8, 8, 48)
    assert out.heads.min() >= 0 and out.heads.max() <= 1
    both = extract_attention(model, images, layers=[0, -1])
    assert both.heads.shape == (2, 8, 8, 8)
    assert torch.equal(both.heads[:, 4:], out.heads)  # the last block's heads come second
    assert torch.allclose(both.saliency, both.heads.mean(1))
    assert upsample(out.saliency, (64, 64)).shape == (2, 64, 64)


def test_cosine_matches_the_backbone_reference(tiny_export):
    from common.backbone import last_block_attention

    model, _ = load_backbone(tiny_export)
    images = torch.rand(1, 3, 64, 64)
    ref = last_block_attention(model, images)["cosine"]
    assert torch.allclose(extract_attention(model, images).heads, (ref + 1) / 2, atol=1e-5)


def test_backbone_without_attention_access_is_refused():
    with pytest.raises(CheckpointError, match="no access to its attention"):
        check_attention_access(torch.nn.Sequential(torch.nn.Conv2d(3, 8, 8, 8)))
    with pytest.raises(CheckpointError, match="no access to its attention"):
        extract_attention(torch.nn.Identity(), torch.rand(1, 3, 8, 8))
