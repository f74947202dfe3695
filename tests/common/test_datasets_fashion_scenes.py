"""FashionScenes generator: determinism, masks agree with labels, train/test separation."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from common.datasets.fashion_mnist import load_fashion_mnist
from common.datasets.fashion_scenes import ensure_fashion_scenes, generate_fashion_scenes, main
from common.datasets.palette import IGNORE_INDEX, read_mask
from common.datasets.scene_render import SceneParams


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_same_seed_same_bytes_whatever_the_workers(tmp_path: Path) -> None:
    kw = {"n_train": 30, "n_test": 10, "progress": False}
    one = _digest(generate_fashion_scenes(tmp_path / "a", seed=3, workers=1, **kw))
    two = _digest(generate_fashion_scenes(tmp_path / "b", seed=3, workers=2, **kw))
    other = _digest(generate_fashion_scenes(tmp_path / "c", seed=4, workers=1, **kw))
    assert len(one) == 2 * 40 + 4
    assert one == two
    images = [k for k in one if k.startswith("JPEGImages")]
    assert sum(one[k] != other[k] for k in images) == len(images)


def test_masks_agree_with_labels(fashion_scenes_root: Path) -> None:
    meta = json.loads((fashion_scenes_root / "meta.json").read_text())
    min_visible = SceneParams(
        **{**meta["params"], "count_probs": tuple(meta["params"]["count_probs"])}
    ).min_visible
    assert len(meta["labels"]) == 180
    for name, labels in meta["labels"].items():
        mask = read_mask(fashion_scenes_root / "SegmentationClassAug" / f"{name}.png")
        assert mask.shape == (64, 64)
        values = set(np.unique(mask).tolist()) - {0, IGNORE_INDEX}
        assert sorted(values) == labels, name
        for cls in labels:
            assert (mask == cls).sum() >= min_visible


def test_scene_mix_has_empty_single_and_multi_item_scenes(fashion_scenes_root: Path) -> None:
    meta = json.loads((fashion_scenes_root / "meta.json").read_text())
    counts = np.bincount([len(v) for v in meta["labels"].values()], minlength=4)
    assert counts[0] >= 1
    assert 0.15 <= counts[1] / counts.sum() <= 0.45
    assert counts[2] + counts[3] > counts[1]
    seen = {c for labels in meta["labels"].values() for c in labels}
    assert seen == set(range(1, 11))


def test_train_scenes_use_train_items_and_test_scenes_test_items(
    fashion_scenes_root: Path,
) -> None:
    meta = json.loads((fashion_scenes_root / "meta.json").read_text())
    _, train_labels = load_fashion_mnist("train")
    _, test_labels = load_fashion_mnist("test")
    for name, items in meta["items"].items():
        split_labels = train_labels if name.startswith("train_") else test_labels
        # Every drawn item's class is among the scene's classes or was hidden (ignored).
        classes = {int(split_labels[i]) + 1 for i in items}
        assert set(meta["labels"][name]) <= classes
    train_list = (fashion_scenes_root / "ImageSets/Segmentation/train.txt").read_text().split()
    val_list = (fashion_scenes_root / "ImageSets/Segmentation/val.txt").read_text().split()
    assert all(i.startswith("train_") for i in train_list) and len(train_list) == 120
    assert all(i.startswith("test_") for i in val_list) and len(val_list) == 60


def test_ensure_generates_once_then_checks_settings(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "fs"
    with caplog.at_level(logging.INFO):
        ensure_fashion_scenes(root, n_train=12, n_test=4, workers=1, progress=False)
    assert "generating" in caplog.text
    stamp = (root / "meta.json").stat().st_mtime_ns
    assert ensure_fashion_scenes(root, n_train=12, n_test=4) == root
    assert (root / "meta.json").stat().st_mtime_ns == stamp
    with pytest.raises(ValueError, match="different settings.*delete the folder"):
        ensure_fashion_scenes(root, n_train=12, n_test=4, seed=1)


def test_cli_writes_the_set(tmp_path: Path) -> None:
    args = ["--out", str(tmp_path / "cli"), "--train", "6", "--test", "3", "--workers", "1"]
    assert main([*args, "--scale-min", "0.4", "--scale-max", "0.5"]) == 0
    meta = json.loads((tmp_path / "cli" / "meta.json").read_text())
    assert meta["counts"] == {"train": 6, "test": 3}
    assert (meta["params"]["scale_min"], meta["params"]["scale_max"]) == (0.4, 0.5)
    classes = (tmp_path / "cli" / "classes.txt").read_text().splitlines()
    assert classes[0] == "background" and len(classes) == 11


def test_background_max_darkens_only_the_background(tmp_path: Path) -> None:
    kw = {"n_train": 20, "n_test": 0, "workers": 1, "progress": False}
    muted = generate_fashion_scenes(tmp_path / "muted", **kw)
    args = ["--out", str(tmp_path / "bright"), "--train", "20", "--test", "0", "--workers", "1"]
    assert main([*args, "--background-max", "0.6"]) == 0

    def background_mean(root: Path) -> float:
        values = []
        for path in sorted((root / "SegmentationClassAug").glob("*.png")):
            image = np.asarray(Image.open(root / "JPEGImages" / f"{path.stem}.jpg"), float)
            values.append(image[read_mask(path) == 0].mean())
        return float(np.mean(values))

    # Colours drawn in [0.05, 0.12] by default instead of [0.05, 0.6]: mean ~22 vs ~83 of 255.
    assert background_mean(muted) < 35 < 70 < background_mean(tmp_path / "bright")
    bright_meta = json.loads((tmp_path / "bright" / "meta.json").read_text())
    assert bright_meta["params"]["background_max"] == 0.6


def test_sets_written_before_a_setting_existed_keep_its_old_value(tmp_path: Path) -> None:
    old = {"background_max": 0.6, "background": "texture"}
    root = ensure_fashion_scenes(
        tmp_path / "old", n_train=4, n_test=2, workers=1, progress=False, **old
    )
    meta = json.loads((root / "meta.json").read_text())
    del meta["params"]["background_max"], meta["params"]["background"]
    (root / "meta.json").write_text(json.dumps(meta))
    assert ensure_fashion_scenes(root, n_train=4, n_test=2, **old) == root
    # The defaults changed since (muted backgrounds): the old set is not silently reused.
    with pytest.raises(ValueError, match="background_max"):
        ensure_fashion_scenes(root, n_train=4, n_test=2)


def test_bad_settings_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="scale_min"):
        generate_fashion_scenes(tmp_path, n_train=2, n_test=0, scale_min=0.9, scale_max=0.5)
    with pytest.raises(ValueError, match="workers"):
        generate_fashion_scenes(tmp_path, n_train=2, n_test=0, workers=0)
    with pytest.raises(ValueError, match=r"background_max must be in \(0.05, 1\]"):
        generate_fashion_scenes(tmp_path, n_train=2, n_test=0, background_max=0.01)


def test_unknown_setting_is_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"unknown FashionScenes setting\(s\) \['scale'\]"):
        ensure_fashion_scenes(tmp_path / "x", n_train=2, n_test=0, scale=0.5)
    assert not (tmp_path / "x" / "meta.json").exists()


def test_regenerating_replaces_the_old_set_but_never_foreign_files(tmp_path: Path) -> None:
    root = tmp_path / "fs"
    generate_fashion_scenes(root, n_train=5, n_test=2, workers=1, progress=False)
    generate_fashion_scenes(root, n_train=3, n_test=1, workers=1, progress=False)
    assert len(list((root / "JPEGImages").iterdir())) == 4
    assert len(list((root / "SegmentationClassAug").iterdir())) == 4
    (root / "holiday.jpg").write_bytes(b"mine")
    with pytest.raises(ValueError, match=r"holds files it did not write \(\['holiday.jpg'\]\)"):
        generate_fashion_scenes(root, n_train=3, n_test=1, workers=1, progress=False)
    assert (root / "meta.json").is_file()


def test_background_pattern_names_the_background_each_scene_gets() -> None:
    from common.datasets.fashion_scenes import scene_rng
    from common.datasets.scene_render import _background, background_pattern

    errors, kinds = [], []
    for index in range(60):
        pattern = background_pattern(scene_rng(0, "train", index))
        kinds.append(pattern.kind)
        if pattern.kind != "stripes":
            continue
        image = _background(scene_rng(0, "train", index), 64, 0.6)
        # The dominant gradient direction (structure tensor) is across the stripes.
        gy, gx = np.gradient(image, axis=(0, 1))
        jxx, jyy, jxy = (gx * gx).sum(), (gy * gy).sum(), (gx * gy).sum()
        measured = 0.5 * np.arctan2(2 * jxy, jxx - jyy) % np.pi
        diff = abs(measured - pattern.angle)
        errors.append(min(diff, np.pi - diff))
    assert 20 < kinds.count("stripes") < 40
    assert np.median(errors) < 0.05 and np.mean(np.asarray(errors) < 0.15) > 0.9


def test_mosaic_background_is_cells_of_random_colours() -> None:
    from common.datasets.fashion_scenes import scene_background, scene_rng
    from common.datasets.scene_render import render_scene

    params = SceneParams(count_probs=(1.0,), background="mosaic")  # no items: background only
    empty = np.zeros((0, 28, 28), np.uint8)
    for index in range(6):
        image = render_scene(scene_rng(0, "train", index), empty, [], params).image / 255.0
        cell = next(c for c in (8, 4) if _cells_are_flat(image, c))
        blocks = image.reshape(64 // cell, cell, 64 // cell, cell, 3).mean(axis=(1, 3))
        # Neighbouring cells differ (random colours), values stay in the drawn range.
        assert np.abs(np.diff(blocks, axis=0)).mean() > 0.1
        assert blocks.max(axis=-1).min() > 0.15 and blocks.max() < 0.95
        assert scene_background(0, f"train_{index:06d}", "mosaic").kind == "mosaic"


def _cells_are_flat(image: np.ndarray, cell: int) -> bool:
    blocks = image.reshape(64 // cell, cell, 64 // cell, cell, 3)
    return float(blocks.std(axis=(1, 3)).mean()) < 0.06


def test_mosaic_settings_are_validated_and_recorded(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="background must be one of"):
        SceneParams(background="plaid").validate()
    with pytest.raises(ValueError, match="background_max applies to texture backgrounds only"):
        SceneParams(background="mosaic", background_max=0.2).validate()
    root = generate_fashion_scenes(
        tmp_path / "m", n_train=4, n_test=2, workers=1, progress=False, background="mosaic"
    )
    assert json.loads((root / "meta.json").read_text())["params"]["background"] == "mosaic"
    with pytest.raises(ValueError, match="background"):
        ensure_fashion_scenes(root, n_train=4, n_test=2)  # a texture set was asked for


def test_mosaic_sets_match_whatever_background_max_they_recorded(tmp_path: Path) -> None:
    root = ensure_fashion_scenes(
        tmp_path / "m", n_train=4, n_test=2, workers=1, progress=False, background="mosaic"
    )
    meta = json.loads((root / "meta.json").read_text())
    meta["params"]["background_max"] = 0.6  # what sets made before the default changed hold
    (root / "meta.json").write_text(json.dumps(meta))
    assert ensure_fashion_scenes(root, n_train=4, n_test=2, background="mosaic") == root


def test_a_recorded_setting_unknown_today_is_named(tmp_path: Path) -> None:
    root = ensure_fashion_scenes(tmp_path / "u", n_train=4, n_test=2, workers=1, progress=False)
    meta = json.loads((root / "meta.json").read_text())
    meta["params"]["blur"] = 1.0
    (root / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"'blur': \(1.0, None\)"):
        ensure_fashion_scenes(root, n_train=4, n_test=2)
