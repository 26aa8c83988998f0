"""Which convolutions make libtorch 1.13's oneDNN corrupt the heap in channels-last (issue 23).

Each case runs in its own child process (a crash ends only that child) under MALLOC_CHECK_=3, so
glibc reports a corrupted heap at once: forward + backward of Conv2d(cin, cout, k, stride,
padding=k//2, bias=False) on a channels-last 4 x cin x h x h input, three times. Prints one line
per case and a summary of the failing ones.

    /usr/bin/python3 bench/onednn_1x1_sweep.py            # the sweep of bench/README.md
    ONEDNN_MAX_CPU_ISA=AVX2 /usr/bin/python3 bench/onednn_1x1_sweep.py   # an AVX-512 host as an AVX2 one
"""
import itertools
import os
import subprocess
import sys

CHILD = r"""
import sys, torch
torch.set_num_threads(1)
cin, cout, k, s, h = map(int, sys.argv[1:6])
for _ in range(3):
    conv = torch.nn.Conv2d(cin, cout, k, s, padding=k // 2, bias=False).to(memory_format=torch.channels_last)
    x = torch.randn(4, cin, h, h).to(memory_format=torch.channels_last).requires_grad_(True)
    conv(x).sum().backward()
"""


def main():
    env = dict(os.environ, MALLOC_CHECK_="3")
    failing = []
    for (k, s), cin, cout, h in itertools.product([(1, 2), (1, 3), (3, 2), (1, 1)], [1, 2, 3, 4, 5, 6, 7, 8, 9, 12, 15, 16, 17, 24, 32], [8, 16], [8, 16]):
        if k == 3 and cout == 8:
            continue
        try:
            rc = subprocess.run([sys.executable, "-c", CHILD, str(cin), str(cout), str(k), str(s), str(h)], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60).returncode
        except subprocess.TimeoutExpired:
            rc = "hang"
        print(f"k={k} stride={s} cin={cin} cout={cout} h={h}: {'ok' if rc == 0 else f'FAIL ({rc})'}", flush=True)
        if rc != 0:
            failing.append((k, s, cin))
    print("failing (kernel, stride, input channels):", sorted(set(failing)))


if __name__ == "__main__":
    main()
