"""Probe results as a plain-text table and a plot of accuracy vs labels per class."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def summarise(res: dict) -> dict:
    """Headline numbers of one backbone's probes (percentages)."""
    out = {f"logreg_{k}": round(100 * v["mean"], 1) for k, v in res["logreg"].items()}
    for share, accs in res["knn"].items():
        out.update({f"knn_{share}_{k}": round(100 * a, 1) for k, a in accs.items()})
    out["multilabel_mAP"] = round(100 * res["multilabel"]["mAP"], 1)
    out["seg_mIoU"] = round(100 * res["segmentation"]["miou"], 1)
    return out


def format_table(results: dict) -> str:
    """One column per backbone; rows: low-shot logistic regression, k-NN, mAP, mIoU."""
    models = list(results["models"])
    first = results["models"][models[0]]
    lines = [f"{'probe':<28}" + "".join(f"{m:>18}" for m in models)]

    def row(name: str, cells: list[str]) -> None:
        lines.append(f"{name:<28}" + "".join(f"{c:>18}" for c in cells))

    for setting in first["logreg"]:
        cells = []
        for m in models:
            r = results["models"][m]["logreg"][setting]
            cells.append(f"{100 * r['mean']:.1f} +- {100 * r['std']:.1f}")
        row(f"logreg {setting} (acc %)", cells)
    for share, accs in first["knn"].items():
        for k in accs:
            row(
                f"k-NN {share} {k} (acc %)",
                [f"{100 * results['models'][m]['knn'][share][k]:.1f}" for m in models],
            )
    row(
        "multi-label (mAP %)",
        [f"{100 * results['models'][m]['multilabel']['mAP']:.1f}" for m in models],
    )
    row(
        "patch seg probe (mIoU %)",
        [f"{100 * results['models'][m]['segmentation']['miou']:.1f}" for m in models],
    )
    return "\n".join(lines)


def accuracy_plot(results: dict, path: Path) -> Path:
    """Logistic-regression accuracy (mean +- std) against labels per class, per backbone."""
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name, res in results["models"].items():
        pts = []
        for setting, r in res["logreg"].items():
            pts.append((r["labels_per_class"], 100 * r["mean"], 100 * r["std"], setting))
        pts.sort()
        ax.errorbar(
            [p[0] for p in pts],
            [p[1] for p in pts],
            yerr=[p[2] for p in pts],
            marker="o",
            capsize=3,
            label=name,
        )
        for x, y, _s, setting in pts:
            if setting.startswith("pct"):
                ax.annotate(
                    f"{setting[3:]}%",
                    (x, y),
                    textcoords="offset points",
                    xytext=(4, -10),
                    fontsize=7,
                )
    ax.set_xscale("log")
    ax.set_xlabel("labels per class")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Low-shot logistic regression")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
