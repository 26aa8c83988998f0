"""PyTorch side of `repopt eval` on a RepOpt-GhostNet release-format file and CIFAR-10 binary data.

usage: ghostnet_cifar_eval.py WIDTH CIFAR_DIR MODE=MODEL.pth ... [--classes N]
  per MODE=MODEL.pth: loads MODEL.pth strictly into ghostnet_reference.GhostNetRef(WIDTH, MODE) (the
  release's naming), runs CIFAR_DIR/test_batch.bin (records of 1 label byte + 3x32x32 bytes) normalised
  as torchvision (x/255, CIFAR-10 mean/std) in eval mode, and prints JSON
  {MODE: {"top1", "top5", "loss", "count"}} (loss: the mean cross-entropy).
"""
import json
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ghostnet_reference import GhostNetRef  # noqa: E402

MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.247, 0.2435, 0.2616)


def main():
    args = [a for a in sys.argv[1:]]
    classes = 10
    if '--classes' in args:
        i = args.index('--classes')
        classes = int(args[i + 1])
        del args[i:i + 2]
    width, data_dir, runs = float(args[0]), args[1], [r.split('=', 1) for r in args[2:]]
    torch.set_num_threads(1)
    raw = open(os.path.join(data_dir, 'test_batch.bin'), 'rb').read()
    rec = 1 + 3 * 32 * 32
    n = len(raw) // rec
    data = torch.frombuffer(bytearray(raw), dtype=torch.uint8).reshape(n, rec)
    y = data[:, 0].long()
    x = data[:, 1:].reshape(n, 3, 32, 32).float().div(255)
    x = (x - torch.tensor(MEAN).reshape(1, 3, 1, 1)) / torch.tensor(STD).reshape(1, 3, 1, 1)
    out = {}
    for mode, model_file in runs:
        model = GhostNetRef(width, mode, classes)
        model.load_state_dict(torch.load(model_file), strict=True)
        model.eval()
        with torch.no_grad():
            logits = model(x)
        top5 = logits.topk(min(5, classes), 1).indices
        out[mode] = {
            'top1': (top5[:, 0] == y).sum().item() / n,
            'top5': (top5 == y[:, None]).any(1).sum().item() / n,
            'loss': F.cross_entropy(logits.double(), y, reduction='sum').item() / n,
            'count': n,
        }
    print(json.dumps(out))


if __name__ == '__main__':
    main()
