#!/usr/bin/env node
// The training-step benchmark: ours (dist/bench/train-step.js) against PyTorch
// (bench/train_step.py, Debian's /usr/bin/python3) on the same machine, one
// process per run, alternating which goes first each round. Prints a markdown
// table of medians over rounds; `--write` also writes bench/RESULTS.md.
//
//   node bench/run.mjs [--widths 32,64] [--rounds 5] [--steps 30] [--warmup 10]
//                      [--threads N] [--python /usr/bin/python3] [--quiet-wait S] [--write]
//
// On a shared machine, --quiet-wait S (default 60, 0 = off) waits up to S seconds
// before each run until the CPUs are idle (under 15% busy over half a second), so
// runs are not timed against someone else's job; the log notes runs that were not.
//
// Needs dist/ (npm run build). `npm run bench` builds, then runs this.
//
// `--suite repoptvgg` runs the RepOpt-VGG comparisons instead (`repopt bench --json`
// against `train_step.py --model repoptvgg`, both on the same model and step):
//
//   node bench/run.mjs --suite repoptvgg [--modes target,repvgg,hs] [--batch 32] [--size 64]
//        [--blocks 1,2,4,1 --widths .75,.75,.75,2.5 --strides 2,2,2,2,2 --classes 100]
//        [--channels-last] [--rounds 3] [--steps 10] [--warmup 3] [--threads N]
//        [--mem-cap MIB [--max-modes target,repvgg]] [--no-overhead] [--no-peak] [--write]
//
// It prints (and with --write puts in bench/RESULTS-repoptvgg.md): ours vs PyTorch per
// mode at the fixed batch; target vs repvgg throughput and memory, both sides; with
// --mem-cap the largest batch under that peak RSS per mode and side (doubling +
// bisection, a fresh process per probe) and the throughput there; the optimizer step
// of RepSGD vs plain SGD; the machine's matmul / conv3x3 peak and the achieved GFLOP/s.
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, '..');

function parse(argv) {
  const o = { widths: [32, 64], rounds: 5, steps: 30, warmup: 10, threads: os.availableParallelism(), python: '/usr/bin/python3', quietWait: 60, write: false,
    suite: 'smallvgg', modes: 'target,repvgg,hs', batch: 32, size: 64, blocks: '1,2,4,1', widths4: '0.75,0.75,0.75,2.5', strides: '2,2,2,2,2', classes: 100,
    channelsLast: false, memCap: 0, maxModes: 'target,repvgg', overhead: true, peak: true };
  const given = new Set();
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const next = () => {
      const v = argv[++i];
      if (v === undefined) throw new Error(`${a} needs a value`);
      return v;
    };
    given.add(a);
    if (a === '--write') o.write = true;
    else if (a === '--suite') o.suite = next();
    else if (a === '--modes') o.modes = next();
    else if (a === '--batch') o.batch = Number(next());
    else if (a === '--size') o.size = Number(next());
    else if (a === '--blocks') o.blocks = next();
    else if (a === '--strides') o.strides = next();
    else if (a === '--classes') o.classes = Number(next());
    else if (a === '--channels-last') o.channelsLast = true;
    else if (a === '--mem-cap') o.memCap = Number(next());
    else if (a === '--max-modes') o.maxModes = next();
    else if (a === '--no-overhead') o.overhead = false;
    else if (a === '--no-peak') o.peak = false;
    else if (a === '--widths') o.widthsRaw = next(); // SmallVGG: widths C; RepOpt-VGG: 4 width multipliers
    else if (a === '--rounds') o.rounds = Number(next());
    else if (a === '--steps') o.steps = Number(next());
    else if (a === '--warmup') o.warmup = Number(next());
    else if (a === '--threads') o.threads = Number(next());
    else if (a === '--python') o.python = next();
    else if (a === '--quiet-wait') o.quietWait = Number(next());
    else throw new Error(`run.mjs: unknown argument '${a}'`);
  }
  if (o.widthsRaw !== undefined) {
    if (o.suite === 'repoptvgg') o.widths4 = o.widthsRaw;
    else o.widths = o.widthsRaw.split(',').map(Number);
    delete o.widthsRaw;
  }
  if (o.suite === 'repoptvgg') {
    // Shorter runs by default: a RepOpt-VGG step is several SmallVGG steps.
    if (!given.has('--rounds')) o.rounds = 3;
    if (!given.has('--steps')) o.steps = 10;
    if (!given.has('--warmup')) o.warmup = 3;
  } else if (o.suite !== 'smallvgg') throw new Error(`run.mjs: --suite must be smallvgg or repoptvgg, got '${o.suite}'`);
  for (const [k, v] of Object.entries(o)) {
    if (typeof v === 'number' && !(Number.isInteger(v) && (v > 0 || ((k === 'quietWait' || k === 'memCap') && v === 0)))) throw new Error(`run.mjs: --${k} must be a positive integer`);
  }
  if (o.widths.some((w) => !(Number.isInteger(w) && w > 0))) throw new Error('run.mjs: --widths must be positive integers');
  return o;
}

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};

// Fraction of all CPUs busy over `ms` milliseconds (from /proc/stat; 0 where unavailable).
function busyFraction(ms) {
  const read = () => {
    const f = readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/).slice(1).map(Number);
    const idle = f[3] + (f[4] ?? 0);
    return { idle, total: f.reduce((a, b) => a + b, 0) };
  };
  try {
    const a = read();
    Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
    const b = read();
    const total = b.total - a.total;
    return total > 0 ? 1 - (b.idle - a.idle) / total : 0;
  } catch {
    return 0;
  }
}

// Waits (up to o.quietWait seconds) for the machine to be idle; returns whether it was.
function waitQuiet() {
  const deadline = Date.now() + o.quietWait * 1000;
  for (;;) {
    const busy = busyFraction(500);
    if (busy < 0.15) return true;
    if (Date.now() >= deadline) return false;
  }
}

// Both sides get the same OpenMP wait policy (our addon defaults to PASSIVE, Python's libgomp to
// spinning): set OMP_WAIT_POLICY yourself to compare another policy.
const benchEnv = { ...process.env, OMP_WAIT_POLICY: process.env.OMP_WAIT_POLICY ?? 'PASSIVE' };

function runOne(cmd, args) {
  const r = spawnSync(cmd, args, { cwd: root, encoding: 'utf8', maxBuffer: 1 << 24, env: benchEnv });
  if (r.error) throw r.error;
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} failed (${r.status}):\n${r.stderr}`);
  const line = r.stdout.trim().split('\n').pop();
  return JSON.parse(line);
}

const o = parse(process.argv.slice(2));
if (!existsSync(o.python)) throw new Error(`${o.python} not found (Debian's python3 with python3-torch)`);
if (o.suite === 'repoptvgg') {
  const { runRepOptVggSuite } = await import('./run-repoptvgg.mjs');
  await runRepOptVggSuite(o, { root, here, median, waitQuiet, runOne });
  process.exit(0);
}
const ours = path.join(root, 'dist/bench/train-step.js');
if (!existsSync(ours)) throw new Error('dist/bench/train-step.js missing: run `npm run build` first');

const common = (w) => ['--width', String(w), '--depth', '4', '--batch', '32', '--size', '32',
  '--warmup', String(o.warmup), '--steps', String(o.steps), '--reps', '1', '--threads', String(o.threads)];

const results = [];
for (const w of o.widths) {
  const runs = { repopt: [], pytorch: [] };
  for (let r = 0; r < o.rounds; r++) {
    const order = r % 2 === 0 ? ['repopt', 'pytorch'] : ['pytorch', 'repopt'];
    for (const impl of order) {
      const quiet = o.quietWait > 0 ? waitQuiet() : true;
      const res = impl === 'repopt'
        ? runOne(process.execPath, [ours, ...common(w)])
        : runOne(o.python, [path.join(here, 'train_step.py'), ...common(w)]);
      runs[impl].push(res);
      process.stderr.write(`C=${w} round ${r + 1}/${o.rounds} ${impl.padEnd(7)} ${res.msPerStep[0].toFixed(1)} ms/step ` +
        `(cpu ${res.cpuMsPerStep[0].toFixed(1)}) rss ${(res.maxRSSKiB / 1024).toFixed(0)} MiB loadavg ${os.loadavg()[0].toFixed(2)}${quiet ? '' : ' (machine was busy at start)'}\n`);
    }
  }
  const summary = (xs) => ({
    ms: median(xs.map((x) => x.msPerStep[0])),
    cpuMs: median(xs.map((x) => x.cpuMsPerStep[0])),
    rssMiB: Math.max(...xs.map((x) => x.maxRSSKiB)) / 1024,
    loss: xs[0].finalLoss,
    threads: xs[0].threads,
    runtime: xs[0].runtime,
  });
  const a = summary(runs.repopt);
  const b = summary(runs.pytorch);
  // Ratio of medians, and the median of per-round ratios (the pairs ran back to back).
  const pairRatio = median(runs.repopt.map((x, i) => x.msPerStep[0] / runs.pytorch[i].msPerStep[0]));
  results.push({ w, a, b, ratio: a.ms / b.ms, pairRatio, cpuRatio: a.cpuMs / b.cpuMs });
}

const f1 = (x) => x.toFixed(1);
const f2 = (x) => x.toFixed(2);
const lines = [
  '| C | ours ms/step | PyTorch ms/step | ratio | ratio (per-round median) | ours CPU ms/step | PyTorch CPU ms/step | ours peak RSS | PyTorch peak RSS |',
  '|---:|---:|---:|---:|---:|---:|---:|---:|---:|',
  ...results.map(({ w, a, b, ratio, pairRatio }) =>
    `| ${w} | ${f1(a.ms)} | ${f1(b.ms)} | ${f2(ratio)}x | ${f2(pairRatio)}x | ${f1(a.cpuMs)} | ${f1(b.cpuMs)} | ${a.rssMiB.toFixed(0)} MiB | ${b.rssMiB.toFixed(0)} MiB |`),
];
const cpu = (() => {
  try {
    return (readFileSync('/proc/cpuinfo', 'utf8').match(/model name\s*:\s*(.*)/) ?? [])[1] ?? os.cpus()[0]?.model;
  } catch {
    return os.cpus()[0]?.model;
  }
})();
const note = [
  `SmallVGG(width C, depth 4), batch 32x3x32x32, SGD(lr 0.01, momentum 0.9, wd 1e-4); ` +
    `${o.rounds} alternating rounds per C, each a fresh process: ${o.warmup} warm-up + ${o.steps} timed steps; ` +
    `medians over rounds; peak RSS = max over rounds.`,
  `Machine: ${cpu}, ${os.availableParallelism()} logical CPUs, ${o.threads} intra-op threads on both sides; ` +
    `ours: ${results[0]?.a.runtime}, PyTorch: ${results[0]?.b.runtime}.`,
  `Final losses agree (same seed, same init order): ${results.map((r) => `C=${r.w}: ${r.a.loss.toFixed(6)} vs ${r.b.loss.toFixed(6)}`).join('; ')}.`,
];
const table = lines.join('\n');
console.log(table);
console.log();
console.log(note.join('\n'));
if (o.write) {
  const out = path.join(here, 'RESULTS.md');
  writeFileSync(out, `# Training-step benchmark results\n\nGenerated by \`node bench/run.mjs --write\` on ${new Date().toISOString()}.\n\n${table}\n\n${note.join('\n\n')}\n`);
  console.error(`wrote ${path.relative(root, out)}`);
}
