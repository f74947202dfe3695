"""The results page is rendered from the records, and no other page restates its figures."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from benchmarks import render_results
from benchmarks.record import record_result

ROOT = Path(__file__).resolve().parents[1]

# Percentages and ratios, the figures that go stale when restated by hand.
FIGURE = re.compile(r"(?<![\w.])(\d+(?:\.\d+)?)(?:\s?%|x\b)")
SCANNED = [
    ROOT / "README.md",
    *sorted((ROOT / "docs").glob("*.md")),
    *sorted((ROOT / "configs").rglob("*.yaml")),
    *sorted((ROOT / "launch").rglob("*.py")),
]
# docs/notes/ is left out: each note is the record of the experiments behind one default, with
# their own commands; where a note cites a figure of the results page it links the section.
# Figures that are not results, as (file, the figure with the words around it):
ALLOWED = [
    ("README.md", "class and 1 %"),  # the probe's label budget, a setting
    ("docs/fewshot.md", "1 %"),  # the probe's label budget, a setting
    ("docs/pretrain.md", "50 %"),  # the masking share of each preset, a setting
    ("docs/pretrain.md", "60 %"),  # the attention-mass cut of the `mass` rule, a setting
    ("docs/distill.md", "1%"),  # the sign search's stopping margin, a setting
    ("docs/distill.md", "30%"),  # the probe's seed share, a setting
    ("docs/distill.md", "20%"),  # the enhancer's held-out share, a setting
    ("docs/distill.md", "95%"),  # a planted-scene test's threshold, not a result
    ("docs/launch.md", "0-5%"),  # SLURM's --array syntax
    ("launch/report.py", "about 50 %"),  # chance of a 1-way presence decision
    ("configs/distill/default.yaml", "30% patches"),  # the probe's seed share, a setting
    ("docs/datasets.md", "probabilities 5 % / 28 % / 37 % / 30 %"),  # generator settings
    ("docs/datasets.md", "about 30 % single-item"),  # what those settings aim at
    # Statistics of the default FashionScenes set, fixed by its seed (a property of the data,
    # the same on every machine), not a measurement that can drift:
    ("docs/datasets.md", "31.5 % single-item"),
    ("docs/datasets.md", "40.4 % two-item, 23.0 % three-item and 5.1 % empty"),
    ("docs/datasets.md", "items cover 35 % of the pixels, ignore 0.1 %"),
    ("docs/fewshot.md", "(items 35 %)"),
    # Published papers' figures, quoted as the targets the documented commands reproduce:
    ("docs/lowshot.md", "on 90 % of train"),  # DINOv2's held-out share, a setting
    ("docs/lowshot.md", "20-NN: 74.5 % top-1"),  # DINO's paper, ViT-S/16
    ("docs/lowshot.md", "logistic regression: 64.5 %"),  # DINO's paper, 1 % labels
    ("docs/lowshot.md", "and 1 %: 67.2 %"),  # MSN's paper, ViT-S/16
]


def test_the_page_is_what_the_records_render():
    """RESULTS.md is exactly the fragments plus the records (re-render it after a change)."""
    rendered = render_results.render()
    assert render_results.main(["--check"]) == 0, "run benchmarks/render_results.py"
    assert rendered == render_results.RESULTS_MD.read_text()
    assert "{{" not in rendered


def test_placeholders_render_tables_values_and_sources(tmp_path):
    results, page = tmp_path / "results", tmp_path / "page"
    page.mkdir()
    table = {"columns": ["model", "mIoU"], "rows": [["head", 20.3], ["prototype", None]]}
    record_result("toy", tables={"fscs": table}, values={"gap": 3.3}, out_dir=results)
    (page / "20_b.md").write_text("### B\n\n{{source toy}}\n\n{{table toy:fscs}}\n")
    (page / "10_a.md").write_text("## A\n\nThe gap is {{value toy:gap}} points.\n")
    text = render_results.render(page, results)
    assert text.index("## A") < text.index("### B")  # name order
    assert "The gap is 3.3 points." in text
    assert "| model | mIoU |\n| --- | --- |\n| head | 20.3 |\n| prototype | - |" in text
    rec = json.loads((results / "toy.json").read_text())
    assert f"commit `{rec['commit']}`" in text and rec["command"] in text


@pytest.mark.parametrize(
    ("line", "says"),
    [
        ("{{table nosuch:t}}", "no record 'nosuch'"),
        ("{{table toy:nosuch}}", "record 'toy' has no table 'nosuch'; its tables: fscs"),
        ("x {{value toy:fscs}}", "record 'toy' has no value 'fscs'"),
        ("{{tabel toy:fscs}}", "malformed placeholder"),
    ],
)
def test_an_unknown_name_is_one_line_naming_what_exists(tmp_path, line, says, capsys):
    results, page = tmp_path / "results", tmp_path / "page"
    page.mkdir()
    record_result("toy", tables={"fscs": {"columns": ["a"], "rows": [[1]]}}, out_dir=results)
    (page / "10_a.md").write_text(f"## A\n\n{line}\n")
    with pytest.raises(render_results.RenderError) as err:
        render_results.render(page, results)
    message = str(err.value)
    assert "\n" not in message and says in message
    assert message.startswith("benchmarks/page/10_a.md:3: ")


def _figures_on_the_page() -> set[str]:
    return set(re.findall(r"\d+(?:\.\d+)?", render_results.RESULTS_MD.read_text()))


def test_no_page_restates_a_figure_the_results_do_not_hold():
    """README, docs, configs and launch link to RESULTS sections instead of quoting figures;
    any percentage or ratio they still hold must be one the rendered page holds."""
    on_page, stale = _figures_on_the_page(), []
    for path in SCANNED:
        rel = path.relative_to(ROOT).as_posix()
        for number, line in enumerate(path.read_text().splitlines(), 1):
            for m in FIGURE.finditer(line):
                if m.group(1) in on_page:
                    continue
                if any(rel == f and allowed in line for f, allowed in ALLOWED):
                    continue
                stale.append(f"{rel}:{number}: {m.group(0)!r} in {line.strip()[:90]!r}")
    assert not stale, "figures not on the results page:\n" + "\n".join(stale)


def _anchor(heading: str) -> str:
    """GitHub's anchor of a markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def test_links_into_the_results_page_name_its_sections():
    page = render_results.RESULTS_MD.read_text()
    anchors = {_anchor(h) for h in re.findall(r"^#+ (.+)$", page, flags=re.M)}
    broken = []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]:
        for target in re.findall(r"RESULTS\.md#([\w\-]+)", path.read_text()):
            if target not in anchors:
                broken.append(f"{path.relative_to(ROOT)}: #{target}")
    assert not broken, "links to no section of RESULTS.md:\n" + "\n".join(broken)


def test_the_report_quotes_its_positive_controls_from_the_records():
    from launch.report import positive_controls

    table = positive_controls()
    rows = [line for line in table.splitlines() if line.startswith("| ") and "---" not in line]
    assert len(rows) == 7  # the header and six controls
    assert "not recorded" not in table and "no record" not in table
    on_page = _figures_on_the_page()
    for row in rows[1:]:
        recorded = row.split(" | ")[2]
        assert set(re.findall(r"\d+\.\d+", recorded)) <= on_page, row
    assert "not recorded" in positive_controls(ROOT / "no_such_folder")
