/**
 * Data-parallel training on libtorch's c10d (Gloo): the collectives between two
 * processes, sharding against PyTorch's DistributedSampler, parity of
 * `repopt train --nproc 2` with an independent PyTorch DistributedDataParallel
 * run, exact resume under two processes, Ctrl-C, a killed rank, and clear
 * errors for a port in use or an unreachable master.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import * as torch from '../src/torch/index.js';
import { loadPth } from '../src/io/pth.js';
import { readJsonl } from '../src/train/log.js';
import { shardIndices } from '../src/data/loader.js';
import { freePort } from '../src/distributed/index.js';
import { PYTHON, runPython } from './helpers/python.js';
import { REPO_ROOT } from './helpers/paths.js';
import { CLI, CLI_ENV as ENV, cli, exited, weights, maxRel } from './helpers/runs.js';

torch.setNumThreads(1);
const PG_WORKER = path.join(REPO_ROOT, 'dist/test/helpers/pg-worker.js');
const REDUCER_WORKER = path.join(REPO_ROOT, 'dist/test/helpers/reducer-worker.js');
const tmp = () => fs.mkdtempSync(path.join(os.tmpdir(), 'repopt-ddp-'));
const TINY = ['--blocks', '1,2,2,1', '--widths', '0.25,0.25,0.25,0.25'];


function whenLogged(file: string, what: string): Promise<void> {
  return new Promise((resolve) => {
    const timer = setInterval(() => {
      if (fs.existsSync(file) && fs.readFileSync(file, 'utf8').includes(what)) {
        clearInterval(timer);
        resolve();
      }
    }, 50);
  });
}

function collect(child: ChildProcess): { text: () => string } {
  let s = '';
  child.stdout?.on('data', (b: Buffer) => (s += b.toString()));
  child.stderr?.on('data', (b: Buffer) => (s += b.toString()));
  return { text: () => s };
}

/** The launcher's worker processes and their RANK (Linux: /proc; no `ps`, which hangs with libasan preloaded). */
function workersOf(pid: number): { pid: number; rank: number }[] {
  const children = fs.readdirSync('/proc').filter((d) => /^\d+$/.test(d)).filter((d) => {
    try {
      // the parent pid is the 2nd field after the parenthesised command name
      const stat = fs.readFileSync(`/proc/${d}/stat`, 'utf8');
      return Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]) === pid;
    } catch {
      return false; // exited meanwhile
    }
  });
  return children
    .map((l) => Number(l))
    .filter((p) => p > 0)
    .map((p) => {
      const env = fs.readFileSync(`/proc/${p}/environ`, 'utf8').split('\0');
      return { pid: p, rank: Number(env.find((e) => e.startsWith('RANK='))?.slice(5)) };
    });
}

test('shards as PyTorch DistributedSampler (padding by wrap-around) and the release validation sampler (no padding)', () => {
  const cases = [
    [10, 2],
    [11, 2],
    [7, 3],
    [2, 4],
  ];
  const ref = runPython<number[][][]>(
    `from torch.utils.data import DistributedSampler
OUT = [[list(DistributedSampler(range(n), num_replicas=w, rank=r, shuffle=False)) for r in range(w)] for n, w in IN]`,
    cases,
  );
  cases.forEach(([n, w], i) => {
    const order = Int32Array.from({ length: n }, (_, k) => k);
    for (let r = 0; r < w; r++) {
      assert.deepEqual([...shardIndices(order, { rank: r, worldSize: w, pad: true })], ref[i][r], `n=${n} W=${w} rank ${r}`);
      // Evaluation: rank::W, every sample exactly once over the ranks.
      const evalPart = [...shardIndices(order, { rank: r, worldSize: w, pad: false })];
      assert.deepEqual(evalPart, order.filter((k) => k % w === r).length ? [...order].filter((k) => k % w === r) : []);
    }
  });
  // A shuffled order is sharded the same way (the permutation is the epoch's, seeded).
  const order = Int32Array.from([4, 0, 3, 1, 2]);
  assert.deepEqual([...shardIndices(order, { rank: 1, worldSize: 2, pad: true })], [0, 1, 4]);
});

test('collectives between two processes: bucketed allreduce (average, max), broadcast, barrier; a dead peer is an error', async () => {
  const run = async (extra: string[]) => {
    const port = await freePort();
    const kids = [0, 1].map((r) => spawn(process.execPath, [PG_WORKER, String(r), String(port), ...extra], { env: ENV }));
    const outs = kids.map(collect);
    const codes = await Promise.all(kids.map((k) => exited(k, 60_000)));
    return { codes, outs: outs.map((o) => o.text()) };
  };
  const { codes, outs } = await run([]);
  assert.deepEqual(codes, [0, 0], outs.join('\n'));
  for (const line of outs) {
    const r = JSON.parse(line) as Record<string, number[]>;
    // Ranks hold r = 1 and 2: the average is 1.5 r-units, the max 2; broadcast from rank 1.
    assert.deepEqual(r.a, [1.5, 15, 150]);
    assert.deepEqual(r.b, [1.5, 4.5, 3, 6]); // the transposed (non-contiguous) tensor, reduced in place
    assert.deepEqual(r.c, [0.75]);
    assert.deepEqual(r.d, [2, -1]);
    assert.deepEqual(r.e, [1, 1, 1]);
    assert.deepEqual(r.f, [1, 1, 1, 1]);
  }
  const dead = await run(['die']);
  assert.equal(dead.codes[1], 3);
  const report = JSON.parse(dead.outs[0]) as { error: string | null; name: string };
  assert.equal(report.name, 'DistributedError');
  assert.match(report.error ?? '', /rank 0: allreduce .*(Connection closed|reset)/s);
  assert.match(report.error ?? '', /another rank probably exited/);
});

interface ReducerStep {
  buckets: string[][];
  launchedBeforeAverage: number;
  grads: Record<string, number[] | null>;
}
interface ReducerReport {
  step0: ReducerStep;
  step1: ReducerStep;
  expected: Record<string, number[]>;
  error?: string | null;
  name?: string;
}

test('gradient averaging overlapped with backward: every bucket is in flight when backward returns, the averages equal the post-backward ones; an unused parameter is a clear error', async () => {
  const run = async (extra: string[]) => {
    const port = await freePort();
    const kids = [0, 1].map((r) => spawn(process.execPath, [REDUCER_WORKER, String(r), String(port), ...extra], { env: ENV }));
    const outs = kids.map(collect);
    const codes = await Promise.all(kids.map((k) => exited(k, 60_000)));
    assert.deepEqual(codes, [0, 0], outs.map((o) => o.text()).join('\n'));
    return outs.map((o) => JSON.parse(o.text().trim().split('\n').pop()!) as ReducerReport);
  };
  for (const r of await run([])) {
    for (const step of [r.step0, r.step1]) {
      // 1 KiB buckets in reverse registration order (the order backward produces the gradients).
      assert.deepEqual(step.buckets, [['spare.bias', 'spare.weight', 'fc.bias'], ['fc.weight'], ['bn.bias', 'bn.weight', 'conv.bias', 'conv.weight']]);
      assert.equal(step.launchedBeforeAverage, 3, 'all buckets launched inside backward');
      for (const [name, g] of Object.entries(r.expected)) assert.deepEqual(step.grads[name], g, name);
    }
  }
  for (const r of await run(['unused'])) {
    assert.equal(r.name, 'Error');
    assert.match(r.error ?? '', /trainable parameter\(s\) got no gradient \(unused in forward\): spare\.weight, spare\.bias/);
  }
});

test('parity: `repopt train --nproc 2 --batch-size 4` equals PyTorch DistributedDataParallel (Gloo, 2 processes) from the same init, scales and data', () => {
  const d = tmp();
  const py = (script: string, args: string[]) => {
    const r = spawnSync(PYTHON, [path.join(REPO_ROOT, 'test/py', script), ...args], { encoding: 'utf8' });
    assert.equal(r.status, 0, r.stderr);
  };
  // 39 images: DistributedSampler pads with sample 0, which rank 1 reads in its last batch.
  py('repopt_reference.py', ['make', `${d}/init.pth`, `${d}/scales.pth`, `${d}/c100`, '-', ...TINY, '--images', '39']);
  const hyper = ['--lr', '0.005', '--momentum', '0.9', '--nesterov', '--wd', '4e-5'];
  py('ddp_reference.py', [`${d}/init.pth`, `${d}/scales.pth`, `${d}/c100`, `${d}/ref.pth`, ...TINY, '--world', '2', '--batch-size', '4', '--epochs', '2', ...hyper]);
  const r = cli([
    'train', '--data', `cifar100:${d}/c100`, ...TINY, '--init', `${d}/init.pth`, '--scales', `${d}/scales.pth`,
    '--epochs', '2', '--batch-size', '4', ...hyper, '--nproc', '2',
    '--schedule', 'constant', '--warmup', '0', '--label-smoothing', '0', '--no-augment', '--no-shuffle', '--threads', '1', '--out', `${d}/out`,
  ]);
  assert.equal(r.status, 0, r.stderr);
  // The same run with each bucket averaged during backward (DDP's overlap): the very same averages.
  const overlapped = cli([
    'train', '--data', `cifar100:${d}/c100`, ...TINY, '--init', `${d}/init.pth`, '--scales', `${d}/scales.pth`,
    '--epochs', '2', '--batch-size', '4', ...hyper, '--nproc', '2', '--overlap-allreduce', '--no-eval', '--quiet',
    '--schedule', 'constant', '--warmup', '0', '--label-smoothing', '0', '--no-augment', '--no-shuffle', '--threads', '1', '--out', `${d}/overlap`,
  ]);
  assert.equal(overlapped.status, 0, overlapped.stderr);
  const ours = weights(`${d}/out/final.pth`);
  for (const [k, t] of weights(`${d}/overlap/final.pth`)) {
    assert.equal(torch.tidy(() => t.to('float64').sub(ours.get(k)!.to('float64')).abs().max().item()), 0, `--overlap-allreduce ${k}`);
  }
  const ref = weights(`${d}/ref.pth`);
  const init = weights(`${d}/init.pth`);
  assert.deepEqual([...ours.keys()], [...ref.keys()]);
  for (const [k, t] of ref) {
    if (t.dtype === 'int64') {
      assert.equal(ours.get(k)!.item(), t.item(), k); // 10 steps: 5 per epoch per rank (20 samples, drop_last)
      continue;
    }
    // Parameters and rank 0's own BN statistics (broadcast_buffers=False).
    assert.ok(maxRel(ours.get(k)!, t) <= 1e-4, `${k}: ${maxRel(ours.get(k)!, t)}`);
  }
  assert.equal(ref.get('stage0.bn.num_batches_tracked')!.item(), 10);
  assert.ok(maxRel(init.get('stage1.0.conv.weight')!, ref.get('stage1.0.conv.weight')!) > 1e-2, 'the run trained');
  // Rank 0 alone wrote the run's files and log; evaluation covered the whole test split once.
  const log = readJsonl(`${d}/out/log.jsonl`);
  assert.ok(log.every((x) => x.rank === 0));
  assert.equal(log.filter((x) => x.type === 'start').length, 1);
  const ev = cli(['eval', '--checkpoint', `${d}/out/final.pth`, '--data', `cifar100:${d}/c100`, '--json']);
  assert.equal(ev.status, 0, ev.stderr);
  assert.equal((JSON.parse(ev.stdout) as { count: number }).count, 9);
});

test('resume under --nproc 2: an interrupted run continued with --resume ends as an uninterrupted one', () => {
  const d = tmp();
  const args = ['train', '--data', 'synthetic:100', ...TINY, '--mode', 'plain', '--epochs', '2', '--batch-size', '8', '--lr', '0.05', '--nesterov', '--ema', '0.9', '--clip', '5', '--threads', '1', '--nproc', '2', '--quiet'];
  let r = cli([...args, '--out', `${d}/full`]);
  assert.equal(r.status, 0, r.stderr);
  // 50 samples per rank: 6 steps per epoch (drop_last). Stop at step 4, then 9 (across the epoch end).
  r = cli([...args, '--out', `${d}/cut`, '--max-steps', '4']);
  assert.equal(r.status, 0, r.stderr);
  assert.ok(fs.existsSync(`${d}/cut/latest.pth`) && !fs.existsSync(`${d}/cut/final.pth`));
  assert.equal(cli([...args, '--out', `${d}/cut`, '--resume', '--max-steps', '9']).status, 0);
  r = cli([...args, '--out', `${d}/cut`, '--resume']);
  assert.equal(r.status, 0, r.stderr);
  const a = weights(`${d}/full/final.pth`);
  const b = weights(`${d}/cut/final.pth`);
  for (const [k, t] of a) assert.equal(torch.tidy(() => t.to('float64').sub(b.get(k)!.to('float64')).abs().max().item()), 0, k);
  const log = readJsonl(`${d}/cut/log.jsonl`);
  assert.equal(log.filter((x) => x.type === 'resume').length, 2);
  assert.equal(log.filter((x) => x.type === 'epoch').length, 2);
  // Resuming with another number of processes would change the data order: refused.
  r = cli([...args.filter((x, i) => !(x === '--nproc' || args[i - 1] === '--nproc')), '--out', `${d}/cut`, '--resume']);
  assert.equal(r.status, 2);
  assert.match(r.stderr, /worldSize/);
});

test('Ctrl-C under --nproc 2 stops every rank at the same step and saves once', async () => {
  const d = tmp();
  const child = spawn(process.execPath, [CLI, 'train', '--data', 'synthetic:20000', ...TINY, '--mode', 'plain', '--epochs', '1', '--batch-size', '8', '--nproc', '2', '--out', `${d}/run`], { env: ENV });
  const out = collect(child);
  await whenLogged(`${d}/run/log.jsonl`, '"start"');
  await new Promise((res) => setTimeout(res, 500));
  child.kill('SIGINT');
  assert.equal(await exited(child, 60_000), 130, out.text());
  const log = readJsonl(`${d}/run/log.jsonl`);
  const stops = log.filter((x) => x.type === 'interrupt');
  assert.equal(stops.length, 1, JSON.stringify(stops));
  const at = stops[0].nextBatch as number;
  assert.ok(at > 0 && at < 1250, JSON.stringify(stops[0]));
  assert.equal((loadPth(`${d}/run/latest.pth`) as Map<unknown, unknown>).get('next_batch'), at);
  assert.ok(!fs.readdirSync(`${d}/run`).some((f) => f.includes('.tmp-')), 'no temporary file left behind');
});

test('a killed rank makes the others exit non-zero with a clear error (no hang)', async () => {
  const d = tmp();
  const launcher = spawn(
    process.execPath,
    [CLI, 'train', '--data', 'synthetic:20000', ...TINY, '--mode', 'plain', '--epochs', '1', '--batch-size', '8', '--nproc', '2', '--dist-timeout', '30', '--out', `${d}/run`],
    { env: ENV },
  );
  const out = collect(launcher);
  await whenLogged(`${d}/run/log.jsonl`, '"start"');
  const workers = workersOf(launcher.pid!);
  assert.deepEqual(workers.map((w) => w.rank).sort(), [0, 1]);
  process.kill(workers.find((w) => w.rank === 1)!.pid, 'SIGKILL');
  const code = await exited(launcher, 90_000);
  assert.ok(code !== 0 && code !== null, `launcher exit code ${code}`);
  assert.match(out.text(), /rank 1 exited with SIGKILL/);
  assert.match(out.text(), /rank 0: allreduce .*another rank probably exited/s);
  for (const w of workers) assert.throws(() => process.kill(w.pid, 0), 'no worker left running');
});

test('a port in use, an unreachable master and bad launch flags are clear errors', async () => {
  const d = tmp();
  const server = net.createServer();
  await new Promise<void>((res) => server.listen(0, '127.0.0.1', () => res()));
  const busy = (server.address() as net.AddressInfo).port;
  try {
    const base = ['train', '--data', 'synthetic:64', ...TINY, '--mode', 'plain', '--epochs', '1', '--batch-size', '8', '--quiet', '--dist-timeout', '5'];
    let r = cli([...base, '--nproc', '2', '--master-port', String(busy), '--out', `${d}/a`]);
    assert.notEqual(r.status, 0);
    assert.match(r.stderr, new RegExp(`cannot serve the rendezvous on port ${busy}: the port is in use`));
    // A worker (torchrun's variables) whose master never comes: an error naming the address, in bounded time.
    const port = await freePort();
    r = cli([...base, '--out', `${d}/b`], { ...ENV, RANK: '1', WORLD_SIZE: '2', LOCAL_RANK: '1', MASTER_ADDR: '127.0.0.1', MASTER_PORT: String(port) });
    assert.equal(r.status, 1);
    assert.match(r.stderr, new RegExp(`rank 1: could not join the rendezvous at 127.0.0.1:${port} within 5 s: is the master \\(rank 0\\) running and reachable\\?`));
    r = cli([...base, '--nproc', '0', '--out', `${d}/c`]);
    assert.equal(r.status, 2);
    assert.match(r.stderr, /--nproc must be a positive integer/);
    r = cli([...base, '--nproc', '2', '--nnodes', '2', '--node-rank', '2', '--out', `${d}/c`]);
    assert.equal(r.status, 2);
    assert.match(r.stderr, /--node-rank 2 must be below --nnodes 2/);
  } finally {
    server.close();
  }
});

test('two "machines" on one host: --nnodes 2 --node-rank 0|1 with a shared master address and port', async () => {
  const d = tmp();
  const port = await freePort();
  const common = ['train', '--data', 'synthetic:64', ...TINY, '--mode', 'plain', '--epochs', '1', '--batch-size', '8', '--threads', '1', '--quiet', '--no-eval', '--nproc', '1', '--nnodes', '2', '--master-addr', '127.0.0.1', '--master-port', String(port)];
  const nodes = [0, 1].map((n) => spawn(process.execPath, [CLI, ...common, '--node-rank', String(n), '--out', `${d}/node${n}`], { env: ENV }));
  const outs = nodes.map(collect);
  const codes = await Promise.all(nodes.map((n) => exited(n, 90_000)));
  assert.deepEqual(codes, [0, 0], outs.map((o) => o.text()).join('\n'));
  assert.ok(fs.existsSync(`${d}/node0/final.pth`), 'rank 0 (node 0) writes the run');
  assert.ok(!fs.existsSync(`${d}/node1/final.pth`), 'rank 1 writes nothing');
  const log = readJsonl(`${d}/node0/log.jsonl`);
  assert.equal(log.find((x) => x.type === 'end')?.iteration, 4); // 32 samples per rank, batch 8
});

test("torchrun's variables set by hand: two `repopt search` workers; rank 0 alone logs and writes the scales, once", async () => {
  const d = tmp();
  const port = await freePort();
  const args = [CLI, 'search', '--data', 'synthetic:128', ...TINY, '--epochs', '1', '--batch-size', '16', '--threads', '1', '--no-eval', '--out', `${d}/hs`];
  const kids = [0, 1].map((rank) =>
    spawn(process.execPath, args, {
      env: { ...ENV, RANK: String(rank), LOCAL_RANK: String(rank), WORLD_SIZE: '2', LOCAL_WORLD_SIZE: '2', MASTER_ADDR: '127.0.0.1', MASTER_PORT: String(port) },
    }),
  );
  const outs = kids.map(collect);
  const codes = await Promise.all(kids.map((k) => exited(k, 90_000)));
  assert.deepEqual(codes, [0, 0], outs.map((o) => o.text()).join('\n'));
  assert.match(outs[0].text(), /scales written to/);
  assert.doesNotMatch(outs[1].text(), /scales written|search:/, 'rank 1 prints nothing of its own');
  assert.ok(fs.existsSync(`${d}/hs/scales.pth`));
  const log = readJsonl(`${d}/hs/log.jsonl`);
  assert.equal(log.filter((x) => x.type === 'end').length, 1);
  assert.equal(log.find((x) => x.type === 'end')?.iteration, 4); // 64 samples per rank, batch 16
});
