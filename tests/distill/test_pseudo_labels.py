"""PseudoLabeler on the tiny FashionScenes fixture: config checks, the frozen fit, the path."""

from dataclasses import FrozenInstanceError

import numpy as np
import pytest
import torch
from PIL import Image

from common.backbone import load_backbone
from common.config import ConfigError, load_config
from common.datasets.labelled_folder import LabelledFolder
from common.datasets.voc import VOCSegmentation
from distill.attention_maps import extract_attention, upsample
from distill.polarity import apply_signs
from distill.pseudo_labels import PseudoLabeler, iter_batches


def _labeler(tiny_export, root, *extra: str) -> PseudoLabeler:
    cfg = load_config(
        "distill", "fashion_tiny", [f"backbone={tiny_export}", f"data.root={root}", *extra]
    )
    model, _ = load_backbone(tiny_export)
    return PseudoLabeler(model, cfg, torch.device("cpu"))


def test_fit_returns_a_frozen_result_that_attend_applies(tiny_export, fashion_scenes_root):
    ds = VOCSegmentation(fashion_scenes_root, "train")
    labeler = _labeler(tiny_export, fashion_scenes_root)
    fit = labeler.fit(iter_batches(ds, range(40), 16), ds.num_classes)
    assert set(fit.head_signs.tolist()) <= {1.0, -1.0} and fit.head_signs.shape == (4,)
    assert fit.prototypes.shape == (ds.num_classes, 48) and fit.centre.shape == (48,)
    with pytest.raises(FrozenInstanceError):
        fit.probe = None
    batch = next(iter_batches(ds, range(8), 8))
    raw = extract_attention(labeler.model, batch.images, [-1])
    att = labeler.attend(batch.images, fit)
    assert torch.allclose(att.heads, apply_signs(raw.heads, fit.head_signs))
    assert torch.allclose(att.saliency, fit.probe(att.tokens))
    # The same labeler fitted again gives the same result: the fit holds no hidden state.
    again = labeler.fit(iter_batches(ds, range(40), 16), ds.num_classes)
    assert torch.equal(again.head_signs, fit.head_signs)
    assert torch.allclose(again.prototypes, fit.prototypes)


def test_the_cst_settings_use_the_heads_as_they_are(tiny_export, fashion_scenes_root):
    ds = VOCSegmentation(fashion_scenes_root, "train")
    labeler = _labeler(
        tiny_export,
        fashion_scenes_root,
        "mask.head_polarity=none",
        "mask.token_probe=false",
        "mask.rule=value",
        "refine.enabled=false",
    )
    fit = labeler.fit(iter_batches(ds, range(40), 16), ds.num_classes)
    assert fit.head_signs is None and fit.probe is None
    batch = next(iter_batches(ds, range(4), 4))
    raw = extract_attention(labeler.model, batch.images, [-1])
    att = labeler.attend(batch.images, fit)
    assert torch.equal(att.heads, raw.heads) and torch.allclose(att.saliency, raw.saliency)
    masks, fg = labeler.label(batch, fit, att)
    cut = upsample(raw.saliency, (64, 64)) >= 0.4  # (x+1)/2 head mean > 0.4, no refine
    assert torch.equal(fg.bool(), cut)
    single = [i for i, labs in enumerate(batch.labels) if len(set(labs)) == 1]
    for i in single:
        assert set(masks[i][cut[i]].tolist()) == {batch.labels[i][0]}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["mask.head_polarity=labels"], r"mask.head_polarity must be one of \('search', 'none'\)"),
        (["mask.token_probe=false"], "mask.head_polarity=search judges head signs on the"),
        (["mask.rule=mass"], r"mask.rule must be one of \('otsu', 'value'\)"),
    ],
)
def test_contradicting_mask_keys_are_refused_before_any_work(
    tiny_export, fashion_scenes_root, overrides, message
):
    with pytest.raises(ConfigError, match=message):
        _labeler(tiny_export, fashion_scenes_root, *overrides)


def test_removed_keys_are_unknown(tiny_export, fashion_scenes_root):
    for key in ("mask.border_polarity=true", "mask.probe_seed_share=0.2", "assign.rule=prototype"):
        with pytest.raises(ConfigError):
            _labeler(tiny_export, fashion_scenes_root, key)


def test_batches_of_mixed_sizes_run_in_same_size_runs_with_each_size(tmp_path):
    sizes = [(40, 30), (40, 30), (20, 50), (40, 30), (33, 33)]
    rows = ["image,labels"]
    for n, (h, w) in enumerate(sizes):
        Image.fromarray(np.full((h, w, 3), 40 * n, np.uint8)).save(tmp_path / f"im{n}.png")
        rows.append(f"im{n}.png,cat")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    ds = LabelledFolder(tmp_path, tmp_path / "labels.csv", short_side=16)
    batches = list(iter_batches(ds, range(len(ds)), batch_size=4))
    assert [b.ids for b in batches] == [["im0", "im1"], ["im2"], ["im3"], ["im4"]]
    assert all(len({tuple(i.shape) for i in b.images}) == 1 for b in batches)
    assert [s for b in batches for s in b.sizes] == sizes
