"""The comparisons a pipeline report shows, and which of them are bars for a given chain.

Every comparison is computed from the stages' ``results.json`` whenever its stages ran; a
pipeline file lists under ``bars:`` the ones that must hold for that chain (met / not met),
and the others appear as reference rows.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from launch.slurm import LaunchError

SALIENCY = "colour saliency (no learning)"
RANDOM_VIT = "random-init ViT + refine"
WEAK = "attention + refine"


@dataclass(frozen=True)
class Row:
    """One comparison: what is compared, the measured side, the side it is compared with."""

    check: str
    measured: str
    against: str
    holds: bool | None  # None: its stages did not run or report the numbers


Stages = Sequence[tuple[str, str, Mapping]]  # (name, stage, summary)


def _num(value: object) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _pct(values: Sequence[float | None]) -> str:
    return " / ".join("-" if v is None else f"{100 * v:.1f}" for v in values)


def _beats(ours: Sequence[float | None], theirs: Sequence[float | None]) -> bool | None:
    if any(v is None for v in (*ours, *theirs)):
        return None
    return all(a > b for a, b in zip(ours, theirs, strict=True))


def _quality_rows(stages: Stages) -> dict[str, Mapping]:
    for _, stage, summary in stages:
        if stage == "distill":
            rows = summary.get("rows") or (summary.get("quality") or {}).get("rows") or []
            return {r["method"]: r for r in rows if isinstance(r, Mapping) and "method" in r}
    return {}


def _miou_fb(row: Mapping | None) -> list[float | None]:
    row = row or {}
    return [_num(row.get("miou")), _num(row.get("fb_iou"))]


def _distill_vs(stages: Stages, ours: str, theirs: str, check: str) -> list[Row]:
    rows = _quality_rows(stages)
    a, b = _miou_fb(rows.get(ours)), _miou_fb(rows.get(theirs))
    return [Row(check, f"{_pct(a)} mIoU / FB-IoU", _pct(b), _beats(a, b))]


def weak_beats_saliency(stages: Stages) -> list[Row]:
    return _distill_vs(stages, WEAK, SALIENCY, "weak pseudo-masks vs colour saliency")


def weak_beats_random(stages: Stages) -> list[Row]:
    return _distill_vs(stages, WEAK, RANDOM_VIT, "weak pseudo-masks vs random-init backbone")


def enhancer_beats_weak(stages: Stages) -> list[Row]:
    rows = _quality_rows(stages)
    # The bar is about few masks: the enhancer rows with at most 50 ground-truth masks.
    names = [
        m
        for m, r in rows.items()
        if m.startswith("+ enhancer") and 0 < (_num(r.get("gt_images")) or 0) <= 50
    ]
    if not names:
        return [Row("enhancer (10 / 50 GT) vs weak pseudo-masks", "-", "-", None)]
    return [_distill_vs(stages, m, WEAK, f"{m[2:]} vs weak pseudo-masks")[0] for m in names]


def _fewshot_runs(stages: Stages) -> list[tuple[str, Mapping]]:
    return [(name, s) for name, stage, s in stages if stage == "fewshot" and s.get("test")]


def _ways(test: Mapping) -> list[str]:
    return sorted((w for w in test if w.endswith("way")), key=lambda w: int(w[:-3]))


def _heads_vs(stages: Stages, other: str, metrics: Sequence[str], label: str) -> list[Row]:
    runs = _fewshot_runs(stages)
    if not runs:
        return [Row(f"FS-CS head vs {label}", "-", "-", None)]
    out = []
    for name, summary in runs:
        test, fold = summary["test"], (summary.get("setting") or {}).get("fold")
        ours, theirs, parts = [], [], []
        for way in _ways(test):
            for metric in metrics:
                a = _num((test[way].get("head") or {}).get(metric))
                b = _num((test[way].get(other) or {}).get(metric))
                ours.append(a)
                theirs.append(b)
                parts.append(f"{way[:-3]}-way {'ER' if metric == 'exact_ratio' else 'mIoU'}")
        check = f"{name} (fold {fold}): FS-CS head vs {label}, {', '.join(parts)}"
        out.append(Row(check, _pct(ours), _pct(theirs), _beats(ours, theirs)))
    return out


def heads_beat_prototype(stages: Stages) -> list[Row]:
    return _heads_vs(stages, "prototype", ["miou"], "prototype baseline")


def heads_beat_random_head(stages: Stages) -> list[Row]:
    return _heads_vs(stages, "random_head", ["exact_ratio", "miou"], "random-backbone head")


def segment_beats_pseudo(stages: Stages) -> list[Row]:
    for _, stage, summary in stages:
        if stage == "distill/segment":
            ours = _num((summary.get("pseudo") or {}).get("miou"))
            theirs = _num((summary.get("pseudo_mask_quality_train") or {}).get("miou"))
            check = "WSSS decoder (val) vs its pseudo-masks (train), mIoU all classes"
            return [Row(check, _pct([ours]), _pct([theirs]), _beats([ours], [theirs]))]
    return [Row("WSSS decoder vs its pseudo-masks", "-", "-", None)]


# name -> (the stage whose results it needs, the comparison)
COMPARISONS: dict[str, tuple[str, Callable[[Stages], list[Row]]]] = {
    "weak_beats_random": ("distill", weak_beats_random),
    "enhancer_beats_weak": ("distill", enhancer_beats_weak),
    "heads_beat_prototype": ("fewshot", heads_beat_prototype),
    "weak_beats_saliency": ("distill", weak_beats_saliency),
    "heads_beat_random_head": ("fewshot", heads_beat_random_head),
    "segment_beats_pseudo": ("distill/segment", segment_beats_pseudo),
}


def check_bars(bars: object, where: str) -> list[str]:
    """The ``bars:`` list of a pipeline file, every name a known comparison."""
    if bars is None:
        return []
    if not isinstance(bars, list) or not all(isinstance(b, str) for b in bars):
        raise LaunchError(f"{where}: `bars:` must be a list of names ({', '.join(COMPARISONS)})")
    unknown = [b for b in bars if b not in COMPARISONS]
    if unknown:
        raise LaunchError(
            f"{where}: unknown bar(s) {', '.join(unknown)}; known: {', '.join(COMPARISONS)}"
        )
    return bars


def _verdict(holds: bool | None, is_bar: bool) -> str:
    if holds is None:
        return "bar: not measured" if is_bar else "reference: not measured"
    if is_bar:
        return "bar: **met**" if holds else "bar: **not met**"
    return "reference: ahead" if holds else "reference: behind"


def bars_table(stages: Stages, bars: Sequence[str]) -> str:
    """Markdown rows of every comparison whose stages are in the pipeline; bars first."""
    present = {stage for _, stage, _ in stages}
    order = list(bars) + [n for n in COMPARISONS if n not in bars]
    lines = ["| comparison | measured (%) | against (%) | verdict |", "| --- | --- | --- | --- |"]
    for name in order:
        stage, compare = COMPARISONS[name]
        if stage not in present:
            continue
        for row in compare(stages):
            verdict = _verdict(row.holds, name in bars)
            lines.append(f"| {row.check} | {row.measured} | {row.against} | {verdict} |")
    return "\n".join(lines)
