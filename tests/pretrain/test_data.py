import logging

import torch

from common.datasets.fashion_scenes import generate_fashion_scenes
from pretrain.data import MultiCropDataset, collate_multicrop, load_unlabeled, pad_images
from pretrain.device_augment import resized_crops


def test_scenes_made_with_other_settings_are_used_with_a_warning(tiny_config, tmp_path, caplog):
    old = generate_fashion_scenes(
        tmp_path / "old",
        n_train=4,
        n_test=2,
        workers=1,
        progress=False,
        scale_min=0.35,
        scale_max=0.75,
        background_max=0.6,
    )
    cfg = tiny_config("dino", f"data.root={old}")
    with caplog.at_level(logging.WARNING, logger="pretrain.data"):
        assert len(load_unlabeled(cfg.data)) == 4
    (record,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    for setting in ("scale_min", "scale_max", "background_max"):
        assert setting in record.getMessage()


def test_the_default_settings_give_no_warning(tiny_config, caplog):
    cfg = tiny_config("dino")  # the fixture: default settings, fewer scenes
    with caplog.at_level(logging.WARNING, logger="pretrain.data"):
        load_unlabeled(cfg.data)
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]


def test_images_of_different_sizes_crop_as_if_alone():
    # Padding repeats the last row and column, which is what interpolation reads at an
    # image's edge anyway: a box on the small image's border crops the same in the batch.
    small = torch.randint(0, 256, (3, 30, 40), dtype=torch.uint8)
    big = torch.randint(0, 256, (3, 50, 45), dtype=torch.uint8)
    batch = pad_images([small, big])
    assert batch.shape == (2, 3, 50, 45)
    assert torch.equal(batch[0, :, :30, :40], small) and torch.equal(batch[1], big)
    assert torch.equal(batch[0, :, 40:, :40], small[:, -1:].expand(3, 10, 40))
    box = torch.tensor([[12.0, 25.0, 18.0, 15.0]])  # touches the bottom-right corner
    alone = resized_crops(small[None].float(), torch.tensor([0]), box, 8)
    padded = resized_crops(batch.float(), torch.tensor([0]), box, 8)
    assert torch.equal(alone, padded)


def test_device_items_collate_view_major(tiny_config):
    cfg = tiny_config("maskcluster")
    ds = MultiCropDataset(load_unlabeled(cfg.data), cfg.crops, cfg.masking, 8, 0, on_device=True)
    items = [ds[(0, i)] for i in range(3)]
    batch = collate_multicrop(items)
    assert batch["images"].dtype == torch.uint8 and batch["images"].shape[0] == 3
    assert batch["masks"].shape[:2] == (2, 3)
    # Row v * B + b holds view v of sample b.
    assert batch["global_params"]["box"].shape == (2 * 3, 4)
    assert batch["local_params"]["box"][1 * 3 + 2].tolist() == list(items[2]["local_params"][1].box)
    assert batch["global_params"]["order"][0 * 3 + 1].tolist() == list(
        items[1]["global_params"][0].order
    )
