// Data-parallel benchmarks (bench/README.md, "Data-parallel training"):
//  1. allreduce throughput: our c10d binding (dist/bench/ddp-allreduce.js, two processes) against
//     PyTorch's Gloo (bench/ddp_allreduce.py, two processes), the same gradient-shaped tensors,
//     the same bucketing, alternating rounds, medians;
//  2. training on this machine: one process with 2 threads against two processes with 1 thread each
//     (the same global batch), img/s and the share of the step spent in collectives;
//  3. the cost of --sync-bn: --nproc 2 with and without it, alternating in one run (load average recorded);
//  4. --overlap-allreduce (bucket allreduces during backward) against averaging after backward, the same way.
// usage: node bench/run-ddp.mjs [--archs RepOpt-VGG-A0,RepOpt-VGG-B1] [--rounds 3] [--iters 10]
//                               [--train-steps 40] [--python /usr/bin/python3] [--sections allreduce,train,syncbn,overlap] [--write]
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, '..');
const cli = path.join(root, 'dist/src/cli/main.js');
const ours = path.join(root, 'dist/bench/ddp-allreduce.js');
const o = { archs: 'RepOpt-VGG-A0,RepOpt-VGG-B1', rounds: 3, iters: 10, trainSteps: 40, python: '/usr/bin/python3', sections: 'allreduce,train,syncbn,overlap', write: false };
const argv = process.argv.slice(2);
for (let i = 0; i < argv.length; i++) {
  const a = argv[i];
  const next = () => argv[++i];
  if (a === '--archs') o.archs = next();
  else if (a === '--rounds') o.rounds = Number(next());
  else if (a === '--iters') o.iters = Number(next());
  else if (a === '--train-steps') o.trainSteps = Number(next());
  else if (a === '--python') o.python = next();
  else if (a === '--sections') o.sections = next();
  else if (a === '--write') o.write = true;
  else throw new Error(`run-ddp.mjs: unknown argument ${a}`);
}
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const log = (l) => process.stderr.write(`${l}\n`);
const freePort = () =>
  new Promise((resolve) => {
    const s = net.createServer();
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
const lastJson = (text) => JSON.parse(text.trim().split('\n').filter((l) => l.startsWith('{')).pop());

async function runOurs(arch) {
  const port = await freePort();
  const kids = [0, 1].map((r) =>
    spawn(process.execPath, [ours, '--rank', String(r), '--world', '2', '--port', String(port), '--arch', arch, '--iters', String(o.iters)], { stdio: ['ignore', 'pipe', 'inherit'] }),
  );
  let out = '';
  kids[0].stdout.on('data', (b) => (out += b));
  kids[1].stdout.resume();
  const codes = await Promise.all(kids.map((k) => new Promise((res) => k.on('exit', res))));
  if (codes.some((c) => c !== 0)) throw new Error(`ddp-allreduce exited ${codes}`);
  return lastJson(out);
}

function runPyTorch(shapesFile) {
  const r = spawnSync(o.python, [path.join(here, 'ddp_allreduce.py'), shapesFile, '--world', '2', '--iters', String(o.iters)], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`ddp_allreduce.py: ${r.stderr}`);
  return lastJson(r.stdout);
}

const lines = [];
const emit = (l = '') => {
  lines.push(l);
  console.log(l);
};
emit(`Measured ${new Date().toISOString().slice(0, 10)} on ${os.cpus()[0]?.model ?? 'this CPU'}, ${os.availableParallelism()} cores, Node ${process.version}; loopback TCP.`);
const sections = new Set(o.sections.split(','));
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'repopt-bench-ddp-'));
if (sections.has('allreduce')) {
  emit();
  emit('### Allreduce: ours against PyTorch Gloo (2 processes, gradient-shaped float32 tensors, 25 MiB buckets, average)');
  emit();
  emit('| model (target) | tensors | MiB per allreduce | ours ms (median) | PyTorch ms (median) | ours GB/s | PyTorch GB/s | ours / PyTorch time |');
  emit('|---|---:|---:|---:|---:|---:|---:|---:|');
  for (const arch of o.archs.split(',')) {
    const shapes = spawnSync(process.execPath, [ours, '--dump-shapes', '--arch', arch], { encoding: 'utf8' });
    if (shapes.status !== 0) throw new Error(shapes.stderr);
    const shapesFile = path.join(tmp, `${arch}.json`);
    fs.writeFileSync(shapesFile, shapes.stdout);
    const res = { repopt: [], pytorch: [] };
    for (let r = 0; r < o.rounds; r++) {
      for (const impl of r % 2 === 0 ? ['repopt', 'pytorch'] : ['pytorch', 'repopt']) {
        const x = impl === 'repopt' ? await runOurs(arch) : runPyTorch(shapesFile);
        res[impl].push(x);
        log(`${arch} round ${r + 1} ${impl.padEnd(7)} ${x.msMedian.toFixed(1)} ms ${x.gbPerSec.toFixed(2)} GB/s (${(x.bytes / 2 ** 20).toFixed(1)} MiB, ${x.tensors} tensors)`);
      }
    }
    const a = median(res.repopt.map((x) => x.msMedian));
    const b = median(res.pytorch.map((x) => x.msMedian));
    const x = res.repopt[0];
    emit(`| ${arch} | ${x.tensors} | ${(x.bytes / 2 ** 20).toFixed(1)} | ${a.toFixed(1)} | ${b.toFixed(1)} | ${(x.bytes / (a / 1000) / 1e9).toFixed(2)} | ${(x.bytes / (b / 1000) / 1e9).toFixed(2)} | ${(a / b).toFixed(2)}x |`);
  }
}

// 2. Training: the same global batch, 1 x 2 threads against 2 x 1 thread.
const model = ['--blocks', '1,2,4,1', '--widths', '0.75,0.75,0.75,2.5', '--strides', '1,1,2,2,2'];
const globalBatch = 64;
const loadavg = () => fs.readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ');
const trainRun = (nproc, extra = []) => {
  const out = path.join(tmp, `train-${nproc}-${Date.now()}`);
  const images = globalBatch * o.trainSteps;
  const args = [cli, 'train', '--data', `synthetic:${images}`, ...model, '--mode', 'plain', '--epochs', '1', '--no-eval', '--quiet', '--out', out, '--log-every', '1000',
    ...(nproc === 1 ? ['--batch-size', String(globalBatch), '--threads', '2'] : ['--batch-size', String(globalBatch / nproc), '--threads', '1', '--nproc', String(nproc)]), ...extra];
  const r = spawnSync(process.execPath, args, { encoding: 'utf8', env: { ...process.env, CI: 'true' } });
  if (r.status !== 0) throw new Error(`train --nproc ${nproc}: ${r.stderr}`);
  const end = fs.readFileSync(path.join(out, 'log.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l)).find((x) => x.type === 'end');
  return { imgPerSec: end.trainImgPerSec, commShare: end.commSeconds !== undefined ? end.commSeconds / end.trainSeconds : 0, msPerStep: (globalBatch * 1000) / end.trainImgPerSec };
};
if (sections.has('train')) {
  const train = { 1: [], 2: [] };
  for (let r = 0; r < o.rounds; r++) {
    for (const n of r % 2 === 0 ? [1, 2] : [2, 1]) {
      const x = trainRun(n);
      train[n].push(x);
      log(`train round ${r + 1} nproc ${n}: ${x.imgPerSec.toFixed(0)} img/s, ${x.msPerStep.toFixed(1)} ms/step, comm ${(x.commShare * 100).toFixed(1)}%`);
    }
  }
  emit();
  emit(`### Training: one process x 2 threads against two processes x 1 thread (global batch ${globalBatch}, ${o.trainSteps} steps, RepOpt-VGG A0 widths, blocks 1,2,4,1, 32x32 synthetic, plain SGD)`);
  emit();
  emit('| setup | img/s (median) | ms/step | collectives share of the step |');
  emit('|---|---:|---:|---:|');
  for (const n of [1, 2]) {
    const xs = train[n];
    emit(`| ${n === 1 ? '1 process x 2 threads, batch 64' : '2 processes x 1 thread, batch 32 each'} | ${median(xs.map((x) => x.imgPerSec)).toFixed(0)} | ${median(xs.map((x) => x.msPerStep)).toFixed(1)} | ${n === 1 ? '-' : `${(median(xs.map((x) => x.commShare)) * 100).toFixed(1)}%`} |`);
  }
}

// 3./4. One flag's cost or gain at --nproc 2: the same run with and without it, alternating; the ratio counts.
function paired(flagName, title, labels, common = []) {
  const runs = { off: [], on: [] };
  const loads = [];
  for (let r = 0; r < o.rounds; r++) {
    for (const v of r % 2 === 0 ? ['off', 'on'] : ['on', 'off']) {
      const before = loadavg();
      const x = trainRun(2, [...common, ...(v === 'on' ? [flagName] : [])]);
      loads.push(`${before.split(' ')[0]} -> ${loadavg().split(' ')[0]}`);
      runs[v].push(x);
      log(`${flagName} round ${r + 1} ${v}: ${x.imgPerSec.toFixed(0)} img/s, ${x.msPerStep.toFixed(1)} ms/step, comm ${(x.commShare * 100).toFixed(1)}% (load ${before} -> ${loadavg()})`);
    }
  }
  const ms = (v) => median(runs[v].map((x) => x.msPerStep));
  emit();
  emit(`### ${title}`);
  emit();
  emit('| setup | img/s (median) | ms/step (median) | per round ms/step | collectives share (median) | step time vs without |');
  emit('|---|---:|---:|---|---:|---:|');
  for (const v of ['off', 'on']) {
    emit(`| ${labels[v]} | ${median(runs[v].map((x) => x.imgPerSec)).toFixed(0)} | ${ms(v).toFixed(1)} | ${runs[v].map((x) => x.msPerStep.toFixed(0)).join(' / ')} | ${(median(runs[v].map((x) => x.commShare)) * 100).toFixed(1)}% | ${(ms(v) / ms('off')).toFixed(3)}x |`);
  }
  emit();
  emit(`Per-pair ratios (on / off, same round): ${runs.on.map((x, i) => (x.msPerStep / runs.off[i].msPerStep).toFixed(2)).join(', ')}. 1-minute load average before -> after each run, in run order: ${loads.join(', ')}.`);
}
const pairTitle = `at --nproc 2 (2 processes x 1 thread, batch 32 each, ${o.trainSteps} steps, the model of the training table: 9 BatchNorm layers, 3.5 M parameters = 13.5 MiB of gradients)`;
if (sections.has('syncbn')) {
  paired('--sync-bn', `--sync-bn ${pairTitle}`, { off: 'without (per-process BN statistics)', on: 'with --sync-bn' });
}
if (sections.has('overlap')) {
  // 2 MiB buckets: at the default 25 MiB this model's gradients form two buckets (60 KB, 13.4 MiB), nothing to overlap.
  paired('--overlap-allreduce', `--overlap-allreduce ${pairTitle}, --bucket-cap-mb 2 on both sides`, { off: 'gradients averaged after backward', on: 'buckets averaged during backward (--overlap-allreduce)' }, ['--bucket-cap-mb', '2']);
}
if (o.write) {
  fs.writeFileSync(path.join(here, 'RESULTS-ddp.md'), `# Data-parallel benchmarks\n\n\`node bench/run-ddp.mjs ${argv.join(' ')}\`\n\n${lines.join('\n')}\n`);
  log('wrote bench/RESULTS-ddp.md');
}
