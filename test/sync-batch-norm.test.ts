/**
 * --sync-bn: BatchNorm statistics over every rank (PyTorch's SyncBatchNorm). Debian's
 * PyTorch 1.13 refuses SyncBatchNorm on CPU tensors, so the truth is its defining
 * invariant: W ranks x batch B with synchronised BN equal ONE process with ordinary
 * BatchNorm on the concatenated batch (forward, backward, running statistics).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type * as torch from '../src/torch/index.js';
import { freePort } from '../src/distributed/index.js';
import { PYTHON, runPython, type JsonTensor } from './helpers/python.js';
import { REPO_ROOT } from './helpers/paths.js';
import { CLI_ENV as ENV, cli, exited, weights, maxRel } from './helpers/runs.js';

const WORKER = path.join(REPO_ROOT, 'dist/test/helpers/syncbn-worker.js');
const tmp = () => fs.mkdtempSync(path.join(os.tmpdir(), 'repopt-syncbn-'));
const TINY = ['--blocks', '1,2,2,1', '--widths', '0.25,0.25,0.25,0.25'];
// The parity flags of the training contract: no augmentation, data in order, constant lr, no smoothing.
const PARITY = ['--schedule', 'constant', '--warmup', '0', '--label-smoothing', '0', '--no-augment', '--no-shuffle', '--threads', '1', '--quiet'];
const py = (script: string, args: string[]) => {
  const r = spawnSync(PYTHON, [path.join(REPO_ROOT, 'test/py', script), ...args], { encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
};
const isBnStat = (k: string) => /running_(mean|var)$/.test(k);


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

test('--sync-bn: `repopt train --nproc 2 --batch-size 4` equals ONE PyTorch process at batch 8 with ordinary BatchNorm (same init, scales, data); without --sync-bn the BN statistics differ', () => {
  const d = tmp();
  // 40 images: 20 per rank, 5 steps of 4 per rank per epoch; with --no-shuffle rank r reads r, r+2, ...,
  // so step k's union over the ranks is samples 8k..8k+7, the single process's batch k at batch 8.
  py('repopt_reference.py', ['make', `${d}/init.pth`, `${d}/scales.pth`, `${d}/c100`, '-', ...TINY, '--images', '40']);
  const hyper = ['--lr', '0.005', '--momentum', '0.9', '--nesterov', '--wd', '4e-5'];
  py('repopt_reference.py', ['train', `${d}/init.pth`, `${d}/scales.pth`, `${d}/c100`, `${d}/ref.pth`, ...TINY, '--batch-size', '8', '--epochs', '2', ...hyper]);
  const run = (out: string, extra: string[]) => {
    const r = cli(['train', '--data', `cifar100:${d}/c100`, ...TINY, '--init', `${d}/init.pth`, '--scales', `${d}/scales.pth`,
      '--epochs', '2', '--batch-size', '4', ...hyper, '--nproc', '2', ...PARITY, '--out', `${d}/${out}`, ...extra]);
    assert.equal(r.status, 0, r.stderr);
    return weights(`${d}/${out}/final.pth`);
  };
  const synced = run('sync', ['--sync-bn']);
  const local = run('local', []);
  const ref = weights(`${d}/ref.pth`);
  assert.deepEqual([...synced.keys()], [...ref.keys()], 'state-dict keys unchanged');
  for (const [k, t] of ref) {
    if (t.dtype === 'int64') {
      assert.equal(synced.get(k)!.item(), t.item(), k); // 10 steps
      continue;
    }
    // Measured: at most 1.0e-6 (a conv kernel), BN running stats at most 5.3e-7. The limit is float32
    // rounding: the statistics are summed in another order (per rank, then over ranks) than PyTorch's
    // one-process batch_norm, and 10 SGD steps carry the difference on. A wrong count, a biased
    // variance or a missing gradient term through the statistics is > 1e-2 (the run without
    // --sync-bn is 0.45 away in the BN statistics).
    const rel = maxRel(synced.get(k)!, t);
    assert.ok(rel <= 1e-5, `${k}: ${rel}`);
  }
  // Per-process statistics (no --sync-bn) are another computation: the check can fail.
  const bnStats = [...ref.keys()].filter(isBnStat);
  assert.ok(bnStats.length >= 12);
  const localGap = Math.max(...bnStats.map((k) => maxRel(local.get(k)!, ref.get(k)!)));
  assert.ok(localGap > 1e-2, `without --sync-bn: ${localGap}`);
});

test('--sync-bn in hs mode (`repopt search`), repvgg mode (a BN in every branch) and on RepOpt-GhostNet: 2 ranks x batch 4 equal one process at batch 8; in one process it has no effect', () => {
  const d = tmp();
  py('repopt_reference.py', ['make', `${d}/init.pth`, `${d}/scales.pth`, `${d}/c100`, '-', ...TINY, '--images', '40']);
  const data = ['--data', `cifar100:${d}/c100`, ...PARITY, '--no-eval', '--lr', '0.01'];
  // The reference is one process with ordinary BatchNorm at batch 8 (the path checked against PyTorch
  // in train.test.ts), from the same seeded init.
  const pair = (args: string[], file: string, tag: string) => {
    const one = cli([...args, '--batch-size', '8', '--out', `${d}/${tag}-one`]);
    assert.equal(one.status, 0, one.stderr);
    const two = cli([...args, '--batch-size', '4', '--nproc', '2', '--sync-bn', '--out', `${d}/${tag}-sync`]);
    assert.equal(two.status, 0, two.stderr);
    return [weights(`${d}/${tag}-one/${file}`), weights(`${d}/${tag}-sync/${file}`)];
  };
  // max |a - b| / max(max |b|, floor): the floor serves statistics that are zero up to rounding.
  const same = (one: Map<string, torch.Tensor>, synced: Map<string, torch.Tensor>, keys: string[], tag: string, tol: number, floor = 0) => {
    for (const k of keys) {
      const b = one.get(k)!;
      const bMax = b.abs().max().item();
      const rel = (maxRel(synced.get(k)!, b) * Math.max(bMax, 1e-12)) / Math.max(bMax, floor, 1e-12);
      assert.ok(rel <= tol, `${tag} ${k}: ${rel}`);
    }
  };
  const floats = (m: Map<string, torch.Tensor>) => [...m.keys()].filter((k) => m.get(k)!.dtype !== 'int64');
  // Hyper-Search trains the hs model (scaled 3x3, 1x1 and identity branches, one BN) with plain SGD.
  const [hsOne, hsSync] = pair(['search', ...data, ...TINY, '--epochs', '1'], 'final.pth', 'hs');
  assert.ok(hsOne.has('stage2.1.scale_identity.weight'));
  same(hsOne, hsSync, floats(hsOne), 'hs', 1e-5); // measured at most 1.0e-6 (float32 summation order)
  // One process: --sync-bn has no effect (as PyTorch's SyncBatchNorm without a process group).
  const alone = cli(['search', ...data, ...TINY, '--epochs', '1', '--batch-size', '8', '--sync-bn', '--out', `${d}/hs-alone`]);
  assert.equal(alone.status, 0, alone.stderr);
  same(hsOne, weights(`${d}/hs-alone/final.pth`), floats(hsOne), 'hs one process', 0);
  // RepVGG training: a BN on each branch (bn_3x3, bn_1x1, bn_identity).
  const [repOne, repSync] = pair(['train', ...data, ...TINY, '--mode', 'repvgg', '--epochs', '1'], 'final.pth', 'repvgg');
  assert.ok(repOne.has('stage2.1.bn_identity.running_var') && repOne.has('stage2.1.bn_1x1.running_var'));
  same(repOne, repSync, floats(repOne), 'repvgg', 1e-5); // measured at most 1.2e-6
  // RepOpt-GhostNet has dropout before its classifier (random per process), but after ONE step the
  // running statistics of its BNs depend only on that step's forward. They are then momentum (0.1) x
  // the batch statistics; many channel means are zero up to rounding (~1e-9: 1x1 convs of BN outputs
  // with zero bias), so differences are measured against a floor of 0.1 (a unit batch mean).
  const [gOne, gSync] = pair(['train', ...data, '--arch', 'RepOpt-GhostNet-0.5x', '--mode', 'plain', '--epochs', '1', '--max-steps', '1'], 'latest.pth', 'ghostnet');
  const gStats = [...gOne.keys()].filter(isBnStat);
  assert.ok(gStats.length > 40, String(gStats.length));
  // Measured at most 3.5e-6 (a running_var of the 1x1-pixel head: 8 values per channel).
  same(gOne, gSync, gStats, 'GhostNet', 3e-5, 0.1);
});
