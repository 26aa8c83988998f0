/**
 * --sync-bn: BatchNorm statistics over every rank (PyTorch's SyncBatchNorm). Debian's
 * PyTorch 1.13 refuses SyncBatchNorm on CPU tensors, so the truth is its defining
 * invariant: W ranks x batch B with synchronised BN equal ONE process with ordinary
 * BatchNorm on the concatenated batch (forward, backward, running statistics).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import os from 'node:os';
import path from 'node:path';
import { freePort } from '../src/distributed/index.js';
import { runPython, type JsonTensor } from './helpers/python.js';
import { REPO_ROOT } from './helpers/paths.js';
import { CLI_ENV as ENV } from './helpers/runs.js';

const WORKER = path.join(REPO_ROOT, 'dist/test/helpers/syncbn-worker.js');

function exited(child: ChildProcess, boundMs: number): Promise<number | null> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`process still running after ${boundMs} ms (a hang)`)), boundMs);
    child.on('exit', (code, signal) => {
      clearTimeout(timer);
      resolve(code ?? (signal ? 128 + os.constants.signals[signal] : null));
    });
  });
}

async function twoRanks(extra: string[] = []): Promise<{ codes: (number | null)[]; outs: string[] }> {
  const port = await freePort();
  const kids = [0, 1].map((r) => spawn(process.execPath, [WORKER, String(r), String(port), ...extra], { env: ENV }));
  const outs = kids.map((k) => {
    let s = '';
    k.stdout.on('data', (b: Buffer) => (s += b.toString()));
    k.stderr.on('data', (b: Buffer) => (s += b.toString()));
    return () => s;
  });
  const codes = await Promise.all(kids.map((k) => exited(k, 60_000)));
  return { codes, outs: outs.map((o) => o()) };
}

const maxAbsDiff = (a: number[], b: number[]) => {
  assert.equal(a.length, b.length);
  return Math.max(...a.map((v, i) => Math.abs(v - b[i])));
};

interface RankReport {
  rank: number;
  converted: number;
  primitive: { y: number[]; grad: number[]; yRequiresGrad: boolean; plain: number[]; plainRequiresGrad: boolean };
  X?: number[];
  G?: number[];
  start?: { w: number[]; b: number[]; rm: number[]; rv: number[] };
  out: number[];
  xGrad: number[];
  wGrad: number[];
  bGrad: number[];
  rm: number[];
  rv: number[];
  tracked: number;
  evalOut: number[] | null;
}

test('differentiable allreduce-sum and SyncBatchNorm over 2 ranks (uneven split 2 + 4) equal ordinary BatchNorm on the whole batch of 6 (float64, forward, backward, running stats)', async () => {
  const { codes, outs } = await twoRanks();
  assert.deepEqual(codes, [0, 0], outs.join('\n'));
  const [r0, r1] = outs.map((o) => JSON.parse(o.trim().split('\n').pop()!) as RankReport);
  // The primitive, by hand: a_0 = [1, 2], a_1 = [2, 4] -> y = [3, 6] on both ranks; c_0 = [1, 10],
  // c_1 = [2, 10] -> each rank's a.grad = c_0 + c_1 = [3, 20]. A tensor without grad stays without.
  for (const r of [r0, r1]) {
    assert.deepEqual(r.primitive, { y: [3, 6], grad: [3, 20], yRequiresGrad: true, plain: [3], plainRequiresGrad: false });
    assert.equal(r.converted, 1);
    assert.equal(r.tracked, 1);
  }
  type Ref = Record<'out' | 'xGrad' | 'wGrad' | 'bGrad' | 'rm' | 'rv' | 'evalOut' | 'local', JsonTensor>;
  const ref = runPython<Ref>(
    `s = IN['start']
X = torch.tensor(IN['X'], dtype=torch.float64).reshape(6, 3, 4, 4).requires_grad_(True)
G = torch.tensor(IN['G'], dtype=torch.float64).reshape(6, 3, 4, 4)
bn = torch.nn.BatchNorm2d(3).double()
with torch.no_grad():
    for p, k in ((bn.weight, 'w'), (bn.bias, 'b'), (bn.running_mean, 'rm'), (bn.running_var, 'rv')):
        p.copy_(torch.tensor(s[k], dtype=torch.float64))
bn.train()
out = bn(X)
(out * G).sum().backward()
# Rank 1's samples alone through an ordinary (unsynchronised) BN: what the check must tell apart.
local = torch.nn.functional.batch_norm(X[2:].detach(), None, None, bn.weight.detach(), bn.bias.detach(), True)
bn.eval()
with torch.no_grad():
    ev = bn(X[2:])
OUT = {'out': out.reshape(-1), 'xGrad': X.grad.reshape(-1), 'wGrad': bn.weight.grad, 'bGrad': bn.bias.grad,
       'rm': bn.running_mean, 'rv': bn.running_var, 'evalOut': ev.reshape(-1), 'local': local.reshape(-1)}`,
    { X: r0.X, G: r0.G, start: r0.start },
  );
  const split = 2 * 3 * 16; // rank 0's 2 samples
  const tol = 5e-14; // float64 rounding: measured at most 3.6e-15 (input gradient; values of order 1-10)
  assert.ok(maxAbsDiff([...r0.out, ...r1.out], ref.out.data) < tol, 'forward');
  assert.ok(maxAbsDiff([...r0.xGrad, ...r1.xGrad], ref.xGrad.data) < tol, 'input gradient (through the global statistics)');
  // The loss is the sum of the ranks' losses: parameter gradients add up over ranks.
  assert.ok(maxAbsDiff(r0.wGrad.map((v, i) => v + r1.wGrad[i]), ref.wGrad.data) < tol, 'weight gradient');
  assert.ok(maxAbsDiff(r0.bGrad.map((v, i) => v + r1.bGrad[i]), ref.bGrad.data) < tol, 'bias gradient');
  for (const r of [r0, r1]) {
    assert.ok(maxAbsDiff(r.rm, ref.rm.data) < tol, 'running mean (global mean)');
    assert.ok(maxAbsDiff(r.rv, ref.rv.data) < tol, 'running var (unbiased global variance, N = 2 + 4)');
  }
  assert.ok(maxAbsDiff(r1.evalOut!, ref.evalOut.data) < tol, 'eval mode: running statistics');
  // The check can fail: rank 1's batch alone normalises differently.
  assert.ok(maxAbsDiff(r1.out, ref.local.data) > 1e-2);
  assert.ok(maxAbsDiff(r1.out, ref.out.data.slice(split)) < tol);
});

test('a rank that dies between forward and backward: the other rank\'s backward fails with a DistributedError in bounded time (no hang)', async () => {
  const { codes, outs } = await twoRanks(['die']);
  assert.equal(codes[1], 3);
  assert.equal(codes[0], 0, outs[0]);
  const report = JSON.parse(outs[0].trim().split('\n').pop()!) as { error: string | null; name: string; later: string };
  assert.equal(report.name, 'DistributedError');
  assert.match(report.error ?? '', /rank 0: allreduce in backward \(rank 0 of 2\): .*(Connection closed|reset)/s);
  assert.equal(report.later, 'DistributedError', 'the group stays failed');
});
