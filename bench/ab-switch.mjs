// One of the addon's speed switches on against off, side by side (issue 13): step time, page faults
// and peak RSS, per model, mode and batch, alternating A/B in fresh processes.
//
//   node bench/ab-switch.mjs [--switch cache|fused] [--rounds 3] [--steps 8] [--threads 1]
//        [--modes target,repvgg,hs] [--cases bench:32,demo:64,bench:128]
//
// --switch cache: the large-buffer CPU cache (native/cpu-allocator.cc) against libtorch's default
// allocator with the glibc priming it replaced (REPOPT_CPU_CACHE=0). --switch fused: the fused
// kernels (native/kernels.cc) against ATen's composed ops (REPOPT_FUSED_KERNELS=0).
// Each case runs `repopt bench --json` with the switch on and off, the order swapped every round,
// and prints the medians and the per-round CPU ratio (on / off); `cat /proc/loadavg` is recorded
// with every run (read the ratios). The final losses must agree: both switches keep the numbers.
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, '..');
const args = process.argv.slice(2);
const opt = (k, d) => (args.includes(`--${k}`) ? args[args.indexOf(`--${k}`) + 1] : d);
const rounds = Number(opt('rounds', 3));
const steps = opt('steps', '8');
const threads = opt('threads', '1');
const modes = opt('modes', 'target,repvgg,hs').split(',');
const cases = opt('cases', 'bench:32,demo:64,bench:128').split(',').map((c) => c.split(':'));
const SWITCHES = {
  cache: { env: 'REPOPT_CPU_CACHE', on: 'cache', off: 'default', title: "Large-buffer CPU cache vs libtorch's default allocator + glibc priming (REPOPT_CPU_CACHE=0)" },
  fused: { env: 'REPOPT_FUSED_KERNELS', on: 'fused', off: 'ATen', title: "Fused kernels (native/kernels.cc) vs ATen's composed ops (REPOPT_FUSED_KERNELS=0)" },
};
const sw = SWITCHES[opt('switch', 'cache')];
if (!sw) throw new Error(`ab-switch: --switch must be one of ${Object.keys(SWITCHES).join(', ')}`);
const MODELS = {
  bench: ['--blocks', '1,2,4,1', '--widths', '0.75,0.75,0.75,2.5', '--strides', '2,2,2,2,2', '--classes', '100', '--in-channels', '3', '--image-size', '64'],
  demo: ['--blocks', '2,2,2,1', '--widths', '0.25,0.25,0.25,0.25', '--strides', '1,1,2,2,2', '--classes', '10', '--in-channels', '1', '--image-size', '28'],
};
/** The CPU the numbers come from: model, whether it has AVX-512, and a forced libtorch kernel set. */
export function cpuLabel() {
  const info = readFileSync('/proc/cpuinfo', 'utf8');
  const model = /^model name\s*:\s*(.*)$/m.exec(info)?.[1] ?? 'unknown CPU';
  const flags = /^flags\s*:(.*)$/m.exec(info)?.[1] ?? '';
  const isa = /\bavx512f\b/.test(flags) ? 'AVX-512' : /\bavx2\b/.test(flags) ? 'AVX2, no AVX-512' : 'no AVX2';
  const forced = ['ATEN_CPU_CAPABILITY', 'ONEDNN_MAX_CPU_ISA'].filter((k) => process.env[k]).map((k) => `${k}=${process.env[k]}`);
  return `${model} (${isa}${forced.length ? `; forced ${forced.join(', ')}` : ''})`;
}
const loadavg = () => readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ');
const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};
function run(model, mode, batch, on) {
  const env = { ...process.env, OMP_WAIT_POLICY: 'PASSIVE', OPENBLAS_NUM_THREADS: threads, [sw.env]: on ? '1' : '0' };
  const argv = [path.join(root, 'dist/src/cli/main.js'), 'bench', '--json', ...MODELS[model], '--mode', mode, '--batch', batch, '--warmup', '3', '--steps', steps, '--threads', threads];
  const r = spawnSync(process.execPath, argv, { cwd: root, env, encoding: 'utf8', maxBuffer: 1 << 24 });
  if (r.status !== 0) throw new Error(`${model} ${mode} batch ${batch} ${sw.env}=${on ? 1 : 0} failed: ${r.stderr.trim().split('\n').pop()}`);
  return JSON.parse(r.stdout.trim().split('\n').pop());
}
const rows = [];
for (const [model, batch] of cases) {
  for (const mode of modes) {
    const res = { on: [], off: [], loads: [] };
    for (let i = 0; i < rounds; i++) {
      for (const on of i % 2 ? [false, true] : [true, false]) {
        res.loads.push(loadavg().split(' ')[0]);
        const x = run(model, mode, batch, on);
        (on ? res.on : res.off).push(x);
        process.stderr.write(`${model} ${mode} batch ${batch} ${(on ? sw.on : sw.off).padEnd(7)} cpu ${x.cpuMsPerStep[0].toFixed(1)} ms wall ${x.msPerStep[0].toFixed(1)} ms faults/step ${x.minorFaultsPerStep.toFixed(0)} rss ${(x.maxRSSKiB / 1024).toFixed(0)} MiB loss ${x.finalLoss} (loadavg ${loadavg()})\n`);
      }
    }
    const ratio = res.on.map((c, i) => c.cpuMsPerStep[0] / res.off[i].cpuMsPerStep[0]);
    rows.push({ model, batch, mode, res, ratio });
  }
}
console.log(`${sw.title}; ${rounds} alternating rounds, 3 warm-up + ${steps} steps, ${threads} thread(s); ${cpuLabel()}; ${new Date().toISOString()}`);
const [a, b] = [sw.on, sw.off];
console.log(`| model | batch | mode | CPU ms/step ${a} | CPU ms/step ${b} | ${a} / ${b} (per round) | faults/step ${a} | faults/step ${b} | peak RSS ${a} | peak RSS ${b} | same final loss | loadavg |`);
console.log('|---|---:|---|---:|---:|---|---:|---:|---:|---:|---|---|');
for (const { model, batch, mode, res, ratio } of rows) {
  const m = (xs, f) => median(xs.map(f));
  const cpu = (x) => x.cpuMsPerStep[0];
  const same = res.on.every((c, i) => c.finalLoss === res.off[i].finalLoss);
  console.log(`| ${model} | ${batch} | ${mode} | ${m(res.on, cpu).toFixed(1)} | ${m(res.off, cpu).toFixed(1)} | ${median(ratio).toFixed(2)}x (${ratio.map((r) => r.toFixed(2)).join(', ')}) | ` +
    `${m(res.on, (x) => x.minorFaultsPerStep).toFixed(0)} | ${m(res.off, (x) => x.minorFaultsPerStep).toFixed(0)} | ${m(res.on, (x) => x.maxRSSKiB / 1024).toFixed(0)} MiB | ` +
    `${m(res.off, (x) => x.maxRSSKiB / 1024).toFixed(0)} MiB | ${same ? 'yes' : 'NO'} | ${Math.min(...res.loads)}-${Math.max(...res.loads)} |`);
}
