"""An independent PyTorch reference for RepOpt training (written for repopt's tests).

It follows the paper (Ding et al., ICLR 2023, arXiv 2205.15242): a RepOpt-VGG target model (stage0, stageX.Y blocks of
conv3x3 -> BN -> ReLU, global pool, linear), Grad Mults from the searched scales
(SGD: s^2 on the 3x3, + t^2 at the centre, + 1 on the identity diagonal centre),
and SGD with the mult applied to the gradient before coupled weight decay.
Weight decay only on kernels (conv, linear weights).

usage: repopt_reference.py make INIT.pth SCALES.pth CIFAR100_DIR - --blocks ... --widths ... [--seed S --images N]
       repopt_reference.py train INIT.pth SCALES.pth CIFAR100_DIR OUT.pth
         --blocks 1,1,1,1 --widths 0.25,0.25,0.25,0.25 --batch-size 8
         --lr 0.05 --momentum 0.9 --nesterov --wd 4e-5
"""
import argparse
import math
import os
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

MEAN = (0.5070751592371323, 0.48654887331495095, 0.4409178433670343)
STD = (0.2673342858792401, 0.2564384629170883, 0.27615047132568404)


class Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


class TargetVGG(nn.Module):
    def __init__(self, blocks, widths, num_classes, in_channels=3, strides=(2, 2, 2, 2, 2)):
        super().__init__()
        c0 = min(64, int(64 * widths[0]))
        self.layout = [("stage0", in_channels, c0, strides[0])]
        self.stage0 = Block(in_channels, c0, strides[0])
        cin = c0
        for s, (n, base) in enumerate(zip(blocks, (64, 128, 256, 512)), start=1):
            cout = int(base * widths[s - 1])
            layers = []
            for i in range(n):
                stride = strides[s] if i == 0 else 1
                layers.append(Block(cin, cout, stride))
                self.layout.append((f"stage{s}.{i}", cin, cout, stride))
                cin = cout
            setattr(self, f"stage{s}", nn.Sequential(*layers))
        self.linear = nn.Linear(cin, num_classes)

    def forward(self, x):
        x = self.stage0(x)
        for s in range(1, 5):
            x = getattr(self, f"stage{s}")(x)
        return self.linear(F.adaptive_avg_pool2d(x, 1).flatten(1))


def grad_mults(model, scales):
    mults = {}
    for name, cin, cout, stride in model.layout:
        s = scales[f"{name}.scale_conv.weight"].double()
        t = scales[f"{name}.scale_1x1.weight"].double()
        m = (s ** 2).view(-1, 1, 1, 1).expand(cout, cin, 3, 3).clone()
        m[:, :, 1, 1] += (t ** 2).view(-1, 1)
        if cin == cout and stride == 1:
            m[torch.arange(cout), torch.arange(cout), 1, 1] += 1.0
        mults[f"{name}.conv.weight"] = m.float()
    return mults


def read_cifar100(folder, split):
    raw = np.fromfile(os.path.join(folder, f"{split}.bin"), dtype=np.uint8).reshape(-1, 3074)
    labels = torch.from_numpy(raw[:, 1].astype(np.int64))
    pixels = torch.from_numpy(raw[:, 2:].reshape(-1, 3, 32, 32).copy())
    x = pixels.float() / 255.0
    x = (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    return x, labels


def make(a, blocks, widths):
    """Writes a random init state dict, random scales (some negative) and a CIFAR-100-format train.bin."""
    torch.manual_seed(a.seed)
    model = TargetVGG(blocks, widths, 100)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):  # a non-trivial but valid init
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    torch.save(model.state_dict(), a.init)
    from collections import OrderedDict
    scales = OrderedDict()
    for name, cin, cout, stride in model.layout:
        scales[f"{name}.scale_conv.weight"] = torch.rand(cout) * 1.5 - 0.3
        scales[f"{name}.scale_1x1.weight"] = torch.rand(cout) * 1.5 - 0.3
        if cin == cout and stride == 1:
            scales[f"{name}.scale_identity.weight"] = torch.rand(cout) + 0.5
    torch.save(scales, a.scales)
    os.makedirs(a.data, exist_ok=True)
    n = a.images
    rec = np.zeros((n, 3074), dtype=np.uint8)
    rec[:, 0] = np.random.RandomState(a.seed).randint(0, 20, n)
    rec[:, 1] = np.random.RandomState(a.seed + 1).randint(0, 100, n)
    rec[:, 2:] = np.random.RandomState(a.seed + 2).randint(0, 256, (n, 3072))
    rec.tofile(os.path.join(a.data, "train.bin"))
    rec[: max(1, n // 4)].tofile(os.path.join(a.data, "test.bin"))


def repopt_sgd_step(named, mults, bufs, a):
    """One RepOptimizer-SGD step: Grad Mults on the gradient, then weight decay on kernels, then
    momentum (Nesterov with a.nesterov); bufs holds the momentum buffers between steps."""
    with torch.no_grad():
        for name, prm in named.items():
            g = prm.grad
            if name in mults:
                g = g * mults[name]
            if prm.dim() > 1 and a.wd:
                g = g.add(prm, alpha=a.wd)
            if a.momentum:
                if name not in bufs:
                    bufs[name] = g.clone()
                else:
                    bufs[name].mul_(a.momentum).add_(g)
                g = g.add(bufs[name], alpha=a.momentum) if a.nesterov else bufs[name]
            prm.add_(g, alpha=-a.lr)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("cmd")
    p.add_argument("init")
    p.add_argument("scales")
    p.add_argument("data")
    p.add_argument("out")
    p.add_argument("--blocks", required=True)
    p.add_argument("--widths", required=True)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--momentum", type=float, default=0.0)
    p.add_argument("--nesterov", action="store_true")
    p.add_argument("--wd", type=float, default=0.0)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--images", type=int, default=32)
    a = p.parse_args()
    torch.set_num_threads(1)
    blocks = [int(v) for v in a.blocks.split(",")]
    widths = [float(v) for v in a.widths.split(",")]
    if a.cmd == "make":
        make(a, blocks, widths)
        return
    x, y = read_cifar100(a.data, "train")
    model = TargetVGG(blocks, widths, 100)
    sd = torch.load(a.init)
    model.load_state_dict(sd.get("model", sd) if isinstance(sd, dict) and "model" in sd else sd, strict=True)
    scales = torch.load(a.scales)
    mults = grad_mults(model, scales)
    named = dict(model.named_parameters())
    bufs = {}
    model.train()
    for _ in range(a.epochs):
        for start in range(0, len(x), a.batch_size):
            xb, yb = x[start:start + a.batch_size], y[start:start + a.batch_size]
            loss = F.cross_entropy(model(xb), yb)
            model.zero_grad()
            loss.backward()
            repopt_sgd_step(named, mults, bufs, a)
    torch.save(model.state_dict(), a.out)


if __name__ == "__main__":
    main()
