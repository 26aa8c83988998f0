"""Per-call cost of a trivial op in PyTorch (the reference for bench/op-overhead.ts).

    /usr/bin/python3 bench/op_overhead.py [--n 200000] [--reps 5]

ns per call, median over reps: pyNoop (torch.is_grad_enabled(), a bare binding call),
tensorAdd (a + b; the result freed by refcount), inplaceAdd (c.add_(b)).
"""
import argparse
import json
import statistics
import time

import torch

p = argparse.ArgumentParser()
p.add_argument("--n", type=int, default=200_000)
p.add_argument("--reps", type=int, default=5)
a_ = p.parse_args()
N, REPS = a_.n, a_.reps
torch.set_num_threads(1)


def timed(fn):
    fn(min(N, 20_000))
    ns = []
    for _ in range(REPS):
        t0 = time.perf_counter_ns()
        fn(N)
        ns.append((time.perf_counter_ns() - t0) / N)
    return statistics.median(ns)


a = torch.ones(1)
b = torch.ones(1)


def noop(n):
    f = torch.is_grad_enabled
    for _ in range(n):
        f()


def add(n):
    for _ in range(n):
        a + b


def add_fn(n):
    f = torch.add
    for _ in range(n):
        f(a, b)


def inplace(n):
    c = torch.zeros(1)
    for _ in range(n):
        c.add_(b)


print(json.dumps({
    "impl": "pytorch",
    "n": N,
    "pyNoop": timed(noop),
    "tensorAdd": timed(add),
    "torchAdd": timed(add_fn),
    "inplaceAdd": timed(inplace),
    "runtime": f"torch {torch.__version__}",
}))
