"""An independent PyTorch RepOpt-GhostNet with the release's state-dict names (written for repopt's tests).

Built from the project's notes on the method (Ding et al., ICLR 2023, arXiv 2205.15242) and RepGhostNet's
architecture (Chen et al. 2022, arXiv 2211.06088), not from the authors' code. A Ghost module `ghostK`:
  x1 = primary_conv(x)                    primary_conv.0 1x1 conv (no bias), .1 BN, ReLU for ghost1
  x2 = cheap_operation(x1)                cheap_operation.0 3x3 depthwise conv (no bias), then by mode:
       target: nothing, then final_bn      (keys final_bn.*)
       hs/csla: * scale, + fusion_scale * x1, then final_bn   (cheap_operation.1.weight, fusion_scale.weight)
       rep:     BN, + fusion_bn(x1), no final BN              (cheap_operation.1.*, fusion_bn.*)
  out = ReLU(x2) for ghost1, x2 for ghost2 (the output is x2 alone, no concatenation).

usage:
  ghostnet_reference.py layout W:MODE ...
      prints JSON {"W:MODE": [[key, shape(, values for hs/csla scale keys)], ...]} (state_dict order)
  ghostnet_reference.py make DIR W:MODE ... [--classes N --seed S --size HW --batch B]
      for each spec writes DIR/W_MODE.pth (torch.save(model.state_dict()), random weights, non-trivial BN
      statistics and scales) and DIR/W_MODE.io.pth ({'x': input, 'logits': eval-mode logits})
  ghostnet_reference.py eval DIR W:MODE ... [--classes N]
      loads DIR/W_MODE.pth strictly, runs DIR/W_MODE.io.pth's 'x' in eval mode, prints JSON
      {"W:MODE": {"shape": [...], "data": [...]}}
"""
import argparse
import json
import math
import os

import torch
import torch.nn as nn
import torch.nn.functional as F

# (kernel, hidden, out, se ratio, stride) before the width multiplier, one list per `blocks.S`.
TABLE = [
    [(3, 8, 16, 0, 1)],
    [(3, 24, 24, 0, 2)],
    [(3, 36, 24, 0, 1)],
    [(5, 36, 40, 0.25, 2)],
    [(5, 60, 40, 0.25, 1)],
    [(3, 120, 80, 0, 2)],
    [(3, 100, 80, 0, 1), (3, 120, 80, 0, 1), (3, 120, 80, 0, 1), (3, 240, 112, 0.25, 1), (3, 336, 112, 0.25, 1)],
    [(5, 336, 160, 0.25, 2)],
    [(5, 480, 160, 0, 1), (5, 480, 160, 0.25, 1), (5, 480, 160, 0, 1), (5, 480, 160, 0.25, 1)],
]


def round_width(v, divisor=4):
    """Nearest multiple of `divisor` (at least `divisor`), bumped up if it lost more than 10%."""
    r = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return r + divisor if r < 0.9 * v else r


class ChannelScale(nn.Module):
    """y = x * weight[c] (a per-channel scale without bias)."""

    def __init__(self, channels, value=1.0):
        super().__init__()
        self.weight = nn.Parameter(torch.full((channels,), float(value)))

    def forward(self, x):
        return x * self.weight.reshape(1, -1, 1, 1)


class Ghost(nn.Module):
    def __init__(self, cin, c, with_relu, mode, scale_init):
        super().__init__()
        self.with_relu = with_relu
        self.mode = mode
        self.primary_conv = nn.Sequential(
            nn.Conv2d(cin, c, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU() if with_relu else nn.Identity()
        )
        if mode == 'rep':
            self.fusion_bn = nn.BatchNorm2d(c)
            second = nn.BatchNorm2d(c)
        elif mode == 'target':
            self.final_bn = nn.BatchNorm2d(c)
            second = nn.Identity()
        else:
            self.fusion_scale = ChannelScale(c, 1.0)
            self.final_bn = nn.BatchNorm2d(c)
            second = ChannelScale(c, scale_init)
            if mode == 'csla':
                second.weight.requires_grad_(False)
        self.cheap_operation = nn.Sequential(nn.Conv2d(c, c, 3, 1, 1, groups=c, bias=False), second)

    def forward(self, x):
        x1 = self.primary_conv(x)
        y = self.cheap_operation(x1)
        if self.mode == 'rep':
            y = y + self.fusion_bn(x1)
        elif self.mode in ('hs', 'csla'):
            y = y + self.fusion_scale(x1)
        if self.mode != 'rep':
            y = self.final_bn(y)
        return F.relu(y) if self.with_relu else y


class SE(nn.Module):
    def __init__(self, c, ratio):
        super().__init__()
        r = round_width(c * ratio)
        self.conv_reduce = nn.Conv2d(c, r, 1)
        self.conv_expand = nn.Conv2d(r, c, 1)

    def forward(self, x):
        g = self.conv_expand(F.relu(self.conv_reduce(x.mean((2, 3), keepdim=True))))
        return x * (F.relu6(g + 3) / 6)


class Bottleneck(nn.Module):
    def __init__(self, cin, hidden, cout, k, stride, se, mode, inits):
        super().__init__()
        self.ghost1 = Ghost(cin, hidden, True, mode, inits[0])
        self.stride = stride
        if stride > 1:
            self.conv_dw = nn.Conv2d(hidden, hidden, k, stride, k // 2, groups=hidden, bias=False)
            self.bn_dw = nn.BatchNorm2d(hidden)
        self.se = SE(hidden, se) if se > 0 else None
        self.ghost2 = Ghost(hidden, cout, False, mode, inits[1])
        if stride == 1 and cin == cout:
            self.shortcut = nn.Sequential()
        else:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cin, k, stride, k // 2, groups=cin, bias=False),
                nn.BatchNorm2d(cin),
                nn.Conv2d(cin, cout, 1, bias=False),
                nn.BatchNorm2d(cout),
            )

    def forward(self, x):
        y = self.ghost1(x)
        if self.stride > 1:
            y = self.bn_dw(self.conv_dw(y))
        if self.se is not None:
            y = self.se(y)
        return self.ghost2(y) + self.shortcut(x)


class HeadConv(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)

    def forward(self, x):
        return F.relu(self.bn1(self.conv(x)))


class GhostNetRef(nn.Module):
    def __init__(self, width, mode, num_classes):
        super().__init__()
        c = round_width(16 * width)
        self.conv_stem = nn.Conv2d(3, c, 3, 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        groups = []
        run = 0  # bottlenecks in a row that keep width and resolution (Hyper-Search scale init)
        last_hidden = None
        for table_group in TABLE:
            blocks = []
            for k, t, o, se, s in table_group:
                hidden, out = round_width(t * width), round_width(o * width)
                run = run + 1 if (s == 1 and c == out) else 1
                inits = (math.sqrt(2 / (2 * run)), math.sqrt(2 / (2 * run + 1)))
                blocks.append(Bottleneck(c, hidden, out, k, s, se, mode, inits))
                c, last_hidden = out, t
            groups.append(nn.Sequential(*blocks))
        last = round_width(last_hidden * width * 2)
        groups.append(nn.Sequential(HeadConv(c, last)))
        self.blocks = nn.Sequential(*groups)
        self.conv_head = nn.Conv2d(last, 1280, 1)
        self.classifier = nn.Linear(1280, num_classes)

    def forward(self, x):
        y = self.blocks(F.relu(self.bn1(self.conv_stem(x))))
        y = F.relu(self.conv_head(y.mean((2, 3), keepdim=True))).flatten(1)
        return self.classifier(F.dropout(y, 0.2, self.training))


SCALE_KEYS = ('fusion_scale.weight', 'cheap_operation.1.weight')


def parse_spec(spec):
    w, mode = spec.split(':')
    return float(w), mode


def file_stem(spec):
    w, mode = parse_spec(spec)
    return f'{w:g}_{mode}'


def randomize(model, gen):
    """Random weights everywhere, BN statistics and affines far from (0, 1), scales around 1 with some negatives."""
    with torch.no_grad():
        for name, m in model.named_modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(n, generator=gen) * 0.2)
                m.running_mean.copy_(torch.randn(n, generator=gen) * 0.2)
                m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
                m.num_batches_tracked.fill_(int(torch.randint(1, 1000, (1,), generator=gen)))
            elif isinstance(m, ChannelScale):
                m.weight.copy_(torch.randn(m.weight.shape[0], generator=gen) * 0.5 + 0.8)
            elif isinstance(m, (nn.Conv2d, nn.Linear)):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * math.sqrt(2.0 / fan_in))
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('command', choices=['layout', 'make', 'eval'])
    ap.add_argument('args', nargs='+')
    ap.add_argument('--classes', type=int, default=10)
    ap.add_argument('--seed', type=int, default=0)
    ap.add_argument('--size', type=int, default=64)
    ap.add_argument('--batch', type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(1)
    if a.command == 'layout':
        out = {}
        for spec in a.args:
            w, mode = parse_spec(spec)
            sd = GhostNetRef(w, mode, a.classes).state_dict()
            # scale values too (their Hyper-Search init); other tensors are random or constant
            out[spec] = [[k, list(v.shape)] + ([v.tolist()] if k.endswith(SCALE_KEYS) else []) for k, v in sd.items()]
        print(json.dumps(out))
        return
    directory, specs = a.args[0], a.args[1:]
    if a.command == 'make':
        for i, spec in enumerate(specs):
            w, mode = parse_spec(spec)
            gen = torch.Generator().manual_seed(a.seed + i)
            model = GhostNetRef(w, mode, a.classes)
            randomize(model, gen)
            model.eval()
            x = torch.randn(a.batch, 3, a.size, a.size, generator=gen)
            with torch.no_grad():
                logits = model(x)
            torch.save(model.state_dict(), os.path.join(directory, file_stem(spec) + '.pth'))
            torch.save({'x': x, 'logits': logits}, os.path.join(directory, file_stem(spec) + '.io.pth'))
        return
    out = {}
    for spec in specs:
        w, mode = parse_spec(spec)
        model = GhostNetRef(w, mode, a.classes)
        model.load_state_dict(torch.load(os.path.join(directory, file_stem(spec) + '.pth')), strict=True)
        model.eval()
        x = torch.load(os.path.join(directory, file_stem(spec) + '.io.pth'))['x']
        with torch.no_grad():
            y = model(x)
        out[spec] = {'shape': list(y.shape), 'data': y.reshape(-1).tolist()}
    print(json.dumps(out))


if __name__ == '__main__':
    main()
