"""The embedded MNIST digits and their fixed split."""
import pytest
import torch

from zoo.data import embedded_mnist, embedded_mnist_split, load_mnist


def test_embedded_digits_are_real_mnist_images():
    x, y = embedded_mnist()
    assert x.shape == (5000, 1, 28, 28) and y.shape == (5000,)
    assert 0.0 <= x.min() and x.max() <= 1.0
    assert torch.equal(torch.bincount(y), torch.full((10,), 500))
    ink = (x > 0.5).float().mean((1, 2, 3))
    assert 0.05 < ink.mean() < 0.3                                   # mostly background, some strokes


def test_split_is_balanced_disjoint_and_deterministic():
    a, b = embedded_mnist_split(), embedded_mnist_split()
    (xtr, _ytr), (xte, yte) = a["train"], a["test"]
    assert len(xtr) == 4000 and len(xte) == 1000
    assert torch.equal(torch.bincount(yte), torch.full((10,), 100))
    assert torch.equal(xtr, b["train"][0]) and torch.equal(yte, b["test"][1])
    flat_tr, flat_te = xtr.flatten(1), xte.flatten(1)
    # no test image appears in the training set
    d = torch.cdist(flat_te[:200], flat_tr).min(1).values
    assert (d > 0).all()


def test_few_labels_mode():
    s = embedded_mnist_split(labels_per_class=10)
    assert len(s["train"][0]) == 100 and len(s["unlabeled"][0]) == 3900
    assert torch.equal(torch.bincount(s["train"][1]), torch.full((10,), 10))
    with pytest.raises(ValueError, match="labels_per_class"):
        embedded_mnist_split(labels_per_class=0)


def test_missing_full_mnist_says_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="embedded_mnist"):
        load_mnist(tmp_path, download=False)
