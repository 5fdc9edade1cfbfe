"""Cost of NFM (thesis ch. 10) against its plain backbone: train step, eval forward, activation memory.

    python benchmarks/nfm_overhead.py                       # nfm_preactresnet18 1 and 2 passes, batch 64x3x32x32,
                                                            # at 1 and 2 threads (the goal table of docs/nfm.md)
    python benchmarks/nfm_overhead.py --variants p2 p2:share_kv=False p2:topk_rule=reference p2:scale=sqrt \\
        p2:out_layers=conv3x3 p2:pass_init=independent p2:attend=all p2:+bf16 p2:+channels_last --threads 1
                                                            # what each option costs (docs/nfm.md, "Options")
    python benchmarks/nfm_overhead.py --device cuda --variants p1 p2 p2:+compile --compile-backbone
                                                            # on a GPU, with and without torch.compile

Every variant is timed in this process, interleaved round by round with the plain backbone (so load from
other jobs hits them alike), at each ``--threads`` setting in turn: one full training step (forward,
cross-entropy, backward, SGD step) and one eval-mode forward under ``torch.no_grad``. Each call is timed
twice: by this process's CPU time (steady when other jobs load the machine; at 2 threads it is the work of
both threads, not the latency) and by wall time (what a user waits for; noisy under load). Printed per
thread count: median CPU milliseconds, and the ratio of medians to the backbone by CPU time and by wall
time (on CUDA only wall time). Memory: the bytes of the activations autograd saves for the backward of one
training step (parameters excluded; the training-memory peak above the weights on CPU); on CUDA also
``torch.cuda.max_memory_allocated`` of a training step and of an eval forward.

A variant is ``p<passes>`` followed by ``:key=value`` model options (``nfm_``-less names of the ``nfm_*``
entrypoints' keyword arguments: ``share_kv``, ``topk_rule``, ``scale``, ``out_layers``, ``pass_init``,
``attend``, ``pad``, ``top_k``, ...; ``scale=sqrt`` means ``d_k ** -0.5``) and ``:+flag`` run modes:
``+compile`` (``compile_blocks=True``: ``torch.compile`` of the attention blocks; the first steps compile),
``+bf16`` (``torch.autocast`` bfloat16 for the NFM model and for its own copy of the backbone),
``+channels_last`` (model and input in channels-last memory format, backbone likewise).
Goals (issue 20): 1 pass <= 1.2x, 2 passes <= 2.4x the backbone's train step. On the CPU, freed memory is
kept in the process as :func:`zoo.engine.fit` does (``--allocator retain``, the default; ``--allocator
default`` measures glibc's default, under which the NFM model faults its large tensors in again every step).
"""
from __future__ import annotations

import ast
import contextlib
import statistics
import time
from typing import Any, Callable, Dict, List, Tuple

import torch
import torch.nn.functional as F
from timing import image_batch, image_parser, interleave, prepare

import zoo
from zoo.engine import markdown_table, retain_freed_memory

FLAGS = ("compile", "bf16", "channels_last")


def parse_variant(spec: str) -> Tuple[Dict[str, Any], Tuple[str, ...]]:
    """``"p2:share_kv=False:+bf16"`` -> ``({"nfm_passes": 2, "nfm_share_kv": False}, ("bf16",))``."""
    head, *parts = spec.split(":")
    if not head.startswith("p") or not head[1:].isdigit():
        raise SystemExit(f"variant {spec!r}: must start with p<passes>, e.g. p2 or p1:share_kv=False")
    kw: Dict[str, Any] = {"nfm_passes": int(head[1:])}
    flags = []
    for part in parts:
        if part.startswith("+"):
            if part[1:] not in FLAGS:
                raise SystemExit(f"variant {spec!r}: unknown flag {part!r}; allowed: {', '.join('+' + f for f in FLAGS)}")
            flags.append(part[1:])
            continue
        key, sep, val = part.partition("=")
        if not sep:
            raise SystemExit(f"variant {spec!r}: {part!r} is not key=value or +flag")
        try:
            value = ast.literal_eval(val)
        except (ValueError, SyntaxError):
            value = val
        if key == "scale" and value == "sqrt":
            value = "inv_sqrt_d_k"
        name = key if key in ("d_k", "d_v", "num_heads", "top_k", "hidden_dim", "batch_norm", "scale", "topk_rule",
                              "out_layers", "pad") else f"nfm_{key}"
        kw[name] = value
    if "compile" in flags:
        kw["nfm_compile_blocks"] = True
    return kw, tuple(flags)


def saved_bytes(fn: Callable[[], torch.Tensor], params) -> int:
    """Bytes of the distinct tensor storages autograd saves while ``fn`` runs (parameters excluded)."""
    skip = {p.untyped_storage().data_ptr() for p in params}
    seen: Dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        st = t.untyped_storage()
        if st.data_ptr() not in skip:
            seen[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn().backward()
    return sum(seen.values())


def main() -> None:
    p = image_parser(__doc__, model="preactresnet18", model_flag="--backbone", repeats=7,
                     model_help="plain backbone; its NFM version is nfm_<name>", thread_list=True)  # a table per count
    p.add_argument("--variants", nargs="+", default=["p1", "p2"],
                   help="p<passes>[:key=value ...][:+flag ...] (see above); default: the 1- and 2-pass models")
    p.add_argument("--warmup", type=int, default=2, help="untimed rounds first (more with +compile)")
    p.add_argument("--compile-backbone", action="store_true", help="also time torch.compile(backbone)")
    p.add_argument("--allocator", choices=("retain", "default"), default="retain",
                   help="CPU malloc: 'retain' freed memory as zoo.engine.fit does (zoo.engine.retain_freed_memory), "
                        "or glibc's 'default', which faults large tensors in again every step "
                        "(benchmarks/cpu_allocator.py compares the two)")
    a = p.parse_args()
    device = prepare(a)                                          # checks --threads
    allocator = "retained" if a.allocator == "retain" and retain_freed_memory(device) else "default"
    kw = dict(in_chans=a.chans, num_classes=a.classes)
    batch = image_batch(a, device)

    def build(name: str, extra: Dict[str, Any], flags: Tuple[str, ...]):
        torch.manual_seed(0)
        m = zoo.create_model(name, **kw, **extra).to(device)
        if "channels_last" in flags:
            m = m.to(memory_format=torch.channels_last)
        return m

    entries: Dict[str, Tuple[torch.nn.Module, Tuple[str, ...], str]] = {}   # label -> (model, flags, baseline)
    entries[a.backbone] = (build(a.backbone, {}, ()), (), a.backbone)
    if a.compile_backbone:
        entries[f"{a.backbone} (torch.compile)"] = (torch.compile(build(a.backbone, {}, ())), (), a.backbone)
    for spec in a.variants:
        extra, flags = parse_variant(spec)
        base = a.backbone
        for f in ("bf16", "channels_last"):
            if f in flags:                               # the backbone under the same mode: ratios compare like with like
                base = f"{a.backbone} (+{f})"
                if base not in entries:
                    entries[base] = (build(a.backbone, {}, (f,)), (f,), a.backbone)
        entries[f"nfm_{a.backbone} {spec}"] = (build(f"nfm_{a.backbone}", extra, flags), flags, base)

    def context(flags: Tuple[str, ...]):
        if "bf16" in flags:
            return torch.autocast(device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def inputs(flags: Tuple[str, ...]) -> torch.Tensor:
        return batch["x"].contiguous(memory_format=torch.channels_last) if "channels_last" in flags else batch["x"]

    def loss_of(model, flags):
        def fn():
            with context(flags):
                out = model(inputs(flags))
            return F.cross_entropy(out.float(), batch["y"])
        return fn

    def train_step(model, flags):
        opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
        fn = loss_of(model, flags)

        def step(i: int) -> None:
            model.train()
            loss = fn()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return step

    def eval_step(model, flags):
        def step(i: int) -> None:
            model.eval()
            with torch.no_grad(), context(flags):
                model(inputs(flags))
        return step

    steps = {}
    for label, (m, flags, _) in entries.items():
        steps[("train", label)] = train_step(m, flags)
        steps[("eval", label)] = eval_step(m, flags)

    memory: Dict[str, List[str]] = {}
    for label, (m, flags, _) in entries.items():
        m.train()
        mem = [f"{saved_bytes(loss_of(m, flags), m.parameters()) / 2 ** 20:.0f}"]
        if device.type == "cuda":
            for mode in ("train", "eval"):
                torch.cuda.synchronize(device)
                torch.cuda.reset_peak_memory_stats(device)
                steps[(mode, label)](0)
                torch.cuda.synchronize(device)
                mem.append(f"{torch.cuda.max_memory_allocated(device) / 2 ** 20:.0f}")
        memory[label] = mem
        m.zero_grad(set_to_none=True)

    mem_cols = ["saved for backward (MiB)"] + (["CUDA peak train (MiB)", "CUDA peak eval (MiB)"]
                                                if device.type == "cuda" else [])
    cpu_clock = device.type == "cpu"
    for threads in a.threads:
        if device.type == "cpu":
            torch.set_num_threads(threads)
        wall: Dict[str, List[float]] = {}

        def walled(name: str, fn):
            def step(i: int) -> None:
                t0 = time.perf_counter()
                fn(i)
                wall.setdefault(name, []).append(time.perf_counter() - t0)
            return step

        named = {f"{mode}\0{label}": walled(f"{mode}\0{label}", fn) for (mode, label), fn in steps.items()}
        times = interleave(named, a.repeats, device, warmup=a.warmup,
                           clock=time.process_time if cpu_clock else time.perf_counter)
        wall = {k: v[a.warmup:] for k, v in wall.items()}
        med = {k: statistics.median(v) for k, v in times.items()}
        wmed = {k: statistics.median(v) for k, v in wall.items()}
        rows = []
        for label, (m, flags, base) in entries.items():
            params = sum(p.numel() for p in m.parameters()) / 1e6
            row = [label, f"{params:.2f}"]
            for mode in ("train", "eval"):
                k, kb = f"{mode}\0{label}", f"{mode}\0{base}"
                row += [f"{1000 * med[k]:.0f}", f"{med[k] / med[kb]:.3f}x"]
                if cpu_clock:
                    row.append(f"{wmed[k] / wmed[kb]:.3f}x")
            rows.append(row + memory[label])
        threads_txt = threads if device.type == "cpu" else "n/a"
        clock = "CPU time" if cpu_clock else "wall time"
        print(f"\n{a.backbone}, batch {a.batch}x{a.chans}x{a.size}x{a.size}, {device}, threads {threads_txt}, "
              f"{'malloc ' + allocator + ', ' if device.type == 'cpu' else ''}"
              f"median of {a.repeats} rounds after {a.warmup} warm-up, ms and ratios by {clock}"
              f"{' (and by wall time)' if cpu_clock else ''}; goals: 1 pass <= 1.2x, 2 passes <= 2.4x train")
        cols = ["train ms", "train ratio"] + (["train ratio (wall)"] if cpu_clock else [])
        cols += ["eval ms", "eval ratio"] + (["eval ratio (wall)"] if cpu_clock else [])
        print(markdown_table(["model", "params (M)"] + cols + mem_cols, rows), flush=True)


if __name__ == "__main__":
    main()
