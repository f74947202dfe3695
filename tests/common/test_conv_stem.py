"""The convolutional stem: structure, token grid, locality, and the export round trip."""

import json

import pytest
import torch
from torch import nn

from common.backbone import backbone_kwargs, build_backbone, export_backbone, load_backbone
from common.checkpoint import CheckpointError
from common.conv_stem import conv_stem_layers


def conv_kwargs(**kw):
    return backbone_kwargs("custom", 32, 8, stem="conv", embed_dim=48, depth=2, num_heads=3, **kw)


def test_stem_halves_resolution_per_conv_and_doubles_channels_up_to_embed_dim():
    stem = conv_stem_layers(3, 64, 16)
    convs = [m for m in stem if isinstance(m, nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size, c.stride) for c in convs] == [
        (8, (3, 3), (2, 2)),
        (16, (3, 3), (2, 2)),
        (32, (3, 3), (2, 2)),
        (64, (3, 3), (2, 2)),
        (64, (1, 1), (1, 1)),
    ]
    assert sum(isinstance(m, nn.BatchNorm2d) for m in stem) == 4
    assert stem(torch.randn(2, 3, 64, 48)).shape == (2, 64, 4, 3)


@pytest.mark.parametrize("size", [32, 16, 8])
def test_token_grid_matches_the_patch_stem(size):
    conv = build_backbone(conv_kwargs()).eval()
    patch = build_backbone(backbone_kwargs("custom", 32, 8, embed_dim=48, depth=2, num_heads=3))
    x = torch.randn(2, 3, size, size)
    assert conv.forward_features(x).shape == patch.forward_features(x).shape


def test_a_token_does_not_see_pixels_two_patches_away():
    # Receptive field of three 3x3 stride-2 convs: 15 px, i.e. its patch plus a border.
    stem = build_backbone(conv_kwargs()).patch_embed.eval()
    x = torch.randn(1, 3, 32, 32)
    y = x.clone()
    y[..., 24:, 24:] += 5.0  # the bottom-right patch only
    with torch.no_grad():
        a, b = stem(x), stem(y)  # [1, 4, 4, C] (NHWC grid)
    changed = (a - b).abs().amax(dim=-1)[0] > 1e-6
    assert changed[3, 3]
    assert not changed[:2].any() and not changed[:, :2].any()


def test_non_power_of_two_patch_is_refused_at_config_time():
    with pytest.raises(ValueError, match="power-of-two patch size"):
        backbone_kwargs("custom", 42, 14, stem="conv", embed_dim=48, depth=2, num_heads=3)
    with pytest.raises(ValueError, match="unknown model.stem 'cnn'"):
        backbone_kwargs("custom", 32, 8, stem="cnn", embed_dim=48, depth=2, num_heads=3)


def test_export_keeps_the_stem_and_its_batch_norm_statistics(tmp_path):
    model = build_backbone(conv_kwargs())
    model.train()
    with torch.no_grad():
        model.forward_features(torch.randn(8, 3, 32, 32) * 3 + 1)  # moves the running stats
    model.eval()
    export_backbone(model, conv_kwargs(), tmp_path)
    assert json.loads((tmp_path / "backbone.json").read_text())["timm_kwargs"]["embed_layer"] == (
        "conv_stem"
    )
    loaded, _ = load_backbone(tmp_path)
    assert loaded.patch_embed.proj[1].running_mean.abs().sum() > 0
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model.forward_features(x), loaded.forward_features(x))


def test_unknown_embed_layer_in_an_export_is_a_clear_error(tmp_path):
    export_backbone(build_backbone(conv_kwargs()), conv_kwargs(), tmp_path)
    info = json.loads((tmp_path / "backbone.json").read_text())
    info["timm_kwargs"]["embed_layer"] = "hybrid_resnet"
    (tmp_path / "backbone.json").write_text(json.dumps(info))
    with pytest.raises(CheckpointError, match="unknown embed_layer 'hybrid_resnet'"):
        load_backbone(tmp_path)
