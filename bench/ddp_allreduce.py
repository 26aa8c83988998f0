"""PyTorch's side of bench/run-ddp.mjs: Gloo allreduce of the same gradient-shaped tensors, DDP's way
(flat buckets of --bucket-mb, each divided by the world size then summed, all in flight, then copied back).

usage: ddp_allreduce.py SHAPES.json --world 2 --iters 10 --warmup 2 --bucket-mb 25
"""
import argparse
import json
import socket
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def buckets(tensors, cap):
    out, cur, size = [], [], 0
    for t in tensors:
        b = t.numel() * t.element_size()
        if cur and size + b > cap:
            out.append(cur)
            cur, size = [], 0
        cur.append(t)
        size += b
    if cur:
        out.append(cur)
    return out


def average(grads, cap, world):
    flats, works, groups = [], [], buckets(grads, cap)
    for g in groups:
        flat = torch.cat([t.reshape(-1) for t in g]) if len(g) > 1 else g[0]
        flat.div_(world)
        flats.append(flat)
        works.append(dist.all_reduce(flat, async_op=True))
    for w in works:
        w.wait()
    for g, flat in zip(groups, flats):
        if len(g) > 1:
            off = 0
            for t in g:
                t.copy_(flat[off:off + t.numel()].view_as(t))
                off += t.numel()


def worker(rank, a, port, shapes):
    torch.set_num_threads(a.threads)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=a.world)
    torch.manual_seed(rank)
    grads = [torch.randn(s) for s in shapes]
    cap = a.bucket_mb * 1024 * 1024
    for _ in range(a.warmup):
        average(grads, cap, a.world)
    dist.barrier()
    times = []
    for _ in range(a.iters):
        t0 = time.perf_counter()
        average(grads, cap, a.world)
        times.append((time.perf_counter() - t0) * 1000)
    dist.barrier()
    if rank == 0:
        nbytes = sum(g.numel() for g in grads) * 4
        med = sorted(times)[len(times) // 2]
        print(json.dumps({"impl": "pytorch", "world": a.world, "bytes": nbytes, "tensors": len(grads), "bucketMiB": a.bucket_mb,
                          "msMedian": med, "gbPerSec": nbytes / (med / 1000) / 1e9, "times": times}))
    dist.destroy_process_group()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("shapes")
    p.add_argument("--world", type=int, default=2)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--bucket-mb", type=int, default=25)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    with open(a.shapes) as f:
        shapes = json.load(f)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(worker, args=(a, port, shapes), nprocs=a.world, join=True)


if __name__ == "__main__":
    main()
