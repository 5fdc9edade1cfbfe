"""Datasets shared by the harnesses: the embedded 5,000 MNIST digits (offline), torchvision sets online."""
from .mnist import embedded_mnist, embedded_mnist_split, load_mnist
from . import multi_digit, sort_of_clevr  # noqa: F401  (zoo.data.sort_of_clevr, zoo.data.multi_digit)

__all__ = ["embedded_mnist", "embedded_mnist_split", "load_mnist"]
