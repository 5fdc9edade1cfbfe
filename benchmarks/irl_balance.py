"""Balance of the two terms of IRL's distance ``d(u, v) = ||u - v||^2 - lambda cos(u, v)`` on real activations.

    python benchmarks/irl_balance.py [--steps 300] [--threads 1]

Trains ``test_resnet`` on the embedded digits with plain cross-entropy for ``--steps`` SGD steps, then, for
256 training digits and their in-domain-noised copies (IRL sec. 3), prints per IRL layer (the last four
stages and the logits) the feature count ``D``, the mean squared L2 distance, the mean cosine similarity
and their ratio, at initialisation and after training. The paper's ``d`` (``dist_reduction="sum"``) and our
default (``"mean"``, ``d / D``) have the same ratio; dividing only the L2 term by ``D`` would divide it.
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

import zoo
from zoo import augment as A
from zoo.data import embedded_mnist_split
from zoo.engine import markdown_table
from zoo.taps import LayerTaps, stage_layers


def balance(model: torch.nn.Module, x: torch.Tensor) -> list:
    was = model.training
    model.eval()
    noisy = A.in_domain_noise(x, torch.Generator().manual_seed(1))
    layers = stage_layers(model)[-4:]
    with torch.no_grad(), LayerTaps(model, layers) as taps:
        out = model(x)
        clean = {n: taps[n].flatten(1) for n in layers} | {"logits": out}
        out = model(noisy)
        moved = {n: taps[n].flatten(1) for n in layers} | {"logits": out}
    model.train(was)
    rows = []
    for n in clean:
        sq = float((clean[n] - moved[n]).pow(2).sum(1).mean())
        cos = float(F.cosine_similarity(clean[n], moved[n], dim=1).mean())
        rows.append([n, clean[n].shape[1], f"{sq:.3f}", f"{cos:.3f}", f"{sq / cos:.1f}", f"{sq / clean[n].shape[1]:.4f}"])
    return rows


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    x, y = embedded_mnist_split()["train"]
    model = zoo.create_model("test_resnet", in_chans=1, num_classes=10)
    header = ["layer", "D", "squared L2", "cosine", "L2 / cosine", "squared L2 / D"]
    print(f"at initialisation\n{markdown_table(header, balance(model, x[:256]))}")
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for _ in range(a.steps):
        i = torch.randint(len(x), (64,))
        loss = F.cross_entropy(model(x[i]), y[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
    print(f"\nafter {a.steps} ERM steps\n{markdown_table(header, balance(model, x[:256]))}")


if __name__ == "__main__":
    main()
