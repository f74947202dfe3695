"""faiss's loader probes (AVX2 / AVX512 builds it does not find) stay out of the run log."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPT = """
import sys
from pathlib import Path
from common.rundir import RunDir, setup_logging
setup_logging(RunDir(Path(sys.argv[1])))
import pretrain.probe, fewshot.probe.knn
"""


def test_importing_the_faiss_users_logs_nothing_from_faiss(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "faiss" not in (tmp_path / "log.txt").read_text()
    assert "faiss" not in proc.stderr
