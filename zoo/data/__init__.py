"""Datasets shared by the harnesses: the embedded 5,000 MNIST digits (offline), torchvision sets online."""
from .mnist import embedded_mnist, embedded_mnist_split, load_mnist
from .bouncing_balls import BouncingBalls, BouncingBallsDataset, generate as generate_bouncing_balls

__all__ = ["embedded_mnist", "embedded_mnist_split", "load_mnist", "BouncingBalls", "BouncingBallsDataset",
           "generate_bouncing_balls"]
