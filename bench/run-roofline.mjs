// The roofline suite (issue 13): measured training step against the machine's lower bound, ours
// and PyTorch's, for the bench model and the demo's model, in target, repvgg and hs modes.
//
//   node bench/run-roofline.mjs [--rounds 3] [--threads 1] [--models bench,demo] [--modes target,repvgg,hs]
//        [--channels-last] [--steps 10] [--write bench/RESULTS-roofline.md]
//
// Per model and mode: `--rounds` alternating rounds of ours (`repopt bench --json`) and PyTorch
// (`bench/train_step.py --model repoptvgg`), a fresh process each, the order swapped every round;
// then `bench/roofline.js` (the work per op kind, its lower bound, and every op kind timed in
// isolation on our side) and `bench/profile_torch.py` (torch.profiler over PyTorch's real step).
// The peaks are measured at the start and at the end of the suite and the best of them is used
// (a peak is what the machine can do). `cat /proc/loadavg` is recorded with every run: the
// machine is shared, so read the per-round ratios and the medians, not single runs.
import { spawnSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, '..');
const args = process.argv.slice(2);
const opt = (k, d) => {
  const i = args.indexOf(`--${k}`);
  return i < 0 ? d : args[i + 1];
};
const flag = (k) => args.includes(`--${k}`);
const rounds = Number(opt('rounds', 3));
const threads = Number(opt('threads', 1));
const steps = Number(opt('steps', 10));
const channelsLast = flag('channels-last');
const write = opt('write', null);
const python = opt('python', '/usr/bin/python3');

const MODELS = {
  bench: { label: 'bench model: blocks 1,2,4,1, widths 0.75,0.75,0.75,2.5, strides 2,2,2,2,2, 3x64x64, 100 classes, batch 32',
    args: ['--blocks', '1,2,4,1', '--widths', '0.75,0.75,0.75,2.5', '--strides', '2,2,2,2,2', '--classes', '100', '--in-channels', '3'], size: 64, batch: 32 },
  demo: { label: "demo's model: blocks 2,2,2,1, widths 0.25 x4, strides 1,1,2,2,2, 1x28x28 (Fashion-MNIST), 10 classes, batch 64",
    args: ['--blocks', '2,2,2,1', '--widths', '0.25,0.25,0.25,0.25', '--strides', '1,1,2,2,2', '--classes', '10', '--in-channels', '1'], size: 28, batch: 64 },
};
const models = opt('models', 'bench,demo').split(',');
const modes = opt('modes', 'target,repvgg,hs').split(',');
// OpenBLAS (libtorch's matmuls here) keeps its own pool, one thread per core, which
// torch.set_num_threads does not size; ours sizes it since setNumThreads does (src/torch/threads.ts),
// Python's torch does not: without this its idle BLAS workers spin on the other core and double
// PyTorch's CPU time per step at 1 thread.
const env = { ...process.env, OMP_WAIT_POLICY: 'PASSIVE', OPENBLAS_NUM_THREADS: String(threads) };
const loadavg = () => readFileSync('/proc/loadavg', 'utf8').trim().split(' ').slice(0, 3).join(' ');
const log = (l) => process.stderr.write(l + '\n');
const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};

function runJson(cmd, argv) {
  const r = spawnSync(cmd, argv, { cwd: root, env, encoding: 'utf8', maxBuffer: 1 << 26 });
  if (r.status !== 0) throw new Error(`${cmd} ${argv.join(' ')} failed (${r.status}): ${(r.stderr || '').trim().split('\n').slice(-3).join(' | ')}`);
  return JSON.parse(r.stdout.trim().split('\n').pop());
}

const cli = path.join(root, 'dist/src/cli/main.js');
const roof = path.join(root, 'dist/bench/roofline.js');
const cl = channelsLast ? ['--channels-last'] : [];
const stepArgs = (m, mode) => [...m.args, '--mode', mode, '--batch', String(m.batch), '--warmup', '3', '--steps', String(steps), '--threads', String(threads), ...cl];
const run = {
  ours: (m, mode) => runJson(process.execPath, [cli, 'bench', '--json', '--image-size', String(m.size), ...stepArgs(m, mode)]),
  pytorch: (m, mode) => runJson(python, [path.join(here, 'train_step.py'), '--model', 'repoptvgg', '--size', String(m.size), ...stepArgs(m, mode)]),
};

const peakRuns = [];
const measurePeaks = () => {
  const p = runJson(process.execPath, [roof, '--peaks-only', '--threads', String(threads), '--reps', '7']).peaks;
  peakRuns.push({ ...p, loadavg: loadavg() });
  log(`peaks: conv ${p.convGflops.toFixed(1)} (contiguous ${p.convContiguousGflops.toFixed(1)}, channels-last ${p.convChannelsLastGflops.toFixed(1)}) GFLOP/s, ` +
    `matmul ${p.matmulGflops.toFixed(1)} GFLOP/s, DRAM ${p.dramGBs.toFixed(1)} GB/s, cache ${p.cacheGBs.toFixed(1)} GB/s; loadavg ${loadavg()}`);
};

const results = [];
for (const mk of models) {
  const m = MODELS[mk];
  for (const mode of modes) {
    measurePeaks();
    const res = { model: mk, mode, ours: [], pytorch: [], loads: [] };
    for (let r = 0; r < rounds; r++) {
      for (const impl of r % 2 === 0 ? ['ours', 'pytorch'] : ['pytorch', 'ours']) {
        const la = loadavg();
        const x = run[impl](m, mode);
        res[impl].push(x);
        res.loads.push(la);
        log(`${mk} ${mode} round ${r + 1}/${rounds} ${impl.padEnd(7)} ${x.msPerStep[0].toFixed(1)} ms/step (fwd ${x.forwardMs.toFixed(1)} bwd ${x.backwardMs.toFixed(1)} opt ${x.optimizerMs.toFixed(2)}) ` +
          `rss ${(x.maxRSSKiB / 1024).toFixed(0)} MiB loss ${x.finalLoss.toFixed(7)} loadavg ${la}`);
      }
    }
    res.profile = runJson(python, [path.join(here, 'profile_torch.py'), '--size', String(m.size), ...stepArgs(m, mode).filter((a, i, all) => a !== '--steps' && all[i - 1] !== '--steps')]);
    results.push(res);
  }
}
measurePeaks();
const best = (k) => Math.max(...peakRuns.map((p) => p[k]));
const peaks = { threads, convGflops: best('convGflops'), convContiguousGflops: best('convContiguousGflops'), convChannelsLastGflops: best('convChannelsLastGflops'),
  matmulGflops: best('matmulGflops'), dramGBs: best('dramGBs'), cacheGBs: best('cacheGBs') };
for (const res of results) {
  const m = MODELS[res.model];
  res.roof = runJson(process.execPath, [roof, '--json', '--peaks', JSON.stringify(peaks), '--image-size', String(m.size), ...stepArgs(m, res.mode).filter((a, i, all) => a !== '--steps' && all[i - 1] !== '--steps' && a !== '--warmup' && all[i - 1] !== '--warmup')]);
  res.roofLoad = loadavg();
}

// ------------------------------------------------------------ report
const out = [];
const emit = (l = '') => {
  out.push(l);
  console.log(l);
};
const f1 = (x) => x.toFixed(1);
const f2 = (x) => x.toFixed(2);
emit('# Roofline of one training step: measured against what this machine can do');
emit();
emit(`Generated by \`node bench/run-roofline.mjs ${args.join(' ')}\` on ${new Date().toISOString()}; ${threads} intra-op thread(s) on both sides, ` +
  `\`OMP_WAIT_POLICY=PASSIVE\`, \`OPENBLAS_NUM_THREADS=${threads}\`, ${rounds} alternating rounds, 3 warm-up + ${steps} timed steps per run, a fresh process per run${channelsLast ? ', channels-last input' : ''}.`);
const maxLoad = Math.max(...peakRuns.map((p) => Number(p.loadavg.split(' ')[0])));
emit(maxLoad < 1.5
  ? `**Measured on a quiet machine** (1-minute load average at most ${maxLoad.toFixed(2)}, recorded with every row);`
  : '**Measured under load**: other jobs were compiling and testing on this 2-core machine (load averages with every row);');
emit('the per-round ratio (ours / PyTorch in the same round, back to back) is the robust number; absolute ms vary by 5-10% from run to run on this VM.');
emit();
emit(`Peaks (best of ${peakRuns.length} measurements, loadavg ${peakRuns.map((p) => p.loadavg.split(' ')[0]).join(', ')}): conv3x3 ${f1(peaks.convGflops)} GFLOP/s ` +
  `(contiguous ${f1(peaks.convContiguousGflops)}, channels-last ${f1(peaks.convChannelsLastGflops)}), matmul ${f1(peaks.matmulGflops)} GFLOP/s, ` +
  `memory bandwidth ${f1(peaks.dramGBs)} GB/s (DRAM, 64 MiB copy/add), ${f1(peaks.cacheGBs)} GB/s (cache, 1 MiB).`);
emit();
emit('Wall ms/step is what a user waits; CPU ms/step (the process\'s CPU time per step) is what the step costs when it is not descheduled, the fairer number on a loaded machine.');
emit('"bound" ratios divide the CPU ms by the lower bound.');
emit();
emit('| model | mode | lower bound ms | ours wall ms | PyTorch wall ms | ours CPU ms | PyTorch CPU ms | ours / bound | PyTorch / bound | ours / PyTorch wall (per-round median) | ours / PyTorch CPU (per-round median) | ours isolated ops ms | loadavg (1-min) during runs |');
emit('|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|');
for (const r of results) {
  const o = median(r.ours.map((x) => x.msPerStep[0]));
  const p = median(r.pytorch.map((x) => x.msPerStep[0]));
  const oc = median(r.ours.map((x) => x.cpuMsPerStep[0]));
  const pc = median(r.pytorch.map((x) => x.cpuMsPerStep[0]));
  const lb = r.roof.lowerBoundMs;
  const ratio = median(r.ours.map((x, i) => x.msPerStep[0] / r.pytorch[i].msPerStep[0]));
  const ratioCpu = median(r.ours.map((x, i) => x.cpuMsPerStep[0] / r.pytorch[i].cpuMsPerStep[0]));
  const l1 = r.loads.map((l) => Number(l.split(' ')[0]));
  r.summary = { o, p, oc, pc, lb, ratio, ratioCpu };
  emit(`| ${r.model} | ${r.mode} | ${f1(lb)} | ${f1(o)} | ${f1(p)} | ${f1(oc)} | ${f1(pc)} | ${f2(oc / lb)}x | ${f2(pc / lb)}x | ${f2(ratio)}x | ${f2(ratioCpu)}x | ${f1(r.roof.isolatedTotalMs)} | ${f1(Math.min(...l1))}-${f1(Math.max(...l1))} |`);
}
emit();
emit('Final losses (ours / PyTorch, the same net from the same seed): ' +
  results.map((r) => `${r.model} ${r.mode} ${r.ours[0].finalLoss.toPrecision(7)} / ${r.pytorch[0].finalLoss.toPrecision(7)}`).join('; ') + '.');
emit();
emit('## Where the time goes, per kind of op');
emit();
emit('Lower bound = max(FLOPs / peak, bytes / bandwidth) per op, summed (bench/roofline.ts). "ours isolated": each op kind timed alone on the step\'s shapes ' +
  '(forward; backward through autograd with only the input, or only the weight, requiring grad; the fastest of the reps), summed over layers. "PyTorch profiled": each kind\'s share of torch.profiler self time in PyTorch\'s real step, times its CPU ms per step ' +
  '(the profiler clocks wall time, which a loaded machine inflates; conv backward-data and backward-weight are one `convolution_backward` call there). ' +
  'Ours runs BatchNorm and the ReLU after it (target, hs) as one fused op, timed in the BN rows (its ReLU rows are 0), and the optimizer as one fused pass per tensor (native/kernels.cc).');
for (const r of results) {
  emit();
  emit(`### ${MODELS[r.model].label}: ${r.mode} (measured step, CPU ms: ours ${f1(r.summary.oc)}, PyTorch ${f1(r.summary.pc)}; roofline run at loadavg ${r.roofLoad.split(' ')[0]})`);
  emit();
  emit('| kind | GFLOP | MB moved | lower bound ms | ours isolated ms | PyTorch profiled ms |');
  emit('|---|---:|---:|---:|---:|---:|');
  // torch.profiler times wall clock; on a loaded machine only its shares hold, so each kind's share of
  // the profiled step is scaled to PyTorch's measured CPU ms per step
  const scale = r.summary.pc / r.profile.profiledStepMs;
  const pk = Object.fromEntries(Object.entries(r.profile.perKindMs).map(([k, v]) => [k, v * scale]));
  const used = new Set();
  const prof = (k) => {
    const keys = k === 'conv bwd-data' ? ['conv bwd'] : k === 'conv bwd-weight' ? [] : [k];
    keys.forEach((x) => used.add(x));
    const v = keys.reduce((a, x) => a + (pk[x] ?? 0), 0);
    return k === 'conv bwd-weight' ? '(with bwd-data)' : k === 'conv bwd-data' ? `${f1(v)} (data+weight)` : f1(v);
  };
  for (const row of r.roof.rows) {
    if (row.flops === 0 && row.bytes === 0) continue;
    emit(`| ${row.kind} | ${(row.flops / 1e9).toFixed(3)} | ${f1(row.bytes / 1e6)} | ${f2(row.boundMs)} | ${f1(row.isolatedMs)} | ${prof(row.kind)} |`);
  }
  const rest = Object.entries(pk).filter(([k]) => !used.has(k));
  for (const [k, v] of rest) emit(`| ${k} (PyTorch only) | | | | | ${f1(v)} |`);
  emit(`| **total** | | | **${f2(r.roof.lowerBoundMs)}** | **${f1(r.roof.isolatedTotalMs)}** (step: ${f1(r.summary.oc)} CPU ms) | **${f1(r.summary.pc)}** (CPU ms/step) |`);
}
emit();
emit('Machine: ' + `${os.cpus()[0]?.model ?? 'cpu'}, ${os.cpus().length} logical CPUs; ours: ${results[0]?.ours[0].runtime}, PyTorch: ${results[0]?.pytorch[0].runtime}.`);
if (write) writeFileSync(path.resolve(root, write), out.join('\n') + '\n');
writeFileSync(path.join(os.tmpdir(), `roofline-${process.pid}.json`), JSON.stringify({ peaks, peakRuns, results }, null, 1));
log(`raw results: ${path.join(os.tmpdir(), `roofline-${process.pid}.json`)}`);
