"""Label-efficient vision toolkit: SSL ViT pretraining, attention distillation, few-shot heads."""

from setuptools import find_packages, setup

setup(
    name="labelfew",
    version="0.1.0",
    description=(
        "Self-supervised ViT pretraining (DINO/iBOT/MSN/MaskCluster), attention pseudo-labels "
        "with a mask enhancer, and few-shot classification + segmentation, launchable on SLURM."
    ),
    python_requires=">=3.10",
    packages=find_packages(include=["common*", "pretrain*", "distill*", "fewshot*", "launch*"]),
    install_requires=[
        "torch>=2.1",
        "torchvision>=0.16",
        "timm>=1.0",
        "numpy>=1.24",
        "pyyaml>=6.0",
        "submitit>=1.5",
        "faiss-cpu>=1.8",
        "scikit-learn>=1.3",
        "tqdm>=4.60",
        "pillow>=9.0",
        "matplotlib>=3.7",
    ],
    extras_require={
        # tensorboard: the tests read event files back.
        "dev": [
            "pytest>=8",
            "pytest-xdist>=3.5",
            "pytest-timeout>=2.2",
            "ruff>=0.6",
            "tensorboard>=2.14",
        ],
        # On GPU clusters: `pip install -e .[gpu]` then `pip uninstall faiss-cpu`.
        # faiss-gpu: the k-NN probes search on the GPU. No xformers: torch's SDPA is the
        # attention every module uses.
        "gpu": ["faiss-gpu-cu12>=1.8"],
        "coco": ["pycocotools>=2.0.7"],
        # Metric sinks besides metrics.jsonl (the `logging` config section).
        "tensorboard": ["tensorboard>=2.14"],
        "wandb": ["wandb>=0.16"],
    },
)
