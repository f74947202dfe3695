"""Rank/world detection from torchrun and SLURM variables."""

from common.distributed import detect_env, first_host, port_from_job_id


def test_torchrun_variables_win(monkeypatch):
    for k, v in {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "MASTER_PORT": "1234"}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("SLURM_NTASKS", "8")
    monkeypatch.setenv("SLURM_PROCID", "5")
    env = detect_env()
    assert (env.rank, env.world_size, env.local_rank, env.master_port, env.source) == (
        3,
        4,
        1,
        1234,
        "torchrun",
    )


def test_slurm_variables(monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("SLURM_NTASKS", "16")
    monkeypatch.setenv("SLURM_PROCID", "9")
    monkeypatch.setenv("SLURM_LOCALID", "1")
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("SLURM_JOB_NODELIST", "gpu[007-008]")
    env = detect_env()
    assert (env.rank, env.world_size, env.local_rank, env.source) == (9, 16, 1, "slurm")
    assert env.master_addr == "gpu007"
    assert env.master_port == port_from_job_id("4242")


def test_nodelist_parsing_without_scontrol(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    assert first_host("node[03-05,7],gpu1") == "node03"
    assert first_host("a1,b2") == "a1"
    assert first_host("solo") == "solo"


def test_single_process_by_default(monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "SLURM_NTASKS", "SLURM_PROCID"):
        monkeypatch.delenv(k, raising=False)
    assert detect_env().world_size == 1
