"""Benchmarks run by these tests record into a temporary folder, never benchmarks/results/."""

import pytest


@pytest.fixture(autouse=True)
def _records_elsewhere(tmp_path, monkeypatch):
    monkeypatch.setenv("LABELFEW_RESULTS_DIR", str(tmp_path / "records"))
