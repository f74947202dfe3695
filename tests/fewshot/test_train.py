"""A short FS-CS training lowers the loss; preemption + resume equals an uninterrupted run;
the feature cache is keyed by backbone and rebuilt for another one."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pytest
import torch

from common.config import load_config
from common.datasets.folds import fold_classes, train_classes
from common.preemption import Preempted, clear_stop, request_stop
from common.rundir import MetricsLogger
from fewshot.data import build_pool, open_split
from fewshot.episodes import EpisodeSampler
from fewshot.features import FrozenBackbone, cached
from fewshot.model import FSCSModel, loss_fn, one_way_batch
from fewshot.train import TrainSettings, train_head


@pytest.fixture(scope="module")
def pool(fashion_scenes_root, tiny_export, tmp_path_factory):
    ds = open_split(fashion_scenes_root, "train", 32, None)
    bb = FrozenBackbone(tiny_export, torch.device("cpu"))
    return build_pool(ds, bb, [0, 1], tmp_path_factory.mktemp("cache"), None, 64)


def _sampler(pool):
    return EpisodeSampler(
        pool.labels,
        train_classes("fashion_scenes", 0),
        way=1,
        shot=1,
        exclude=fold_classes("fashion_scenes", 0),
    )


def _model():
    torch.manual_seed(0)
    return FSCSModel(2, 3, 8, 32, (16, 32), (2, 2), 2)


def _settings(steps, eval_every=100):
    return TrainSettings(
        max_steps=steps,
        batch_size=8,
        lr=3e-3,
        weight_decay=0.0,
        cls_weight=0.1,
        seg_weight=1.0,
        fg_weight=1.0,
        eval_every=eval_every,
        ckpt_every=100,
        seed=0,
        constant_lr=False,
    )


def _fixed_loss(model, pool) -> float:
    eps = _sampler(pool).fixed(32)
    batch = one_way_batch(pool, [(e.query, e.supports[0][0], e.classes[0]) for e in eps], "cpu")
    model.eval()
    with torch.no_grad():
        presence, seg = model(batch["query"], batch["support"], batch["support_mask"])
        return float(loss_fn(presence, seg, batch, 0.1, 1.0)[0])


def test_short_training_lowers_the_loss(pool, tmp_path):
    model = _model()
    before = _fixed_loss(model, pool)
    info = train_head(
        model,
        pool,
        _sampler(pool),
        lambda m: 0.0,
        _settings(40),
        tmp_path / "ckpt",
        MetricsLogger(tmp_path / "m.jsonl"),
        torch.device("cpu"),
        "t",
    )
    assert info["steps"] == 40
    assert _fixed_loss(model, pool) < 0.8 * before
    assert (tmp_path / "ckpt" / "last.pt").is_file() and (tmp_path / "ckpt" / "best.pt").is_file()


def test_preempted_run_resumes_to_the_same_weights(pool, tmp_path):
    def run(model, ckpt, validate):
        return train_head(
            model,
            pool,
            _sampler(pool),
            validate,
            _settings(12, eval_every=4),
            ckpt,
            MetricsLogger(tmp_path / "m.jsonl"),
            torch.device("cpu"),
            "t",
        )

    straight = _model()
    run(straight, tmp_path / "a", lambda m: 0.0)

    def stop_once(m):
        request_stop("test")
        return 0.0

    interrupted = _model()
    try:
        with pytest.raises(Preempted) as exc:
            run(interrupted, tmp_path / "b", stop_once)
    finally:
        clear_stop()
    assert exc.value.step == 4
    resumed = _model()
    assert run(resumed, tmp_path / "b", lambda m: 0.0)["steps"] == 12
    resumed_state = resumed.state_dict()
    for name, a in straight.state_dict().items():
        torch.testing.assert_close(a, resumed_state[name], msg=name)


def test_feature_cache_is_rebuilt_for_another_backbone(tmp_path, caplog):
    calls = []

    def build(value):
        calls.append(value)
        return {"x": torch.full((2,), float(value))}

    record = {"kind": "demo"}
    first = cached(tmp_path, "aaaa", "f", record, lambda: build(1))
    again = cached(tmp_path, "aaaa", "f", record, lambda: build(2))
    assert calls == [1] and torch.equal(first["x"], again["x"])
    # A file of backbone "bbbb" copied into "aaaa"'s folder is not trusted.
    cached(tmp_path, "bbbb", "f", record, lambda: build(3))
    (tmp_path / "aaaa" / "f.pt").write_bytes((tmp_path / "bbbb" / "f.pt").read_bytes())
    with caplog.at_level(logging.WARNING):
        out = cached(tmp_path, "aaaa", "f", record, lambda: build(4))
    assert "another backbone" in caplog.text
    assert float(out["x"][0]) == 4.0 and calls == [1, 3, 4]
    # A torn file is rebuilt too.
    (tmp_path / "aaaa" / "f.pt").write_bytes(b"broken")
    assert float(cached(tmp_path, "aaaa", "f", record, lambda: build(5))["x"][0]) == 5.0


def test_pool_features_follow_the_backbone(
    fashion_scenes_root, tiny_export, other_export, tmp_path
):
    ds = open_split(fashion_scenes_root, "val", 32, 10)
    cpu = torch.device("cpu")
    a = build_pool(ds, FrozenBackbone(tiny_export, cpu), [1], tmp_path, None, 8)
    b = build_pool(ds, FrozenBackbone(other_export, cpu), [1], tmp_path, None, 8)
    assert not torch.equal(a.tokens, b.tokens)
    assert len(list(tmp_path.iterdir())) == 2  # one cache folder per backbone hash
    assert a.tokens.shape == (10, 1, 17, 48) and a.masks.shape == (10, 32, 32)
    head_norms = a.tokens.float().reshape(10, 1, 17, 3, 16).norm(dim=-1)
    np.testing.assert_allclose(head_norms.numpy(), 1.0, atol=2e-3)


def test_train_settings_take_every_value_from_the_yaml():
    fields = dataclasses.fields(TrainSettings)
    assert all(f.default is dataclasses.MISSING for f in fields)
    train = load_config("fewshot").train
    # The top-level seed; constant_lr follows `protocol`.
    assert {f.name for f in fields} - set(train) == {"seed", "constant_lr"}
