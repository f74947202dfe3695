"""Low-shot probes on frozen features: logistic regression, k-NN, multi-label, segmentation."""
