"""The `cst` protocol's support tokens and head against CST's description."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fewshot.correlation import resized_support_tokens
from fewshot.head import CorrelationAttention, CorrelationTransformer
from fewshot.model import FSCSModel


def _bilinear_corners(grid: torch.Tensor, out: int) -> torch.Tensor:
    """[h, h, C] -> [out, out, C]: samples at i (h - 1) / (out - 1), bilinear by hand."""
    h = grid.shape[0]
    res = torch.zeros(out, out, grid.shape[-1], dtype=grid.dtype)
    for i in range(out):
        for j in range(out):
            y, x = i * (h - 1) / (out - 1), j * (h - 1) / (out - 1)
            y0, x0 = min(int(y), h - 2), min(int(x), h - 2)
            fy, fx = y - y0, x - x0
            res[i, j] = (
                (1 - fy) * (1 - fx) * grid[y0, x0]
                + (1 - fy) * fx * grid[y0, x0 + 1]
                + fy * (1 - fx) * grid[y0 + 1, x0]
                + fy * fx * grid[y0 + 1, x0 + 1]
            )
    return res


def test_resized_support_tokens_resize_with_corners_aligned_and_normalise_per_head():
    torch.manual_seed(0)
    tokens = torch.randn(1, 2, 1 + 25, 6, dtype=torch.float64)
    out = resized_support_tokens(tokens, 3, heads=2)
    assert out.shape == (1, 2, 1 + 9, 6)
    for layer in range(2):
        ref = _bilinear_corners(tokens[0, layer, 1:].reshape(5, 5, 6), 3).reshape(9, 6)
        ref = torch.cat([tokens[0, layer, :1], ref])
        ref = F.normalize(ref.reshape(10, 2, 3), dim=-1).reshape(10, 6)
        assert torch.allclose(out[0, layer], ref, atol=1e-12)


def test_cst_attention_masks_keys_only_with_unscaled_logits():
    torch.manual_seed(0)
    attn = CorrelationAttention(4, 16, kernel=2, heads=2, groups=4, cst=True).eval()
    x = torch.randn(1, 4, 3, 1 + 16)
    pixel_mask = torch.zeros(1, 12, 12)
    pixel_mask[:, :6, :6] = 1  # top-left corner of a 4x4 key grid (resized, corners aligned)
    out, carried = attn(x, pixel_mask)
    assert carried is pixel_mask  # CST resizes the pixel mask again in every block
    # Direct computation from the description.
    q, k, v = attn.qkv(x).chunk(3, dim=1)  # [1, 8, 3, 17] each
    keys = F.interpolate(pixel_mask[:, None], (4, 4), mode="bilinear", align_corners=True)
    visible = torch.cat([torch.ones(1), (keys.flatten() != 0).float()]).bool()
    qp = torch.cat(
        [q[..., :1], F.avg_pool2d(q[..., 1:].reshape(8, 3, 4, 4), 2).reshape(1, 8, 3, 4)], -1
    )
    heads = []
    for g in range(2):
        qg, kg, vg = (t[0, 4 * g : 4 * g + 4] for t in (qp, k, v))  # [4, 3, S]
        logits = torch.einsum("ctl,ctm->tlm", qg, kg)  # no 1/sqrt(d)
        logits[..., ~visible] = float("-inf")
        heads.append(torch.einsum("tlm,ctm->ctl", logits.softmax(-1), vg))
    agg = attn.agg(torch.cat(heads)[None])
    short = attn.shortcut(x)
    short = torch.cat(
        [short[..., :1], F.avg_pool2d(short[..., 1:].reshape(16, 3, 4, 4), 2).reshape(1, 16, 3, 4)],
        -1,
    )
    ref = attn.out_norm(agg + attn.shortcut_norm(short))
    assert torch.allclose(out, ref, atol=1e-5)
    # Masked positions still reach the output through the unmasked query pooling.
    x2 = x.clone()
    x2[..., 16] += 5.0  # the bottom-right key, masked
    assert not torch.allclose(attn(x2, pixel_mask)[0], out, atol=1e-4)


def test_cst_model_runs_on_any_patch_grid_and_matches_the_head_shapes():
    torch.manual_seed(0)
    model = FSCSModel(2, 3, 8, 40, (32, 128), (4, 3), 8, protocol="cst").eval()
    assert len(model.head.mix) == 2 and len(model.head.seg_head) + len(model.head.seg_out) == 7
    tokens = torch.randn(2, 2, 1 + 25, 12)
    presence, seg = model(tokens, tokens.flip(0), torch.rand(2, 40, 40) > 0.5)
    assert presence.shape == (2, 2) and seg.shape == (2, 2, 40, 40)
    ours = CorrelationTransformer(6, (32, 128), (4, 3), 8)
    assert len(ours.mix) == 3  # one conv-GN-ReLU layer
