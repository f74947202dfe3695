"""faiss, imported without its loader's messages about optional builds it did not find."""

import logging

# faiss's loader logs (INFO) each optional build it probes (AVX512, AVX2, GPU) and the
# ModuleNotFoundError of every one missing: normal on most machines, noise in every stage's
# log. Its real failures are raised, not logged, so they still surface.
logging.getLogger("faiss.loader").setLevel(logging.WARNING)

import faiss  # noqa: E402  (after the logger is quietened)

__all__ = ["faiss"]
