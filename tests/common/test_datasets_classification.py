"""Classification data: ImageFolder / CSV / VOC formats, split files, preprocessing, and one
clear line for each malformed folder."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from common.config import ConfigError
from common.datasets.classification import (
    detect_format,
    eval_transform,
    open_labelled,
    split_indices,
)
from common.datasets.errors import DatasetNotFoundError
from tests.fewshot.probe.imagenet_like import WNIDS, write_imagenet_like


@pytest.fixture(scope="module")
def inet(tmp_path_factory):
    return write_imagenet_like(tmp_path_factory.mktemp("inet"), 3, 2)


def _one_line_error(exc_info, *fragments: str) -> None:
    message = str(exc_info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message


def test_image_folder_classes_sorted_extensions_any_case_and_names(inet):
    train = open_labelled(inet, "train")
    assert train.fmt == "imagefolder" and train.classes == sorted(WNIDS)
    assert train.names == ["tench", "goldfish", "shark", "ray"]
    assert np.bincount(train.labels).tolist() == [3, 3, 3, 3]
    assert {p.suffix for p in train.paths} == {".JPEG", ".jpg", ".jpeg"}
    # Labels follow the folder each file lives in.
    assert all(
        train.classes[y] == p.parent.name for p, y in zip(train.paths, train.labels, strict=True)
    )
    val = open_labelled(inet, "val", classes=train.classes)
    assert len(val) == 8 and val.classes == train.classes


def test_csv_format_and_detection(inet, tmp_path):
    shutil.copytree(inet, tmp_path / "d")
    root = tmp_path / "d"
    rows = ["path,label"] + [f"train/{w}/{w}_1.jpg,{w[-3:]}" for w in WNIDS]
    (root / "train.csv").write_text("\n".join(rows) + "\n")
    assert detect_format(root, "train") == "csv"
    ds = open_labelled(root, "train")
    assert ds.classes == sorted(w[-3:] for w in WNIDS) and len(ds) == 4
    assert ds.paths[0].is_file() and ds.labels.tolist() == [2, 1, 3, 0]  # 764, 537, 850, 361
    (root / "val.csv").write_text("path,label\ntrain/n01440764/n01440764_1.jpg,zzz\n")
    with pytest.raises(DatasetNotFoundError) as err:
        open_labelled(root, "val", classes=ds.classes)
    _one_line_error(err, "1 label(s) not in the train split", "zzz")


def test_voc_single_object_scenes_are_one_format(fashion_scenes_root):
    ds = open_labelled(fashion_scenes_root, "train")
    assert ds.fmt == "voc" and len(ds) > 0 and ds.labels.min() >= 0
    assert len(ds.classes) == 10 and all(p.suffix == ".jpg" for p in ds.paths)


def test_split_files_by_name_or_class_path(inet, tmp_path):
    train = open_labelled(inet, "train")
    names = [train.paths[i].name for i in (0, 4, 9)]
    f = tmp_path / "1imgs_class.txt"
    f.write_text("\n".join([names[0], f"{train.paths[4].parent.name}/{names[1]}", names[2]]) + "\n")
    idx = split_indices(train, f)
    assert idx.tolist() == [0, 4, 9]
    assert train.labels[idx].tolist() == [0, 1, 3]
    f.write_text("\n".join(names + ["n01440764_999.JPEG", "n09999999_1.JPEG"]))
    with pytest.raises(DatasetNotFoundError) as err:
        split_indices(train, f)
    _one_line_error(err, "2 of 5 files named in", "n01440764_999.JPEG, n09999999_1.JPEG")


def test_bad_folders_are_one_line_each(inet, tmp_path):
    root = tmp_path / "d"
    shutil.copytree(inet, root)
    (root / "val" / "n99999999").mkdir()
    Image.new("RGB", (8, 8)).save(root / "val" / "n99999999" / "a.jpg")
    with pytest.raises(DatasetNotFoundError) as err:
        open_labelled(root, "val", classes=open_labelled(root, "train").classes)
    _one_line_error(err, "not in the train split", "n99999999")
    (root / "train" / "n00000000").mkdir()
    (root / "train" / "n00000000" / "notes.txt").write_text("x")
    with pytest.raises(DatasetNotFoundError) as err:
        open_labelled(root, "train")
    _one_line_error(err, "class folder", "n00000000 has no images")
    (tmp_path / "empty" / "train").mkdir(parents=True)
    with pytest.raises(DatasetNotFoundError) as err:
        open_labelled(tmp_path / "empty", "train")
    _one_line_error(err, "holds no class folders")
    with pytest.raises(DatasetNotFoundError) as err:
        open_labelled(tmp_path / "empty", "val")
    _one_line_error(err, "is not a labelled dataset")


def test_eval_transform_is_resize_short_side_then_centre_crop():
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (375, 500, 3), dtype=np.uint8))
    ours = eval_transform(256, 224, "bicubic")(image)
    ref = T.Compose([T.Resize(256, interpolation=3), T.CenterCrop(224), T.ToTensor()])(image)
    assert ours.shape == (3, 224, 224)
    # The same pixels (PIL resampling); only x / 255 and x * (1 / 255) round apart.
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-7)
    portrait = eval_transform(224, 224, "bilinear")(image.transpose(Image.Transpose.ROTATE_90))
    assert portrait.shape == (3, 224, 224)


def test_unknown_format_or_interpolation_is_a_config_error(inet):
    with pytest.raises(ConfigError, match="data format must be one of"):
        open_labelled(inet, "train", "folders")
    with pytest.raises(ConfigError, match="interpolation must be one of"):
        eval_transform(256, 224, "lanczos")


def test_your_folder_with_labels_csv_and_id_lists(tmp_path, caplog):
    photos = tmp_path / "photos"
    for i, rel in enumerate(["a/x1.jpg", "a/x2.png", "b/x3.jpg", "b/x4.jpg"]):
        (photos / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (20 + i, 16), (i * 40, 0, 0)).save(photos / rel)
    labels = tmp_path / "labels.csv"
    labels.write_text("image,labels\na/x1.jpg,cat\na/x2.png,dog;cat\nb/x3,dog\nx4.jpg,\n")
    (tmp_path / "train.txt").write_text("b/x3.jpg\na/x2\nx4.jpg\na/x1.jpg\n")
    train = open_labelled(photos, str(tmp_path / "train.txt"), "folder", labels=labels)
    # The list's order, images with one label only; the others counted in one line.
    assert [p.name for p in train.paths] == ["x3.jpg", "x1.jpg"]
    assert train.classes == ["cat", "dog"] and train.labels.tolist() == [1, 0]
    assert "1 of 4 images have several labels and 1 none" in caplog.text
    (photos / "val.txt").write_text("x1\n")  # a name resolves to ROOT/<name>.txt
    assert open_labelled(photos, "val", "folder", train.classes, labels).labels.tolist() == [0]

    with pytest.raises(ConfigError) as err:
        open_labelled(photos, "val", "folder")
    _one_line_error(err, "data.format=folder needs data.labels")
    with pytest.raises(DatasetNotFoundError) as err:
        open_labelled(photos, "test", "folder", labels=labels)
    _one_line_error(err, "split list", "test.txt does not exist", "data.test_split")
    (photos / "val.txt").write_text("x1\nc/x9.jpg\n")
    with pytest.raises(DatasetNotFoundError) as err:
        open_labelled(photos, "val", "folder", labels=labels)
    _one_line_error(err, "1 of 2 images named in", "c/x9.jpg")
    with pytest.raises(ConfigError) as err:
        open_labelled(photos, "train", "csv", labels=labels)
    _one_line_error(err, "data.labels is read with data.format=folder")
