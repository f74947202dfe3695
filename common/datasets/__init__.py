"""Datasets shared by every stage: Fashion-MNIST, FashionScenes, VOC, COCO, image folders, folds."""
