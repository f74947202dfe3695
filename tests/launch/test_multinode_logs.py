"""Per-node logs of a distributed run, as `launch status` and the pipeline report list them."""

from __future__ import annotations

from pathlib import Path

from launch.report import node_log_lines, rank_logs, write_report

LINE = "12:00:00 INFO common.distributed: distributed: rank {} runs on host {}, address {}\n"


def _run_dir(root: Path) -> Path:
    """Four ranks on two hosts; rank 3 was requeued onto a third host."""
    run = root / "run"
    (run / "submitit").mkdir(parents=True)
    (run / "log.txt").write_text(LINE.format(0, "gpu1", "10.0.0.1") + "step 1/8\n")
    (run / "log.rank1.txt").write_text(LINE.format(1, "gpu1", "10.0.0.1"))
    (run / "log.rank2.txt").write_text(LINE.format(2, "gpu2", "10.0.0.2"))
    (run / "log.rank3.txt").write_text(
        LINE.format(3, "gpu2", "10.0.0.2") + "resumed\n" + LINE.format(3, "gpu3", "10.0.0.3")
    )
    (run / "log.rank.old.txt").write_text(LINE.format(9, "elsewhere", "10.0.0.9"))
    (run / "submitit" / "7_2_log.err").write_text("")
    return run


def test_ranks_are_grouped_by_the_host_of_their_last_start(tmp_path: Path) -> None:
    run = _run_dir(tmp_path)
    assert [(r.rank, r.host) for r in rank_logs(run)] == [
        (0, "gpu1"),
        (1, "gpu1"),
        (2, "gpu2"),
        (3, "gpu3"),
    ]
    assert node_log_lines(run, run / "submitit" / "7") == [
        "gpu1 (10.0.0.1) rank 0,1: log.txt, log.rank1.txt",
        "gpu2 (10.0.0.2) rank 2: log.rank2.txt, submitit/7_2_log.err",
        "gpu3 (10.0.0.3) rank 3: log.rank3.txt",
    ]


def test_single_process_runs_list_no_nodes_and_the_report_lists_them(tmp_path: Path) -> None:
    single = tmp_path / "single"
    single.mkdir()
    (single / "log.txt").write_text(LINE.format(0, "gpu1", "10.0.0.1"))
    assert node_log_lines(single) == []
    run = _run_dir(tmp_path)
    stages = [{"name": "pretrain", "stage": "pretrain", "state": "COMPLETED", "run_dir": run}]
    _, report = write_report(tmp_path, stages)
    text = report.read_text()
    assert "Logs per node" in text
    assert "- `gpu3 (10.0.0.3) rank 3: log.rank3.txt`" in text
