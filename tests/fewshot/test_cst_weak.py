"""CST's weak setting (``supervision: cst_weak``): the on-the-fly query pseudo-mask against a
direct computation, a planted object, and no support mask reaching any model end to end."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from common.backbone import backbone_kwargs, build_backbone, export_backbone
from common.cli import stage_main
from fewshot import stage
from fewshot.cst_weak import CST_THRESHOLD, query_pseudo_masks, query_saliency
from fewshot.data import build_last_block_keys, build_pool, open_split
from fewshot.episodes import Episode
from fewshot.features import FrozenBackbone
from fewshot.model import FSCSModel, one_way_batch

CPU = torch.device("cpu")


def _bilinear_align_corners(grid: np.ndarray, size: int) -> np.ndarray:
    """[g, g] -> [size, size]: output pixel i samples the grid at i * (g - 1) / (size - 1)."""
    g = grid.shape[0]
    pos = np.arange(size) * (g - 1) / (size - 1)
    lo = np.minimum(np.floor(pos).astype(int), g - 2)
    t = pos - lo
    rows = grid[lo] * (1 - t)[:, None] + grid[lo + 1] * t[:, None]
    return rows[:, lo] * (1 - t)[None, :] + rows[:, lo + 1] * t[None, :]


def _reference_saliency(bb: FrozenBackbone, query: torch.Tensor, support: torch.Tensor, size):
    """From the description: the last block's own q and k (its normed input through its qkv
    projection), the support's cls query against each query patch key, cosine per head, head
    mean, bilinear (align_corners) to pixels, (x + 1) / 2."""
    model = bb.model

    def last_qkv(image: torch.Tensor) -> np.ndarray:
        x = model.norm_pre(model._pos_embed(model.patch_embed(bb.prepare(image[None]))))
        for blk in model.blocks[:-1]:
            x = blk(x)
        last = model.blocks[-1]
        qkv = last.attn.qkv(last.norm1(x))[0].double().numpy()  # [N, 3 * C]
        return qkv.reshape(qkv.shape[0], 3, bb.num_heads, -1)  # [N, q/k/v, heads, d]

    with torch.no_grad():
        cls_q = last_qkv(support)[0, 0]  # [heads, d]
        keys = last_qkv(query)[1:, 1]  # [P, heads, d]
    cos = (keys * cls_q).sum(-1) / (
        np.linalg.norm(keys, axis=-1) * np.linalg.norm(cls_q, axis=-1)
    )  # [P, heads]
    g = round(keys.shape[0] ** 0.5)
    grid = cos.mean(axis=1).reshape(g, g)
    return (_bilinear_align_corners(grid, size) + 1) / 2


def test_pseudo_mask_equals_a_direct_computation(fashion_scenes_root, tiny_export):
    bb = FrozenBackbone(tiny_export, CPU)
    ds = open_split(fashion_scenes_root, "train", 32, 6)
    images = torch.stack([ds[i]["image"] for i in range(6)])
    out = bb.last_block_qk(images)
    queries, supports = [0, 1, 2, 3], [4, 5, 0, 1]
    cls_q, keys = out["cls_query"][supports], out["patch_keys"][queries]
    sal = query_saliency(cls_q, keys, 32)
    present = torch.tensor([True, True, False, True])
    masks = query_pseudo_masks(cls_q, keys, present, 32)
    for n, (q, s) in enumerate(zip(queries, supports, strict=True)):
        ref = _reference_saliency(bb, images[q], images[s], 32)
        np.testing.assert_allclose(sal[n].double().numpy(), ref, atol=1e-6)
        ref_mask = (ref > CST_THRESHOLD) & bool(present[n])
        clear = np.abs(ref - CST_THRESHOLD) > 1e-6  # pixels the rounding cannot flip
        assert (masks[n].numpy() == ref_mask)[clear].all()
    assert not masks[2].any()  # the class is absent from this query: no foreground
    assert masks[[0, 1, 3]].any() and sal.std() > 1e-2  # maps that vary, masks not empty


def _planted_export(tmp_path) -> tuple[FrozenBackbone, torch.Tensor]:
    """A one-block ViT whose patch embedding keeps a patch's mean red and blue (in each
    head's slice) and whose attention q and k are the identity: a red patch's key points
    where the cls query does (cls token [1, -1, 0, 0] per head), a blue one's the other way."""
    kwargs = backbone_kwargs("custom", 64, 8, embed_dim=8, depth=1, num_heads=2)
    model = build_backbone(kwargs)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        for head in (0, 4):
            model.patch_embed.proj.weight[head, 0] = 1 / 64  # mean red of the 8x8 patch
            model.patch_embed.proj.weight[head + 1, 2] = 1 / 64  # mean blue
            model.cls_token[0, 0, head : head + 2] = torch.tensor([1.0, -1.0])
        for norm in (model.blocks[0].norm1, model.blocks[0].norm2, model.norm):
            norm.weight.fill_(1.0)
        model.blocks[0].attn.qkv.weight[:16] = torch.eye(8).repeat(2, 1)  # q = k = input
    meta = {"normalize": {"mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]}}
    bb = FrozenBackbone(export_backbone(model, kwargs, tmp_path / "planted", meta), CPU)
    objects = torch.zeros(3, 64, 64, dtype=torch.bool)  # patch-aligned rectangles
    objects[0, 16:40, 16:40] = True
    objects[1, 0:24, 40:64] = True
    objects[2, 40:64, 0:16] = True
    return bb, objects


def test_pseudo_mask_recovers_a_planted_object(tmp_path):
    bb, objects = _planted_export(tmp_path)
    red, blue = torch.tensor([1.0, 0, 0]), torch.tensor([0, 0, 1.0])
    images = torch.where(objects[:, None], red.view(1, 3, 1, 1), blue.view(1, 3, 1, 1))
    out = bb.last_block_qk(images)
    supports = torch.tensor([1, 2, 0])
    masks = query_pseudo_masks(
        out["cls_query"][supports], out["patch_keys"], torch.ones(3, dtype=torch.bool), 64
    )
    # Within one patch of the object: bilinear resizing of the 8x8 map widens it a little.
    near = torch.nn.functional.max_pool2d(objects[:, None].float(), 17, 1, 8)[:, 0] > 0
    for n in range(3):
        inter, union = (masks[n] & objects[n]).sum(), (masks[n] | objects[n]).sum()
        # align_corners stretches the map a little: an object edge may shift by a few pixels.
        assert inter / objects[n].sum() > 0.9 and inter / union > 0.7
        assert not masks[n][~near[n]].any()  # nothing a patch or more away from it
        assert (~near[n]).sum() > 1000  # and that leaves most of the image to check
    absent = query_pseudo_masks(
        out["cls_query"][supports], out["patch_keys"], torch.zeros(3, dtype=torch.bool), 64
    )
    assert not absent.any()  # a query without the class has no foreground


@pytest.fixture
def weak_pool(fashion_scenes_root, tiny_export, tmp_path):
    ds = open_split(fashion_scenes_root, "train", 32, 24)
    bb = FrozenBackbone(tiny_export, CPU)
    keys = build_last_block_keys(ds, bb, tmp_path, 8)
    pool = build_pool(ds, bb, [0, 1], tmp_path, None, 8)
    return replace(pool, masks=None, pseudo=keys), bb


def test_training_batch_has_no_support_mask_and_pseudo_mask_targets(weak_pool):
    pool, bb = weak_pool
    pairs = [(0, 1, pool.labels[1][0]), (2, 3, pool.labels[3][0]), (4, 5, pool.labels[5][0])]
    batch = one_way_batch(pool, pairs, CPU)
    assert batch["support_mask"] is None
    images = torch.stack([pool.image(i) for i in range(6)])
    out = bb.last_block_qk(images)  # per batch, not the cache the pool read
    present = torch.tensor([c in pool.labels[q] for q, _, c in pairs])
    want = query_pseudo_masks(
        out["cls_query"][[1, 3, 5]], out["patch_keys"][[0, 2, 4]], present, 32
    )
    assert torch.equal(batch["target"], want.long())
    assert torch.equal(batch["presence"], present.long())
    # The per-batch path (no cache) gives the same targets.
    per_batch = replace(pool, pseudo=replace(pool.pseudo, cls_query=None, patch_keys=None))
    assert torch.equal(one_way_batch(per_batch, pairs, CPU)["target"], batch["target"])


def test_validation_targets_are_each_episodes_pseudo_mask(weak_pool):
    pool, _ = weak_pool
    c = pool.labels[1][0]
    eps = [
        Episode(query=0, classes=(c,), supports=((1,),), presence=(c in pool.labels[0],)),
        Episode(query=0, classes=(c,), supports=((2,),), presence=(c in pool.labels[0],)),
    ]
    scored, targets = stage.scoring_targets(pool, eps)
    assert [e.query for e in scored] == [0, 1]
    present = torch.tensor([e.presence[0] for e in eps])
    want = pool.pseudo.query_masks(torch.tensor([0, 0]), torch.tensor([1, 2]), present, 32)
    assert torch.equal(targets, (want.long() * c).to(torch.uint8))


TINY = [
    "data.image_size=32",
    "data.val_fraction=0.3",
    "head.channels=[16, 32]",
    "head.pool_sizes=[2, 2]",
    "head.attn_heads=2",
    "train.max_steps=3",
    "train.batch_size=4",
    "train.eval_every=3",
    "episodes.val_episodes=6",
    "episodes.test_episodes=6",
    "eval.visualize=1",
    "threads=1",
    "supervision=cst_weak",
]


@pytest.mark.parametrize("protocol", ["ours", "cst"])
def test_cli_run_never_passes_a_support_mask(
    fashion_scenes_root, tiny_export, tmp_path, monkeypatch, protocol
):
    seen: list[tuple[bool, bool]] = []  # (training, support mask given) per forward
    forward = FSCSModel.forward

    def spy(self, query, support, support_mask):
        seen.append((self.training, support_mask is not None))
        return forward(self, query, support, support_mask)

    monkeypatch.setattr(FSCSModel, "forward", spy)
    argv = ["--output-dir", str(tmp_path / "run"), f"data.root={fashion_scenes_root}"]
    argv += [f"backbone={tiny_export}", f"protocol={protocol}", "way=2", *TINY]
    results = stage_main("fewshot", stage.run, "test", argv)
    assert results["setting"]["supervision"] == "cst_weak"
    assert results["setting"]["support_masks_at_test"] == "none"
    assert set(results["test"]["2way"]) == {"head", "random_head", "prototype"}
    assert {t for t, _ in seen} == {True, False}  # training and evaluation both ran
    assert not any(given for _, given in seen)
    assert (tmp_path / "run" / "figures" / "episodes_2way.png").is_file()


def test_pseudo_masks_given_with_cst_weak_are_unused(
    fashion_scenes_root, tiny_export, tmp_path, caplog
):
    argv = ["--output-dir", str(tmp_path / "run"), f"data.root={fashion_scenes_root}"]
    argv += [f"backbone={tiny_export}", f"pseudo_masks={tmp_path / 'nowhere'}", *TINY]
    argv += ["baselines.random_backbone=false", "baselines.prototype=false"]
    stage_main("fewshot", stage.run, "test", argv)
    assert "pseudo_masks=" in caplog.text and "unused" in caplog.text
