"""Datasets shared by the harnesses: the embedded 5,000 MNIST digits (offline), torchvision sets online."""
from .images import DATASETS, dataset_missing, few_labels, load_dataset
from .mnist import embedded_mnist, embedded_mnist_split, load_mnist
from .seq_mnist import binarize, pixel_sequences, resize_nearest, seq_mnist_batches, seq_mnist_splits
from .bouncing_balls import BouncingBalls, BouncingBallsDataset, generate as generate_bouncing_balls
from . import multi_digit, sort_of_clevr  # noqa: F401  (zoo.data.sort_of_clevr, zoo.data.multi_digit)

__all__ = ["embedded_mnist", "embedded_mnist_split", "load_mnist", "DATASETS", "load_dataset", "few_labels",
           "dataset_missing", "binarize", "pixel_sequences", "resize_nearest", "seq_mnist_batches",
           "seq_mnist_splits", "BouncingBalls", "BouncingBallsDataset", "generate_bouncing_balls"]
