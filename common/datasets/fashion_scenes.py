"""FashionScenes: Fashion-MNIST items composed into colour scenes, written in the VOC layout.

Layout under ``out``: ``JPEGImages/<id>.jpg``, ``SegmentationClassAug/<id>.png`` (palette),
``ImageSets/Segmentation/{train,val}.txt`` (val = the test scenes), ``classes.txt``
(background first) and ``meta.json`` (written last: its presence marks a complete set).
Each scene's RNG is derived from ``(seed, split, index)``, so the bytes do not depend on the
number of workers. Train scenes use Fashion-MNIST train items only, test scenes test items.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import logging
import multiprocessing as mp
import os
import shutil
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from common.cli import add_debug_flag, run_cli
from common.datasets.errors import DatasetSettingsError
from common.datasets.fashion_mnist import CLASS_NAMES, load_fashion_mnist
from common.datasets.palette import write_mask
from common.datasets.scene_render import (
    BACKGROUNDS,
    LEGACY_PARAMS,
    BackgroundPattern,
    SceneParams,
    background_pattern,
    render_scene,
)

log = logging.getLogger(__name__)

GENERATOR_VERSION = "fashion-scenes-v1"
# The embedded default data.root of every stage: the only folder stages generate on their own.
DEFAULT_ROOT = Path("data/fashion_scenes")
# The VOC split each Fashion-MNIST split is written as.
SPLITS = {"train": "train", "test": "val"}
_SPLIT_CODE = {"train": 0, "test": 1}
_CHUNK = 200
# Everything the generator writes under its output folder (and may therefore replace).
_OUTPUT_NAMES = {
    "JPEGImages",
    "SegmentationClassAug",
    "ImageSets",
    "classes.txt",
    "meta.json",
    "classes.txt.tmp",
    "meta.json.tmp",
}


def is_default_root(root: str | Path) -> bool:
    """Whether ``root`` is the embedded default folder (relative to the working directory)."""
    return Path(root).resolve() == DEFAULT_ROOT.resolve()


def scene_id(split: str, index: int) -> str:
    """File stem of scene ``index`` of ``split`` ('train' or 'test')."""
    return f"{split}_{index:06d}"


def scene_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The RNG of one scene, independent of generation order and worker count."""
    return np.random.default_rng([seed, _SPLIT_CODE[split], index])


def scene_background(seed: int, scene: str, style: str = "texture") -> BackgroundPattern:
    """The background pattern of scene ``scene`` (a file stem such as ``train_000012``)."""
    split, index = scene.rsplit("_", 1)
    return background_pattern(scene_rng(seed, split, int(index)), style)


def scene_params(size: int, settings: dict) -> SceneParams:
    """Validated SceneParams; an unknown setting is an error listing the valid ones."""
    unknown = sorted(set(settings) - set(SceneParams.__dataclass_fields__))
    if unknown:
        raise DatasetSettingsError(
            f"unknown FashionScenes setting(s) {unknown}; valid ones: "
            f"{sorted(SceneParams.__dataclass_fields__)} plus n_train, n_test, seed, "
            "workers, fashion_mnist_root, progress"
        )
    params = SceneParams(size=size, **settings)
    params.validate()
    return params


def _class_pools(labels: np.ndarray) -> list[np.ndarray]:
    return [np.flatnonzero(labels == c) for c in range(len(CLASS_NAMES))]


def _write_chunk(task: tuple) -> list[tuple[str, list[int], list[int]]]:
    """Render and write scenes ``start..stop`` of one split; returns (id, labels, items)."""
    out, split, start, stop, seed, params, fmnist_root = task
    items, labels = load_fashion_mnist(split, fmnist_root)
    pools = _class_pools(labels)
    records = []
    for index in range(start, stop):
        scene = render_scene(scene_rng(seed, split, index), items, pools, params)
        name = scene_id(split, index)
        # 4:4:4 chroma keeps the thin coloured item edges that 4:2:0 would smear at 64 px.
        Image.fromarray(scene.image).save(
            out / "JPEGImages" / f"{name}.jpg", quality=95, subsampling=0
        )
        write_mask(out / "SegmentationClassAug" / f"{name}.png", scene.mask)
        records.append((name, scene.labels, scene.items))
    return records


def _tasks(out: Path, counts: dict[str, int], seed: int, params: SceneParams, root) -> list:
    return [
        (out, split, start, min(start + _CHUNK, n), seed, params, root)
        for split, n in counts.items()
        for start in range(0, n, _CHUNK)
    ]


def _prepare_output(out: Path) -> Path:
    """Empty ``out`` of an earlier (possibly partial) set; refuse a folder holding other files."""
    if out.exists() and not out.is_dir():
        raise DatasetSettingsError(
            f"FashionScenes output {out} exists and is not a folder; pick another"
        )
    if out.is_dir():
        foreign = sorted(p.name for p in out.iterdir() if p.name not in _OUTPUT_NAMES)
        if foreign:
            raise DatasetSettingsError(
                f"FashionScenes output {out} holds files it did not write ({foreign[:5]}); "
                "pick an empty or new folder so nothing of yours is overwritten"
            )
        # Stale scenes from a larger earlier set must not linger next to the new ones.
        for name in ("meta.json", "JPEGImages", "SegmentationClassAug", "ImageSets"):
            target = out / name
            if target.is_dir():
                shutil.rmtree(target)
            else:
                target.unlink(missing_ok=True)
    (out / "JPEGImages").mkdir(parents=True)
    (out / "SegmentationClassAug").mkdir()
    (out / "ImageSets" / "Segmentation").mkdir(parents=True)
    return out


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def generate_fashion_scenes(
    out: str | Path,
    size: int = 64,
    n_train: int = 8000,
    n_test: int = 2000,
    seed: int = 0,
    workers: int = 2,
    fashion_mnist_root: str | Path | None = None,
    progress: bool = True,
    **scene_kwargs,
) -> Path:
    """Write a FashionScenes set to ``out`` and return it; ``scene_kwargs`` go to SceneParams."""
    params = scene_params(size, scene_kwargs)
    if n_train < 0 or n_test < 0 or n_train + n_test == 0:
        raise DatasetSettingsError(
            f"need n_train, n_test >= 0 and some scenes, got {n_train}, {n_test}"
        )
    if workers < 1:
        raise DatasetSettingsError(f"workers must be >= 1, got {workers}")
    out = _prepare_output(Path(out))
    counts = {"train": n_train, "test": n_test}
    # Load in the parent so forked workers share the arrays instead of re-reading them.
    for split in counts:
        load_fashion_mnist(split, fashion_mnist_root)
    tasks = _tasks(out, counts, seed, params, fashion_mnist_root)
    start = time.perf_counter()
    records: list = []
    bar = tqdm(total=n_train + n_test, desc="FashionScenes", unit="scene", disable=not progress)
    method = "fork" if "fork" in mp.get_all_start_methods() else None
    with mp.get_context(method).Pool(workers) if workers > 1 else nullcontext() as pool:
        chunks = (
            map(_write_chunk, tasks) if pool is None else pool.imap_unordered(_write_chunk, tasks)
        )
        for chunk in chunks:
            records.extend(chunk)
            bar.update(len(chunk))
    bar.close()
    records.sort(key=lambda record: record[0])
    for split, voc_split in SPLITS.items():
        ids = [name for name, _, _ in records if name.startswith(f"{split}_")]
        _atomic_write_text(
            out / "ImageSets" / "Segmentation" / f"{voc_split}.txt", "".join(f"{i}\n" for i in ids)
        )
    _atomic_write_text(out / "classes.txt", "".join(f"{n}\n" for n in ("background", *CLASS_NAMES)))
    meta = {
        "generator": GENERATOR_VERSION,
        "seed": seed,
        "params": params.to_json(),
        "counts": counts,
        "splits": SPLITS,
        "num_classes": len(CLASS_NAMES) + 1,
        "labels": {name: labels for name, labels, _ in records},
        # Fashion-MNIST indices (within the scene's own split) of the items drawn.
        "items": {name: items for name, _, items in records},
    }
    _atomic_write_text(out / "meta.json", json.dumps(meta, separators=(",", ":")))
    log.info(
        "wrote %d FashionScenes to %s in %.1f s (%d workers)",
        len(records),
        out,
        time.perf_counter() - start,
        workers,
    )
    return out


def _expected_signature(seed: int, params: SceneParams, counts: dict[str, int]) -> dict:
    return {
        "generator": GENERATOR_VERSION,
        "seed": seed,
        "params": params.to_json(),
        "counts": counts,
    }


def params_diff(found: dict, wanted: dict | None = None) -> dict:
    """``{setting: (found, wanted)}`` where a set's recorded rendering settings (``meta.json``'s
    ``params``) differ from ``wanted`` (default: today's defaults); empty when they match."""
    # Sets written before a setting existed were rendered with its value of that time.
    found = {**SceneParams().to_json(), **LEGACY_PARAMS, **found}
    wanted = dict(wanted if wanted is not None else SceneParams().to_json())
    if found.get("background") == wanted.get("background") == "mosaic":
        # Mosaic cells ignore background_max, whose default has changed since.
        found.pop("background_max", None)
        wanted.pop("background_max", None)
    keys = sorted(set(found) | set(wanted))
    return {k: (found.get(k), wanted.get(k)) for k in keys if found.get(k) != wanted.get(k)}


def _signature_diff(meta: dict, wanted: dict) -> dict:
    """Like :func:`params_diff`, over the whole signature (generator, seed, counts too)."""
    found = {key: meta.get(key) for key in wanted}
    diff = {k: (found[k], wanted[k]) for k in wanted if k != "params" and found[k] != wanted[k]}
    if isinstance(found["params"], dict):
        return {**diff, **params_diff(found["params"], wanted["params"])}
    if found["params"] != wanted["params"]:
        diff["params"] = (found["params"], wanted["params"])
    return diff


@contextmanager
def _lock(root: Path) -> Iterator[None]:
    """Serialise generation across processes (pytest-xdist, several ranks on one node)."""
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(root.parent / f".{root.name}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_fashion_scenes(
    root: str | Path,
    size: int = 64,
    n_train: int = 8000,
    n_test: int = 2000,
    seed: int = 0,
    workers: int = 2,
    **kwargs,
) -> Path:
    """Return ``root`` holding FashionScenes with these parameters, generating it if missing.

    An existing set made with other parameters or generator version is an error (never
    silently reused or overwritten).
    """
    root = Path(root)
    run_only = {"fashion_mnist_root", "progress"}  # change how, not what, is generated
    params = scene_params(size, {k: v for k, v in kwargs.items() if k not in run_only})
    wanted = _expected_signature(seed, params, {"train": n_train, "test": n_test})
    with _lock(root):
        meta_path = root / "meta.json"
        if not meta_path.is_file():
            log.info("FashionScenes not found at %s (no meta.json): generating it now", root)
            generate_fashion_scenes(
                root,
                size=size,
                n_train=n_train,
                n_test=n_test,
                seed=seed,
                workers=workers,
                **kwargs,
            )
            return root
        meta = json.loads(meta_path.read_text())
    diff = _signature_diff(meta, wanted)
    if diff:
        raise DatasetSettingsError(
            f"{root} holds a FashionScenes set made with different settings "
            f"(found vs wanted: {diff}); delete the folder to regenerate it, or pass the "
            "settings it was made with, or point data.root to another folder"
        )
    return root


def build_parser() -> argparse.ArgumentParser:
    """The generator's command line; help texts say why each default is what it is."""
    defaults = SceneParams()
    parser = argparse.ArgumentParser(
        prog="python -m common.datasets.fashion_scenes",
        description=(
            "Generate FashionScenes: Fashion-MNIST items (0-3 per scene, random scale, "
            "position, tint, occlusion) on textured colour backgrounds, with exact per-pixel "
            "masks, written in the Pascal VOC layout that the VOC / Pascal-5i loaders read. "
            "Same seed and settings give the same bytes, whatever the number of workers."
        ),
    )
    parser.add_argument(
        "--out", required=True, type=Path, help="output folder (new, empty, or an earlier set)"
    )
    parser.add_argument(
        "--size",
        type=int,
        default=64,
        help="scene side in pixels (default 64: a patch-8 ViT sees 8x8 tokens, fast on CPU)",
    )
    parser.add_argument(
        "--train",
        type=int,
        default=8000,
        help="train scenes, from Fashion-MNIST train items, listed in train.txt (default 8000)",
    )
    parser.add_argument(
        "--test",
        type=int,
        default=2000,
        help="test scenes, from Fashion-MNIST test items, listed in val.txt (default 2000)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="another seed gives another draw (default 0)"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=2,
        help="processes; changes only the speed, never the output (default 2)",
    )
    parser.add_argument(
        "--scale-min",
        type=float,
        default=defaults.scale_min,
        help=f"smallest item side as a share of the scene side (default {defaults.scale_min}: "
        "35 px at 64 px: big enough for the tiny ViT's 32 px pretraining crops)",
    )
    parser.add_argument(
        "--scale-max",
        type=float,
        default=defaults.scale_max,
        help=f"largest item side as a share of the scene side (default {defaults.scale_max}: "
        "items overlap, so occlusion is common)",
    )
    parser.add_argument(
        "--min-visible-frac",
        type=float,
        default=defaults.min_visible_frac,
        help="share of scene pixels a class needs to count as present; classes below it are "
        f"marked 255 (ignore) (default {defaults.min_visible_frac}: 82 px at 64 px)",
    )
    parser.add_argument(
        "--background-max",
        type=float,
        default=defaults.background_max,
        help="brightest background colour value in [0, 1] (default "
        f"{defaults.background_max}: muted, so that self-supervision cannot match two crops by "
        "their background; 0.6 gives the bright backgrounds of the first sets)",
    )
    parser.add_argument(
        "--background",
        choices=BACKGROUNDS,
        default=defaults.background,
        help="texture: smooth colour noise or stripes, one pattern per scene (default); "
        "mosaic: cells of random colours, which two crops of a scene cannot be matched by "
        "and which a colour threshold cannot separate from the items",
    )
    parser.add_argument(
        "--fashion-mnist-root",
        type=Path,
        default=None,
        help="folder of the Fashion-MNIST IDX files (default: $FASHION_MNIST_ROOT, then "
        "/usr/share/datasets/fashion-mnist)",
    )
    add_debug_flag(parser)
    return parser


def _main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    generate_fashion_scenes(
        args.out,
        size=args.size,
        n_train=args.train,
        n_test=args.test,
        seed=args.seed,
        workers=args.workers,
        fashion_mnist_root=args.fashion_mnist_root,
        scale_min=args.scale_min,
        scale_max=args.scale_max,
        min_visible_frac=args.min_visible_frac,
        background_max=args.background_max,
        background=args.background,
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; a bad setting or output folder is one line on stderr, exit code 2."""
    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
