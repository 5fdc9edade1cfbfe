"""Datasets shared by the harnesses: the embedded 5,000 MNIST digits (offline), torchvision sets online."""
from .mnist import embedded_mnist, embedded_mnist_split, load_mnist

__all__ = ["embedded_mnist", "embedded_mnist_split", "load_mnist"]
