"""An independent PyTorch reference for repopt's data-parallel training (written for repopt's tests).

The same RepOptimizer-SGD as repopt_reference.py (Grad Mults on the gradient, then
coupled weight decay on kernels, then momentum), run under
torch.nn.parallel.DistributedDataParallel on the Gloo backend with WORLD processes
(broadcast_buffers=False, as the RepOptimizer release), each reading its
DistributedSampler(shuffle=False) shard through a DataLoader with drop_last=True.
DDP averages the gradients in backward; the optimizer then sees the average.
Rank 0 saves its final state dict.

usage: ddp_reference.py INIT.pth SCALES.pth CIFAR100_DIR OUT.pth --blocks ... --widths ...
         [--world 2 --batch-size 4 --lr 0.05 --momentum 0.9 --nesterov --wd 4e-5 --epochs 1]
"""
import argparse
import os
import socket
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from repopt_reference import TargetVGG, grad_mults, read_cifar100, repopt_sgd_step  # noqa: E402


def worker(rank, a, port):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=a.world)
    blocks = [int(v) for v in a.blocks.split(",")]
    widths = [float(v) for v in a.widths.split(",")]
    x, y = read_cifar100(a.data, "train")
    model = TargetVGG(blocks, widths, 100)
    model.load_state_dict(torch.load(a.init), strict=True)
    mults = grad_mults(model, torch.load(a.scales))
    ddp = DistributedDataParallel(model, broadcast_buffers=False)
    data = TensorDataset(x, y)
    sampler = DistributedSampler(data, num_replicas=a.world, rank=rank, shuffle=False)
    loader = DataLoader(data, batch_size=a.batch_size, sampler=sampler, drop_last=True)
    named = dict(model.named_parameters())
    bufs = {}
    model.train()
    for epoch in range(a.epochs):
        sampler.set_epoch(epoch)
        for xb, yb in loader:
            loss = F.cross_entropy(ddp(xb), yb)
            ddp.zero_grad()
            loss.backward()  # DDP: gradients averaged over the ranks here
            repopt_sgd_step(named, mults, bufs, a)
    if rank == 0:
        torch.save(model.state_dict(), a.out)
    dist.barrier()
    dist.destroy_process_group()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("init")
    p.add_argument("scales")
    p.add_argument("data")
    p.add_argument("out")
    p.add_argument("--blocks", required=True)
    p.add_argument("--widths", required=True)
    p.add_argument("--world", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--momentum", type=float, default=0.0)
    p.add_argument("--nesterov", action="store_true")
    p.add_argument("--wd", type=float, default=0.0)
    p.add_argument("--epochs", type=int, default=1)
    a = p.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(worker, args=(a, port), nprocs=a.world, join=True)


if __name__ == "__main__":
    main()
