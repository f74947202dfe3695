"""The published protocols on an ImageNet-layout folder: DINO's k-NN against a reference
written here from its description, MSN's and DINOv2's solvers against the float64 optimum
of their objectives, the presets end to end, and bad input as one line."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from scipy.optimize import minimize
from torchvision import transforms as T

from common.backbone import backbone_kwargs, build_backbone, export_backbone, load_backbone
from common.cli import stage_main
from common.datasets.classification import spread_indices
from fewshot.features import FrozenBackbone
from fewshot.probe.cls_features import cls_tokens
from fewshot.probe.lowshot_logreg import (
    center_normalize,
    dinov2_c_values,
    dinov2_sweep,
    holdout_split,
    msn_fit,
    msn_objective,
)
from fewshot.probe.stage import run
from tests.fewshot.probe.imagenet_like import write_imagenet_like


@pytest.fixture(scope="module")
def inet(tmp_path_factory):
    return write_imagenet_like(tmp_path_factory.mktemp("inet"), 6, 3)


@pytest.fixture(scope="module")
def vit16(tmp_path_factory):
    """A random ViT with patch 16 (224 px crops tile into 14 x 14 patches)."""
    torch.manual_seed(0)
    kwargs = backbone_kwargs("custom", 32, 16, embed_dim=48, depth=2, num_heads=3)
    return export_backbone(build_backbone(kwargs), kwargs, tmp_path_factory.mktemp("vit16"))


def _probe(tmp_path, name: str, *overrides: str, out_name: str | None = None) -> dict:
    out = tmp_path / (out_name or name)
    argv = ["--config", name, "--output-dir", str(out), "threads=1", *overrides]
    results = stage_main("fewshot/probe", run, "test", argv)
    return {"results": results, "pred": dict(np.load(out / "predictions.npz")), "dir": out}


def _reference_dino_knn(root, export, ks, temperature=0.07) -> dict[int, np.ndarray]:
    """DINO's k-NN as its description reads: sorted class folders, Resize(256, bicubic) +
    CenterCrop(224) + ImageNet normalisation, cls after the final norm, L2, cosine top-k,
    votes exp(cos / T) summed per class, the largest wins."""
    model, _ = load_backbone(export)
    tf = T.Compose(
        [
            T.Resize(256, interpolation=T.InterpolationMode.BICUBIC),
            T.CenterCrop(224),
            T.ToTensor(),
            T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
        ]
    )

    def features(split):
        classes = sorted(os.listdir(root / split))
        xs, ys = [], []
        for c, name in enumerate(classes):
            for f in sorted(os.listdir(root / split / name)):
                xs.append(tf(Image.open(root / split / name / f).convert("RGB")))
                ys.append(c)
        with torch.no_grad():
            cls = model.forward_features(torch.stack(xs))[:, 0]
        return F.normalize(cls, dim=1), torch.tensor(ys)

    bank, bank_y = features("train")
    queries, _ = features("val")
    out = {}
    for k in ks:
        sims, idx = (queries @ bank.T).topk(min(k, len(bank)), dim=1)
        one_hot = F.one_hot(bank_y[idx], 4).float()
        votes = (one_hot * (sims / temperature).exp()[..., None]).sum(dim=1)
        out[k] = votes.argmax(dim=1).numpy()
    return out


def test_dino_knn_matches_reference_per_image(tmp_path, inet, vit16):
    got = _probe(tmp_path, "dino_knn", f"backbone={vit16}", f"data.root={inet}")
    ref = _reference_dino_knn(inet, vit16, [10, 20, 100, 200])
    val_y = np.repeat(np.arange(4), 3)
    for k in (10, 20, 100, 200):
        np.testing.assert_array_equal(got["pred"][f"all/k{k}"], ref[k])
        top1 = got["results"]["subsets"]["all"][f"k={k}"]["top1"]
        assert top1 == pytest.approx(float((ref[k] == val_y).mean()))
    # Not a degenerate check: the predictions differ between images.
    assert len(set(ref[10].tolist())) > 1
    # Same command again: the features come from the store, the same predictions.
    again = _probe(tmp_path, "dino_knn", f"backbone={vit16}", f"data.root={inet}")
    np.testing.assert_array_equal(again["pred"]["all/k20"], ref[20])


def test_msn_features_are_the_last_block_before_the_final_norm(vit16):
    bb = FrozenBackbone(vit16, torch.device("cpu"))
    x = torch.rand(2, 3, 224, 224)
    before, after = cls_tokens(bb, x, "before_norm"), cls_tokens(bb, x, "after_norm")
    torch.testing.assert_close(bb.model.norm(before), after)
    assert (before - after).abs().max() > 0.1
    z = center_normalize(before.numpy())
    np.testing.assert_allclose(z.mean(axis=1), 0, atol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(z, axis=1), 1, atol=1e-12)


def _planted(n: int, d: int, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % k
    return rng.normal(size=(n, d)) + 1.5 * np.eye(k, d)[y], y


def _optimum(x, y, k, lam_sum, intercept: bool) -> float:
    """min over (W, b) of sum_i CE + lam_sum/2 ||W||^2 in float64 (b unpenalised)."""
    n, d = x.shape
    onehot = np.eye(k)[y]

    def fun(theta):
        w = theta[: k * d].reshape(k, d)
        b = theta[k * d :] if intercept else 0.0
        z = x @ w.T + b
        z = z - z.max(axis=1, keepdims=True)
        p = np.exp(z)
        s = p.sum(axis=1, keepdims=True)
        loss = -(z - np.log(s))[np.arange(n), y].sum() + lam_sum / 2 * (w**2).sum()
        g = p / s - onehot
        grad_w = g.T @ x + lam_sum * w
        grads = [grad_w.ravel()] + ([g.sum(axis=0)] if intercept else [])
        return loss, np.concatenate(grads)

    size = k * d + (k if intercept else 0)
    res = minimize(
        fun,
        np.zeros(size),
        jac=True,
        method="L-BFGS-B",
        options={"gtol": 1e-13, "ftol": 1e-16, "maxiter": 50000, "maxcor": 50},
    )
    return float(res.fun)


@pytest.mark.parametrize("classes", [2, 8])
def test_msn_solver_reaches_the_float64_optimum(classes):
    x, y = _planted(400, 32, classes, seed=classes)
    lambd = 0.00025
    w, fitted = msn_fit(x, y, lambd, tol=1e-6, max_iter=5000)
    assert fitted.tolist() == list(range(classes)) and w.shape == (classes, 32)
    z = center_normalize(x)
    ours = msn_objective(w, z, y, lambd / len(x))
    best = _optimum(z, y, classes, lambd, intercept=False) / len(x)
    assert abs(ours - best) / best < 1e-4


def test_dinov2_sweep_reaches_the_optimum_and_holds_out_like_dinov2():
    torch.manual_seed(0)
    ref = torch.randperm(50)
    fit_idx, held = holdout_split(50, 0.1, seed=0)
    assert held.tolist() == ref[:5].tolist() and fit_idx.tolist() == ref[5:].tolist()
    grid = dinov2_c_values([-6, 5, 45])
    assert len(grid) == 45 and grid[0] == pytest.approx(1e-6) and grid[-1] == pytest.approx(1e5)
    x, y = _planted(300, 16, 5, seed=3)
    out = dinov2_sweep(x, y, dinov2_c_values([-2, 1, 4]), 0.1, max_iter=5000, tol=1e-10)
    assert out["best_C"] in dinov2_c_values([-2, 1, 4]).tolist() and len(out["heldout_top1"]) == 4
    model, c = out["model"], out["best_C"]
    w, b = model.coef_, model.intercept_
    z = x @ w.T + b
    z = z - z.max(axis=1, keepdims=True)
    ce = -(z - np.log(np.exp(z).sum(axis=1, keepdims=True)))[np.arange(len(y)), y].sum()
    ours = ce + (w**2).sum() / (2 * c)
    best = _optimum(x, y, 5, 1.0 / c, intercept=True)
    assert abs(ours - best) / best < 1e-4


def test_msn_and_dinov2_presets_on_split_files(tmp_path, inet, vit16):
    names = sorted(os.listdir(inet / "train" / "n01440764"))
    files = []
    for s in range(2):  # two "1 image per class" files, MSN-style
        f = tmp_path / f"subset{s}_1imgs_class.txt"
        f.write_text(
            "\n".join(sorted(os.listdir(d))[s] for d in sorted((inet / "train").iterdir()))
        )
        files.append(str(f))
    assert names[0] in (tmp_path / "subset0_1imgs_class.txt").read_text()
    msn = _probe(
        tmp_path,
        "msn_lowshot",
        f"backbone={vit16}",
        f"data.root={inet}",
        f"data.split_files=[{files[0]}, {files[1]}]",
    )
    subsets = msn["results"]["subsets"]
    val_y = np.repeat(np.arange(4), 3)
    accs = []
    for s in range(2):
        pred = msn["pred"][f"subset{s}_1imgs_class/top1"]
        accs.append(float((pred == val_y).mean()))
        assert subsets[f"subset{s}_1imgs_class"]["top1"] == pytest.approx(accs[-1])
        assert subsets[f"subset{s}_1imgs_class"]["train_images"] == 4
    summary = msn["results"]["summary"]["top1"]
    assert summary == {"mean": pytest.approx(np.mean(accs)), "std": pytest.approx(np.std(accs))}
    v2 = _probe(
        tmp_path,
        "dinov2_logreg",
        f"backbone={vit16}",
        f"data.root={inet}",
        "dinov2_logreg.c_log10=[-2, 0, 2]",
        "dinov2_logreg.max_iter=40",
        "dinov2_logreg.tol=1e-6",
        "data.max_train_images=20",
        "data.max_test_images=8",
    )
    res = v2["results"]["subsets"]["all"]
    assert res["best_C"] in dinov2_c_values([-2, 0, 2]).tolist()
    kept_y = val_y[spread_indices(12, 8)]  # 8 of 12 val images, spread over the classes
    assert sorted(set(kept_y.tolist())) == [0, 1, 2, 3]
    assert res["top1"] == pytest.approx(float((v2["pred"]["all/top1"] == kept_y).mean()))
    saved = json.loads((v2["dir"] / "results.json").read_text())
    assert saved["train_images"] == 20 and saved["test_images"] == 8 and saved["classes"] == 4
    assert saved["class_names"] == ["tench", "goldfish", "shark", "ray"]  # from labels.txt


def test_bad_input_is_one_line(tmp_path, inet, vit16, capsys):
    missing = tmp_path / "1percent.txt"
    missing.write_text("n01440764_0.JPEG\nn01440764_77.JPEG\n")
    cases = [
        (["--config", "msn_lowshot", f"data.root={inet}"], "msn_lowshot needs data.split_files"),
        (
            ["--config", "msn_lowshot", f"data.root={inet}", f"data.split_files=[{missing}]"],
            "1 of 2 files named in",
        ),
        (["--config", "dino_knn", f"data.root={tmp_path}"], "is not a labelled dataset"),
        (["--config", "dino_knn", f"data.root={inet}", "dino_knn.crop=200"], "patch size 16"),
        ([f"data.root={inet}"], "run a classification protocol: --config dino_knn"),
    ]
    for n, (argv, fragment) in enumerate(cases):
        argv = [*argv, f"backbone={vit16}", "--output-dir", str(tmp_path / f"bad{n}")]
        with pytest.raises(SystemExit) as exit_info:
            stage_main("fewshot/probe", run, "test", argv)
        stderr = capsys.readouterr().err
        err = [line for line in stderr.splitlines() if line.startswith("error:")]
        assert exit_info.value.code == 2 and len(err) == 1 and fragment in err[0], stderr
        assert "Traceback" not in stderr


def test_two_ranks_each_write_their_shards_then_rank0_probes(tmp_path, inet, vit16, monkeypatch):
    single = _probe(tmp_path, "dino_knn", f"backbone={vit16}", f"data.root={inet}")
    cache = tmp_path / "shared_cache"
    common = [
        f"backbone={vit16}",
        f"data.root={inet}",
        f"data.cache_dir={cache}",
        "store.shard_size=5",
    ]
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    argv = ["--config", "dino_knn", "--output-dir", str(tmp_path / "rank1"), *common]
    assert stage_main("fewshot/probe", run, "test", argv) is None
    stores = sorted(cache.iterdir())
    # Rank 1 wrote shards 1, 3 of train (24 images) and shard 1 of val (12 images).
    assert sorted(len(list((s / "done").iterdir())) for s in stores) == [1, 2]
    monkeypatch.setenv("RANK", "0")
    both = _probe(tmp_path, "dino_knn", *common, out_name="rank0")
    assert all(len(list((s / "done").iterdir())) in (3, 5) for s in stores)
    for k in (10, 20):
        np.testing.assert_array_equal(both["pred"][f"all/k{k}"], single["pred"][f"all/k{k}"])
