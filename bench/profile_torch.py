"""Where PyTorch's training step spends its time, per kind of op (issue 13's roofline).

    /usr/bin/python3 bench/profile_torch.py [--mode target|repvgg|hs] [--blocks 1,2,4,1]
        [--widths .75,.75,.75,2.5] [--strides 2,2,2,2,2] [--classes 100] [--in-channels 3]
        [--size 64] [--batch 32] [--threads N] [--warmup 3] [--steps 5] [--channels-last]

The model and step of bench/repoptvgg_torch.py (target mode with RepSGD). torch.profiler
records `--steps` steps after the warm-up; each op's self CPU time is attributed to a kind by its
name and to the phase (forward, backward, optimizer) whose record_function range contains it.
Prints one JSON line: ms per step per kind and phase, the profiled step time, and the autograd
engine's own time (its `evaluate_function` wrappers' self time).
"""
import argparse
import json
import os
import sys

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile, record_function

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import repoptvgg_torch as R  # noqa: E402


def kind_of(name, phase):
    n = name.lower()
    if phase == "optimizer":
        return "optimizer"
    if "conv" in n:
        return "conv " + ("bwd" if "backward" in n or phase == "backward" else "fwd")
    if "batch_norm" in n:
        return "BN " + ("bwd" if phase == "backward" else "fwd")
    if "relu" in n or "threshold" in n or "clamp" in n:
        return "ReLU " + ("bwd" if phase == "backward" else "fwd")
    if any(k in n for k in ("adaptive_avg", "mean", "linear", "addmm", "mm", "nll", "log_softmax", "cross_entropy", "_softmax")):
        return "pool+linear+loss"
    if n.startswith("autograd::engine::evaluate_function"):
        return "autograd engine"
    if any(k in n for k in ("add", "mul", "sum")):
        return "branch add/scale " + ("bwd" if phase == "backward" else "fwd")
    return "other"


def main():
    p = argparse.ArgumentParser(allow_abbrev=False)
    p.add_argument("--mode", choices=["target", "repvgg", "hs"], default="target")
    p.add_argument("--blocks", type=R.ints, default=[1, 2, 4, 1])
    p.add_argument("--widths", type=R.floats, default=[0.75, 0.75, 0.75, 2.5])
    p.add_argument("--strides", type=R.ints, default=[2, 2, 2, 2, 2])
    p.add_argument("--classes", type=int, default=100)
    p.add_argument("--in-channels", type=int, default=3)
    p.add_argument("--size", "--image-size", dest="size", type=int, default=64)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--channels-last", action="store_true")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model = R.RepOptVGG(a.blocks, a.widths, a.strides, a.classes, a.mode, a.in_channels)
    opt = R.build_optimizer(model, "repsgd" if a.mode == "target" else "sgd")
    x = torch.randn(a.batch, a.in_channels, a.size, a.size)
    if a.channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, a.classes, (a.batch,))

    def step():
        opt.zero_grad(set_to_none=True)
        with record_function("phase:forward"):
            loss = F.cross_entropy(model(x), y)
        with record_function("phase:backward"):
            loss.backward()
        with record_function("phase:optimizer"):
            opt.step()

    for _ in range(a.warmup):
        step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(a.steps):
            with record_function("phase:step"):
                step()
    events = list(prof.events())
    ranges = {"forward": [], "backward": [], "optimizer": [], "step": []}
    for e in events:
        if e.name.startswith("phase:"):
            ranges[e.name[6:]].append((e.time_range.start, e.time_range.end))

    def phase_of(e):
        t = e.time_range.start
        for ph in ("forward", "backward", "optimizer"):
            if any(s <= t < f for s, f in ranges[ph]):
                return ph
        return "other"

    per_kind = {}
    for e in events:
        if e.name.startswith("phase:"):
            continue
        ph = phase_of(e)
        k = kind_of(e.name, ph)
        per_kind[k] = per_kind.get(k, 0.0) + e.self_cpu_time_total / 1e3 / a.steps
    step_ms = sum(f - s for s, f in ranges["step"]) / 1e3 / a.steps
    phases = {ph: sum(f - s for s, f in ranges[ph]) / 1e3 / a.steps for ph in ("forward", "backward", "optimizer")}
    print(json.dumps({"impl": "pytorch", "mode": a.mode, "batch": a.batch, "size": a.size, "channelsLast": a.channels_last,
                      "threads": torch.get_num_threads(), "profiledStepMs": step_ms, "phasesMs": phases,
                      "perKindMs": dict(sorted(per_kind.items(), key=lambda kv: -kv[1]))}))


if __name__ == "__main__":
    main()
