"""`python -m distill.segment`: weakly-supervised semantic segmentation from pseudo-masks."""
