"""RNG state capture and restore: what makes a resumed run continue bit-identically."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from common.checkpoint import atomic_torch_save, load_torch_file
from common.runtime import rng_state, set_rng_state


def _draws() -> tuple:
    cuda = torch.rand(3, device="cuda").tolist() if torch.cuda.is_available() else []
    return random.random(), float(np.random.rand()), torch.rand(3).tolist(), cuda


def test_restored_state_repeats_every_generator(tmp_path):
    state = rng_state()
    first = _draws()
    atomic_torch_save(state, tmp_path / "rng.pt")
    set_rng_state(load_torch_file(tmp_path / "rng.pt"))  # weights_only, with our allowlist
    assert _draws() == first


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_state_loaded_onto_the_gpu_is_restored(tmp_path):
    # A resume loads its checkpoint with map_location=cuda; torch wants CPU byte tensors.
    state = rng_state()
    first = _draws()
    atomic_torch_save(state, tmp_path / "rng.pt")
    loaded = load_torch_file(tmp_path / "rng.pt", map_location="cuda")
    assert loaded["torch"].device.type == "cuda"
    set_rng_state(loaded)
    assert _draws() == first
