"""One training step in PyTorch: the reference for bench/train-step.ts (SmallVGG)
and for `repopt bench` (RepOpt-VGG, --model repoptvgg).

    /usr/bin/python3 bench/train_step.py --width 32 [--depth 4] [--batch 32] [--size 32]
        [--warmup 10] [--steps 30] [--reps 1] [--threads N] [--foreach 0|1]
    /usr/bin/python3 bench/train_step.py --model repoptvgg [--mode target|repvgg|hs]
        [--optimizer repsgd|sgd] [--blocks 1,2,4,1] [--widths .75,.75,.75,2.5]
        [--strides 2,2,2,2,2] [--classes 100] [--size 64] [--batch 32] [--channels-last]
        [--warmup 3] [--steps 10] [--threads N]
        [--opt-overhead] [--peak]

RepOpt-VGG (bench/repoptvgg_torch.py, written from the paper, arXiv 2205.15242, with the
release's module names, mirroring src/models/repoptvgg.ts) is trained as
`repopt bench` trains it: SGD(lr 0.1, momentum 0.9, wd 1e-4) with the release's
weight-decay rule; in target mode RepSGD, SGD with Grad Mults from the
Hyper-Search initial scales, applied out of place (g * M) before weight decay.
Modules are built in our order from the same seed, so the final losses agree.

Same net (stem conv3x3 3->C, `depth` conv3x3 C->C, each bias-free with BN and
in-place ReLU, global average pool, linear to 10), same optimizer (SGD lr 0.01,
momentum 0.9, weight decay 1e-4) and the same step: zero_grad(set_to_none=True)
(what ours does: grads set to null), forward, cross entropy, backward, step.
`--foreach` picks PyTorch's SGD implementation; the default (unset) is
PyTorch 1.13's own default, the per-parameter loop.
Prints one JSON line in the format of the TypeScript side.
"""
import argparse
import json
import resource
import statistics
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class ConvBNReLU(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)), inplace=True)


class SmallVGG(nn.Module):
    def __init__(self, in_channels=3, width=32, depth=4, num_classes=10):
        super().__init__()
        layers = [ConvBNReLU(in_channels, width)] + [ConvBNReLU(width, width) for _ in range(depth)]
        self.features = nn.Sequential(*layers)
        self.linear = nn.Linear(width, num_classes)

    def forward(self, x):
        return self.linear(F.adaptive_avg_pool2d(self.features(x), 1).flatten(1))


def main():
    p = argparse.ArgumentParser(allow_abbrev=False)
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--reps", type=int, default=1)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--foreach", type=int, choices=[0, 1], default=None)
    p.add_argument("--model", choices=["smallvgg", "repoptvgg"], default="smallvgg")
    a, rest = p.parse_known_args()
    if a.model == "repoptvgg":
        import repoptvgg_torch  # its own parser and defaults (64x64, 3 warm-up + 10 steps)
        repoptvgg_torch.main(sys.argv[1:])
        return
    if rest:
        p.error(f"unrecognized arguments: {' '.join(rest)}")

    # Python's torch here starts with 1 thread; ours with all cores: always set it.
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)

    model = SmallVGG(width=a.width, depth=a.depth, num_classes=10)
    foreach = None if a.foreach is None else bool(a.foreach)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4, foreach=foreach)
    x = torch.randn(a.batch, 3, a.size, a.size)
    y = torch.randint(0, 10, (a.batch,))

    def step():
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()

    for _ in range(a.warmup):
        step()

    ms_per_step = []
    single = []
    cpu_ms_per_step = []
    for _ in range(a.reps):
        c0 = time.process_time()
        t0 = time.perf_counter()
        for _ in range(a.steps):
            s = time.perf_counter()
            step()
            single.append((time.perf_counter() - s) * 1e3)
        ms_per_step.append((time.perf_counter() - t0) * 1e3 / max(1, a.steps))
        cpu_ms_per_step.append((time.process_time() - c0) * 1e3 / max(1, a.steps))

    with torch.no_grad():
        final_loss = F.cross_entropy(model(x), y).item()

    print(json.dumps({
        "impl": "pytorch" if foreach is None else f"pytorch-foreach={int(foreach)}",
        "width": a.width,
        "depth": a.depth,
        "batch": a.batch,
        "size": a.size,
        "warmup": a.warmup,
        "steps": a.steps,
        "threads": torch.get_num_threads(),
        "msPerStep": ms_per_step,
        "cpuMsPerStep": cpu_ms_per_step,
        "medianStepMs": statistics.median(single) if single else None,
        "maxRSSKiB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "finalLoss": final_loss,
        "runtime": f"python {sys.version.split()[0]}, torch {torch.__version__}",
    }))


if __name__ == "__main__":
    main()
