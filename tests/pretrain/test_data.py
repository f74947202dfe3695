import logging

from common.datasets.fashion_scenes import generate_fashion_scenes
from pretrain.data import load_unlabeled


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
