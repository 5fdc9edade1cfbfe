"""The papers' results that :mod:`tasks.reproduce` runs, one :class:`Part` each.

A part names the paper's table or figure, builds the typed configs of the harness runs behind it for each
scale (``cpu``: the harness's CPU-scale default; ``paper``: the papers' sizes; smoke: a few steps), and turns
their ``results.json`` into :class:`Claim` rows: what the paper claims, the paper's numbers, ours (mean ± std
over seeds), and whether the paper's *direction* holds in ours. A claim that one model beats another
(:func:`beats`) holds when the mean difference in the paper's direction exceeds one standard error of the
difference over seeds, fails when it is as far the other way, and is *within noise* (``holds=None``) in
between; with one seed the sign decides. The standard deviations are shown beside every mean.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

__all__ = ["Claim", "Part", "PARTS", "register"]


@dataclass
class Claim:
    claim: str
    paper: str
    ours: str
    holds: Optional[bool]


@dataclass(frozen=True)
class Part:
    id: str
    title: str
    paper: str
    runs: Callable[[str, bool], Dict[str, Any]]                # (scale, smoke) -> {run name: harness Config}
    claims: Callable[[Dict[str, dict]], List[Claim]]           # {run name: results.json} -> claims
    figures: Tuple[str, ...] = ()                              # files under out/<part>/ to show
    note: str = ""
    cpu_minutes: float = 1.0          # one run's minutes in one process at CPU scale (measured); orders the schedule


PARTS: Dict[str, Part] = {}


def register(part: Part) -> Part:
    PARTS[part.id] = part
    return part


# --- helpers ---------------------------------------------------------------------------------------------
def ms(mean: float, std: Optional[float] = None, n: Optional[int] = None, digits: int = 3) -> str:
    """``0.912 ± 0.011 (3 seeds)``."""
    s = f"{mean:.{digits}f}"
    if std is not None and n and n > 1:
        s += f" ± {std:.{digits}f}"
    if n:
        s += f" ({n} seed{'s' if n > 1 else ''})"
    return s


Stat = Tuple[float, float, int]                                # (mean, std over seeds, seeds)


def beats(a: Stat, b: Stat, higher: bool = True) -> Optional[bool]:
    """Does ``a`` beat ``b`` (higher or, with ``higher=False``, lower mean)? ``True`` when the difference is more
    than one standard error ``sqrt(s_a^2 / n_a + s_b^2 / n_b)`` in that direction, ``False`` when it is as far
    the other way, ``None`` (within noise) in between; with one seed each, the sign of the difference."""
    diff = (a[0] - b[0]) * (1.0 if higher else -1.0)
    se = (a[1] ** 2 / a[2] + b[1] ** 2 / b[2]) ** 0.5 if min(a[2], b[2]) > 1 else 0.0
    if diff > se:
        return True
    return False if diff < -se else None


def _stat(entry: dict, key: str, n: int) -> Stat:
    """``(entry[key], entry[key + "_std"], n)``: a harness result's mean with its spread over ``n`` seeds."""
    return float(entry[key]), float(entry[f"{key}_std"]), n


def _classify_stat(results: dict, method: str, metric: str) -> Stat:
    r = results[method]
    return float(r[metric]), float(r["_std"][metric]), len(r["_per_seed"])


def _cls(method: str, metric: str, results: dict) -> str:
    return ms(*_classify_stat(results, method, metric))


SMOKE_CLASSIFY: Dict[str, Any] = dict(steps=3, eval_every=0, eval_size=50, seeds=1, fgsm_eps=[0.1], noise_std=[0.3])


# --- copying (thesis Table 1 left, Fig. 2) ----------------------------------------------------------------
def _copying_runs(scale: str, smoke: bool) -> Dict[str, Any]:
    from tasks import copying

    if smoke:
        return {"main": copying.Config(steps=3, eval_size=16, eval_every=0, seeds=1, train_len=5, test_lens=[5, 20],
                                       compile=False, model_kwargs='{"hidden_size": 12, "embed_dim": 8}')}
    if scale == "paper":
        return {"main": copying.Config(models=["rim_lstm_seq", "lstm_seq"], steps=20000, lr=[1e-3],
                                       schedule=["constant"], warmup=0.0, seeds=3)}
    return {"main": copying.Config()}


def _copying_claims(results: Dict[str, dict]) -> List[Claim]:
    res = results["main"]
    models = [m for m in res if not m.startswith("_")]
    rim = next((m for m in models if m.startswith("rim")), None)
    base = next((m for m in models if not m.startswith("rim")), None)
    cfg = res["_meta"]["config"]
    t_train, t_test = str(cfg["train_len"]), str(max(cfg["test_lens"]))

    def acc(m: str, T: str) -> Tuple[float, float, int]:
        r = res[m][T]
        return r["acc_recall"], r["std"]["acc_recall"], len(r["per_seed"])

    claims = []
    if rim:
        a, b = acc(rim, t_train), acc(rim, t_test)
        claims.append(Claim(f"RIMs recall at T={t_test} as at T={t_train} (train)", "CE 0.00 at both",
                            f"recall acc {ms(*a)} -> {ms(*b)}", b[0] >= a[0] - 0.02))
    if base:
        a, b = acc(base, t_train), acc(base, t_test)
        claims.append(Claim(f"the LSTM degrades from T={t_train} to T={t_test}", "CE 0.00 -> 4.32",
                            f"recall acc {ms(*a)} -> {ms(*b)}", b[0] < a[0] - 0.02))
    if rim and base:
        r, l_ = acc(rim, t_test), acc(base, t_test)
        claims.append(Claim(f"RIMs beat the LSTM at T={t_test}", "CE 0.00 vs 4.32",
                            f"recall acc RIM {ms(*r)} vs LSTM {ms(*l_)}", beats(r, l_)))
    return claims


register(Part("copying", "Copying: train T=50, test T=200", "thesis Table 1 (left), Fig. 2", _copying_runs,
              _copying_claims, figures=("main/activations.png", "main/curves.png"), cpu_minutes=10.6))


# --- Manifold Mixup (thesis ch. 4, Tables 1-2, 7) --------------------------------------------------------
def _mixup_runs(scale: str, smoke: bool) -> Dict[str, Any]:
    from tasks import classify

    methods = ["erm", "input_mixup", "manifold_mixup"]
    if smoke:
        return {"main": classify.Config(method=methods, evaluations=["clean", "fgsm"], **SMOKE_CLASSIFY)}
    if scale == "paper":
        return {"main": classify.Config(method=methods, dataset="cifar10", download=True, model="preactresnet18", steps=200 * 390,
                                        batch_size=128, lr=0.1, seeds=5, evaluations=["clean", "fgsm"],
                                        method_kwargs='{"input_mixup": {"alpha": 1.0}, "manifold_mixup": {"alpha": 2.0}}')}
    return {"main": classify.Config(method=methods, steps=1000, seeds=3, evaluations=["clean", "fgsm"])}


def _mixup_claims(results: Dict[str, dict]) -> List[Claim]:
    r = results["main"]
    nll = {m: _classify_stat(r, m, "nll") for m in ("erm", "input_mixup", "manifold_mixup")}
    acc = {m: _classify_stat(r, m, "acc") for m in nll}
    fgsm_key = next(k for k in r["manifold_mixup"] if k.startswith("fgsm/"))
    fg = {m: _classify_stat(r, m, fgsm_key) for m in nll}
    return [
        Claim("Manifold Mixup has a lower test NLL than no mixup", "CIFAR-10 PreActResNet18: 0.190 -> 0.137",
              f"NLL {ms(*nll['erm'])} -> {ms(*nll['manifold_mixup'])}",
              beats(nll["manifold_mixup"], nll["erm"], higher=False)),
        Claim("Manifold Mixup is more accurate than Input Mixup", "test error 3.82 % vs 2.95 %",
              f"acc Manifold {ms(*acc['manifold_mixup'])} vs Input {ms(*acc['input_mixup'])}",
              beats(acc["manifold_mixup"], acc["input_mixup"])),
        Claim("Manifold Mixup is more accurate than no mixup", "test error 4.83 % vs 2.95 %",
              f"acc Manifold {ms(*acc['manifold_mixup'])} vs none {ms(*acc['erm'])}",
              beats(acc["manifold_mixup"], acc["erm"])),
        Claim(f"Manifold Mixup resists FGSM better than Input Mixup ({fgsm_key})", "Table 7: CIFAR-10 77.5 vs 40.6 % "
              "(eps 0.03)", f"acc Manifold {ms(*fg['manifold_mixup'])} vs Input {ms(*fg['input_mixup'])}",
              beats(fg["manifold_mixup"], fg["input_mixup"])),
    ]


register(Part("manifold_mixup", "Manifold Mixup vs Input Mixup vs none", "thesis ch. 4, Tables 1, 2, 7",
              _mixup_runs, _mixup_claims, figures=("main/robustness.png",),
              note="CPU scale: test_resnet on the 5,000 embedded digits, 1,000 SGD steps; paper scale: "
                   "PreActResNet-18 on CIFAR-10 (`--data-root` with CIFAR-10 or `--download`).", cpu_minutes=7.9))


# --- ICT (thesis ch. 6, Table 1) ---------------------------------------------------------------------------
def _ict_runs(scale: str, smoke: bool) -> Dict[str, Any]:
    from tasks import classify

    if smoke:
        return {"main": classify.Config(method=["erm", "ict"], labels_per_class=10, evaluations=["clean"],
                                        batch_size=16, unlabeled_batch_size=16, **SMOKE_CLASSIFY)}
    if scale == "paper":
        return {"main": classify.Config(method=["erm", "ict"], dataset="cifar10", download=True, model="wrn28_2", labels_per_class=100,
                                        steps=400 * 40, batch_size=100, unlabeled_batch_size=100, lr=0.1, seeds=3,
                                        evaluations=["clean"], method_kwargs='{"ict": {"w_max": 10.0, "alpha": 0.2}}')}
    return {"main": classify.Config(method=["erm", "ict"], labels_per_class=10, steps=1000, seeds=3,
                                    evaluations=["clean"])}


def _ict_claims(results: Dict[str, dict]) -> List[Claim]:
    r = results["main"]
    erm, ict = _classify_stat(r, "erm", "acc"), _classify_stat(r, "ict", "acc")
    labels = r["_meta"]["config"]["labels_per_class"]
    return [Claim(f"ICT with {labels} labels per class beats supervised training on the labels alone",
                  "CIFAR-10, 1,000 labels: error 39.95 % -> 15.48 %", f"acc {ms(*erm)} -> {ms(*ict)}", beats(ict, erm))]


register(Part("ict", "Interpolation Consistency Training, few labels", "thesis ch. 6, Table 1", _ict_runs,
              _ict_claims, note="CPU scale: 10 labels per class of the embedded digits, the rest unlabeled.",
              cpu_minutes=8.4))


# --- IRL and DAI (IRL paper Table 1; DAI paper Figs. 2-4) -------------------------------------------------
def _invariance_runs(scale: str, smoke: bool) -> Dict[str, Any]:
    from tasks import classify

    evals = ["clean", "noise", "invariance"]
    if smoke:
        return {"main": classify.Config(method=["erm", "irl", "dai"], evaluations=evals, **SMOKE_CLASSIFY)}
    steps, seeds = (200 * 390, 3) if scale == "paper" else (500, 3)
    kw: Dict[str, Any] = (dict(dataset="cifar10", download=True, model="wrn28_10", batch_size=128, lr=0.1)
                          if scale == "paper" else {})
    return {"main": classify.Config(method=["erm", "irl", "dai"], steps=steps, seeds=seeds, evaluations=evals,
                                    eval_every=0, **kw)}


def _invariance_claims(results: Dict[str, dict]) -> List[Claim]:
    r = results["main"]
    noise_key = "noise/0.3" if "noise/0.3" in r["erm"] else next(k for k in r["erm"] if k.startswith("noise/"))
    inv_key = max((k for k in r["erm"] if k.startswith("inv/")), key=lambda k: int(k.split("/")[1]))
    e, i = _classify_stat(r, "erm", noise_key), _classify_stat(r, "irl", noise_key)
    ie, id_ = _classify_stat(r, "erm", inv_key), _classify_stat(r, "dai", inv_key)
    ce, cd = _classify_stat(r, "erm", "acc"), _classify_stat(r, "dai", "acc")
    return [
        Claim(f"IRL is more accurate under input noise than standard training ({noise_key})",
              "WRN-28-10 CIFAR-10, in-domain noise: error 5.43 % -> 4.46 %", f"acc {ms(*e)} -> {ms(*i)}", beats(i, e)),
        Claim(f"DAI makes the top layer more invariant to augmentations ({inv_key}, DAI eq. 2)",
              "All-CNN/WRN: invariance rises with depth, baseline stays near pixel level",
              f"score {ms(*ie)} -> {ms(*id_)}", beats(id_, ie)),
        Claim("DAI keeps clean accuracy", "Table 1: similar accuracy (All-CNN CIFAR-10 +0.3 %)",
              f"acc {ms(*ce)} -> {ms(*cd)}", cd[0] >= ce[0] - 0.01),
    ]


register(Part("invariance", "IRL and data augmentation invariance", "IRL Table 1; DAI Table 1, Figs. 2-4",
              _invariance_runs, _invariance_claims, figures=("main/robustness.png",), cpu_minutes=6.5))


# --- Lipschitz (Lipschitz paper Tables 3-5) ----------------------------------------------------------------
def _lipschitz_runs(scale: str, smoke: bool) -> Dict[str, Any]:
    from tasks import classify

    evals = ["clean", "noise", "lipschitz"]
    if smoke:
        return {"main": classify.Config(method=["erm", "lipschitz"], evaluations=evals, **SMOKE_CLASSIFY)}
    return {"main": classify.Config(method=["erm", "lipschitz"], steps=1000, seeds=3, evaluations=evals, eval_every=0)}


def _lipschitz_claims(results: Dict[str, dict]) -> List[Claim]:
    r = results["main"]
    noise_key = "noise/0.3" if "noise/0.3" in r["erm"] else next(k for k in r["erm"] if k.startswith("noise/"))
    e, l_ = _classify_stat(r, "erm", noise_key), _classify_stat(r, "lipschitz", noise_key)
    ce, cl = _classify_stat(r, "erm", "acc"), _classify_stat(r, "lipschitz", "acc")
    le, ll = _classify_stat(r, "erm", "lipschitz"), _classify_stat(r, "lipschitz", "lipschitz")
    return [
        Claim(f"Lipschitz training is more accurate under Gaussian noise ({noise_key})",
              "ResNet-20 CIFAR-10, noise std 0.1: 50.67 % -> 68.34 %", f"acc {ms(*e)} -> {ms(*l_)}", beats(l_, e)),
        Claim("clean accuracy is about unchanged", "80.44 % -> 78.88 % (same table)", f"acc {ms(*ce)} -> {ms(*cl)}",
              cl[0] >= ce[0] - 0.02),
        Claim("the network's local Lipschitz estimate falls", "Theorem 1 (smaller K_f, more stable)",
              f"estimate {ms(*le)} -> {ms(*ll)}", beats(ll, le, higher=False)),
    ]


register(Part("lipschitz", "Lipschitz continuity training", "Lipschitz paper Tables 3-5", _lipschitz_runs,
              _lipschitz_claims, cpu_minutes=7.1))


# --- semantic noise modeling (SNM paper Table 1) -----------------------------------------------------------
def _snm_runs(scale: str, smoke: bool) -> Dict[str, Any]:
    from tasks import classify

    base: Dict[str, Any] = dict(model="snm_mnist_convnet", method=["erm", "semantic_noise"], labels_per_class=20,
                                optimizer="adam", lr=2e-3, evaluations=["clean", "noise"])
    if smoke:
        return {"main": classify.Config(**{**base, **SMOKE_CLASSIFY})}
    return {"main": classify.Config(**base, steps=1000, seeds=3, eval_every=0)}


def _snm_claims(results: Dict[str, dict]) -> List[Claim]:
    r = results["main"]
    e, s = _classify_stat(r, "erm", "acc"), _classify_stat(r, "semantic_noise", "acc")
    return [Claim("semantic noise modeling beats the feed-forward baseline with few labels",
                  "MNIST, 20 per class: error 16.00 % -> 10.59 %", f"acc {ms(*e)} -> {ms(*s)}", beats(s, e))]


register(Part("semantic_noise", "Semantic noise modeling, 20 labels per class", "SNM paper Table 1", _snm_runs,
              _snm_claims, cpu_minutes=3.2))


# --- NFM: random-attention ablation (thesis 10.4) ----------------------------------------------------------
def _nfm_ablation_runs(scale: str, smoke: bool) -> Dict[str, Any]:
    from tasks import nfm_attention

    if smoke:
        return {"main": nfm_attention.Config(steps=3, eval_size=16)}
    return {"main": nfm_attention.Config(steps=400, seeds=3)}


def _nfm_ablation_claims(results: Dict[str, dict]) -> List[Claim]:
    r = results["main"]
    n = len(r["acc_per_seed"])
    a, b = (r["acc"], r["acc_std"], n), (r["acc_random_attention"], r["acc_random_attention_std"], n)
    return [Claim("random attention at test time hurts a trained NFM", "CIFAR-10: 96.5 % -> 88.5 %",
                  f"acc {ms(*a)} -> {ms(*b)}", b[0] < a[0] - 0.01)]


register(Part("nfm_random_attention", "NFM random-attention ablation", "thesis 10.4", _nfm_ablation_runs,
              _nfm_ablation_claims, figures=("main/nfm_attention.png",),
              note="CPU scale: nfm_mnist_convnet on the embedded digits.", cpu_minutes=4.6))



# --- sequential MNIST at other resolutions (thesis Table 1 right) -----------------------------------------
def _seq_mnist_runs(scale: str, smoke: bool) -> Dict[str, Any]:
    from tasks import seq_mnist

    if smoke:
        return {"main": seq_mnist.Config(steps=3, seeds=1, compile=False, train_resolution=5, test_resolutions=[5, 7], val_size=20,
                                         test_size=20, eval_every=0, model_kwargs='{"hidden_size": 12, "embed_dim": 8}')}
    if scale == "paper":
        return {"main": seq_mnist.Config(models=["rim_lstm_seq", "lstm_seq"], dataset="mnist", download=True,
                                         steps=100 * 750, seeds=3, eval_every=750, lr=[7e-4], schedule="constant",
                                         batch_size=64)}
    return {"main": seq_mnist.Config()}


def _seq_mnist_claims(results: Dict[str, dict]) -> List[Claim]:
    from tasks.seq_mnist import PAPER

    res = results["main"]
    models = [m for m in res if not m.startswith("_") and isinstance(res[m], dict)]
    rim = next((m for m in models if m.startswith("rim")), None)
    base = next((m for m in models if not m.startswith("rim")), None)
    if not (rim and base):
        return []
    cfg = res["_meta"]["config"]
    train, unseen = str(cfg["train_resolution"]), [str(r) for r in cfg["test_resolutions"]
                                                   if r != cfg["train_resolution"]]

    def acc(m: str, r: str) -> Tuple[float, float, int]:
        e = res[m][r]
        return e["acc"], e["acc_std"], len(e["per_seed"])

    claims = [Claim(f"at the training size {train}x{train} both models are close", "not tabulated (Table 1 reports 16-24 only)",
                    f"acc RIM {ms(*acc(rim, train))} vs LSTM {ms(*acc(base, train))}",
                    abs(acc(rim, train)[0] - acc(base, train)[0]) < 0.05)]
    for r in unseen:
        p = PAPER["RIM (paper)"].get(int(r)), PAPER["LSTM (paper)"].get(int(r))
        paper = f"{p[0]:.3f} vs {p[1]:.3f}" if None not in p else "(not in the paper)"
        claims.append(Claim(f"RIMs beat the LSTM at {r}x{r} (never trained)", paper,
                            f"acc RIM {ms(*acc(rim, r))} vs LSTM {ms(*acc(base, r))}", beats(acc(rim, r), acc(base, r))))
    return claims


register(Part("seq_mnist", "Sequential MNIST: train 14x14, test 16/19/24", "thesis Table 1 (right)", _seq_mnist_runs,
              _seq_mnist_claims, figures=("main/accuracy.png", "main/activity.png"), cpu_minutes=23.8))


# --- bouncing balls (thesis Fig. 3) -------------------------------------------------------------------------
def _balls_runs(scale: str, smoke: bool) -> Dict[str, Any]:
    from tasks import bouncing_balls

    if smoke:
        return {"main": bouncing_balls.Config(steps=3, seeds=1, train_sequences=8, test_sequences=2, frames=9,
                                              context=3, resolution=16, eval_every=0,
                                              model_kwargs='{"hidden_size": 12}')}
    if scale == "paper":
        return {"main": bouncing_balls.Config(models=["rim_lstm_balls", "lstm_balls"], resolution=64, frames=51,
                                              context=15, train_sequences=20000, steps=100_000, seeds=3)}
    return {"main": bouncing_balls.Config()}


def _balls_claims(results: Dict[str, dict]) -> List[Claim]:
    res = results["main"]
    models = [m for m in res if not m.startswith("_") and isinstance(res[m], dict)]
    rim = next((m for m in models if m.startswith("rim")), None)
    base = next((m for m in models if not m.startswith("rim")), None)
    if not (rim and base):
        return []
    claims = []
    for test in res[rim]:
        a, b = res[rim][test], res[base][test]
        n = len(a["per_seed"])
        claims.append(Claim(f"RIMs roll out with a lower BCE than the LSTM ({test})", "Fig. 3: lower for RIMs, "
                            "most on 6-8 balls and the curtain",
                            f"BCE RIM {ms(*_stat(a, 'rollout_bce', n), 2)} vs LSTM {ms(*_stat(b, 'rollout_bce', n), 2)}",
                            beats(_stat(a, "rollout_bce", n), _stat(b, "rollout_bce", n), higher=False)))
    return claims


register(Part("bouncing_balls", "Bouncing balls: rollouts on 4, 6-8 balls and behind a curtain", "thesis Fig. 3",
              _balls_runs, _balls_claims, figures=("main/curves.png", "main/filmstrip.png"), cpu_minutes=23.3))


# --- Sort-of-CLEVR (thesis ch. 10, Table 6 / 7) -------------------------------------------------------------
def _clevr_runs(scale: str, smoke: bool) -> Dict[str, Any]:
    from tasks import sort_of_clevr

    if smoke:
        small = '{"*": {"width": 8, "hidden": 16}}'
        return {"main": sort_of_clevr.Config(steps=3, seeds=1, train_images=40, test_images=8, samples=2,
                                             attention_images=4, model_kwargs=small, data_dir=""),
                "holdout": sort_of_clevr.Config(steps=3, seeds=1, train_images=40, test_images=8, samples=2,
                                                attention_images=4, model_kwargs=small, data_dir="", holdout=2)}
    if scale == "paper":
        big = '{"*": {"drop_rate": 0.5}}'
        return {"main": sort_of_clevr.Config(lr=1e-4, batch_size=64, steps=61000, model_kwargs=big),
                "holdout": sort_of_clevr.Config(lr=1e-4, batch_size=64, steps=61000, model_kwargs=big, holdout=2)}
    return {"main": sort_of_clevr.Config(), "holdout": sort_of_clevr.Config(holdout=2)}


def _clevr_claims(results: Dict[str, dict]) -> List[Claim]:
    claims = []
    for run, key, what in (("main", "rel", "relational questions"), ("holdout", "rel_heldout",
                                                                       "relational questions on held-out pairs")):
        res = results.get(run)
        if not res or "sortclevr_cnn" not in res or "nfm_sortclevr_cnn" not in res:
            continue
        a, b = res["sortclevr_cnn"], res["nfm_sortclevr_cnn"]
        if key not in a:
            continue
        n = len(a[f"{key}_per_seed"])
        claims.append(Claim(f"NFM beats the CNN on {what}", "thesis Tables 6-7: NFM higher",
                            f"acc NFM {ms(*_stat(b, key, n))} vs CNN {ms(*_stat(a, key, n))}",
                            beats(_stat(b, key, n), _stat(a, key, n))))
    return claims


register(Part("sort_of_clevr", "Sort-of-CLEVR: relational questions, held-out colour-shape pairs", "thesis ch. 10.4",
              _clevr_runs, _clevr_claims, figures=("main/samples.png",), cpu_minutes=17.2))


# --- multi-digit MNIST (thesis ch. 10) ---------------------------------------------------------------------
def _digits_runs(scale: str, smoke: bool) -> Dict[str, Any]:
    from tasks import multi_digit

    if smoke:
        return {"main": multi_digit.Config(steps=3, seeds=1, test_size=16, samples=2, attention_images=4,
                                           model_kwargs='{"*": {"widths": [4, 8], "strides": [4, 4]}}')}
    if scale == "paper":
        return {"main": multi_digit.Config(data="mnist", download=True, steps=20000,
                                           model_kwargs='{"*": {"widths": [16, 32, 64, 64], "strides": [2, 2, 2, 2]}}')}
    return {"main": multi_digit.Config()}


def _digits_claims(results: Dict[str, dict]) -> List[Claim]:
    res = results["main"]
    if "mnist_convnet" not in res or "nfm_mnist_convnet" not in res:
        return []
    a, b = res["mnist_convnet"], res["nfm_mnist_convnet"]
    claims = []
    for k in a:
        if a[k].get("seen"):
            continue
        n = len(a[k]["exact_acc_per_seed"])
        paper = {"2": "88.4 vs 76.7 %", "4": "66.1 vs 62.6 %", "5": "29.5 vs 24.3 %"}.get(k, "NFM higher")
        claims.append(Claim(f"NFM beats the CNN on {k} digits (a count never trained)", f"Table 5 (1, 3): {paper}",
                            f"exact-set acc NFM {ms(*_stat(b[k], 'exact_acc', n))} vs CNN {ms(*_stat(a[k], 'exact_acc', n))}",
                            beats(_stat(b[k], "exact_acc", n), _stat(a[k], "exact_acc", n))))
    return claims


register(Part("multi_digit", "Multi-digit MNIST: train on some digit counts, test on others", "thesis ch. 10.4",
              _digits_runs, _digits_claims, figures=("main/accuracy_vs_count.png",), cpu_minutes=15.3))


# --- RL: RIMs with novel distractors (thesis ch. 8, MiniGrid) ----------------------------------------------
def _distractor_runs(scale: str, smoke: bool) -> Dict[str, Any]:
    from rl import distractors

    if smoke:
        return {"main": distractors.Config(steps=256, seeds=1, n_envs=2, n_steps=32, eval_every=0, curve_episodes=2,
                                           eval_episodes=4)}
    if scale == "paper":
        return {"main": distractors.Config(steps=2_000_000, seeds=5)}
    return {"main": distractors.Config()}


def _distractor_claims(results: Dict[str, dict]) -> List[Claim]:
    res = results["main"]
    if "rim" not in res or "lstm" not in res:
        return []
    r, l_ = res["rim"]["novel"], res["lstm"]["novel"]
    n = len(r["per_seed"])
    return [Claim("RIMs generalize better than an LSTM to distractors of novel colours", "thesis ch. 8: RIMs higher "
                  "success with new distractors",
                  f"success RIM {ms(*_stat(r, 'success', n), 2)} vs LSTM {ms(*_stat(l_, 'success', n), 2)}",
                  beats(_stat(r, "success", n), _stat(l_, "success", n)))]


register(Part("distractors", "RL: a red ball among distractors of novel colours", "thesis ch. 8 (RL)",
              _distractor_runs, _distractor_claims, figures=("main/curves.png",), cpu_minutes=25.8))
