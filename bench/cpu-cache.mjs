// The large-buffer CPU cache (native/cpu-allocator.cc) against libtorch's default allocator with the
// glibc priming it replaced (REPOPT_CPU_CACHE=0): step time, page faults and peak RSS, per model,
// mode and batch, alternating A/B in fresh processes (issue 13, items 2 and 3).
//
//   node bench/cpu-cache.mjs [--rounds 3] [--steps 8] [--threads 1] [--modes target,repvgg,hs]
//        [--cases bench:32,demo:64,bench:128]
//
// Each case runs `repopt bench --json` with the cache and without, the order swapped every round,
// and prints the medians and the per-round CPU ratio (cache / default); `cat /proc/loadavg` is
// recorded with every run (the machine is shared: read the ratios). The final losses must agree.
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
const MODELS = {
  bench: ['--blocks', '1,2,4,1', '--widths', '0.75,0.75,0.75,2.5', '--strides', '2,2,2,2,2', '--classes', '100', '--in-channels', '3', '--image-size', '64'],
  demo: ['--blocks', '2,2,2,1', '--widths', '0.25,0.25,0.25,0.25', '--strides', '1,1,2,2,2', '--classes', '10', '--in-channels', '1', '--image-size', '28'],
};
const loadavg = () => readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ');
const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};
function run(model, mode, batch, cache) {
  const env = { ...process.env, OMP_WAIT_POLICY: 'PASSIVE', REPOPT_CPU_CACHE: cache ? '1' : '0' };
  const argv = [path.join(root, 'dist/src/cli/main.js'), 'bench', '--json', ...MODELS[model], '--mode', mode, '--batch', batch, '--warmup', '3', '--steps', steps, '--threads', threads];
  const r = spawnSync(process.execPath, argv, { cwd: root, env, encoding: 'utf8', maxBuffer: 1 << 24 });
  if (r.status !== 0) throw new Error(`${model} ${mode} batch ${batch} cache ${cache} failed: ${r.stderr.trim().split('\n').pop()}`);
  return JSON.parse(r.stdout.trim().split('\n').pop());
}
const rows = [];
for (const [model, batch] of cases) {
  for (const mode of modes) {
    const res = { cache: [], plain: [], loads: [] };
    for (let i = 0; i < rounds; i++) {
      for (const cache of i % 2 ? [false, true] : [true, false]) {
        res.loads.push(loadavg().split(' ')[0]);
        const x = run(model, mode, batch, cache);
        (cache ? res.cache : res.plain).push(x);
        process.stderr.write(`${model} ${mode} batch ${batch} ${cache ? 'cache  ' : 'default'} cpu ${x.cpuMsPerStep[0].toFixed(1)} ms wall ${x.msPerStep[0].toFixed(1)} ms faults/step ${x.minorFaultsPerStep.toFixed(0)} rss ${(x.maxRSSKiB / 1024).toFixed(0)} MiB loss ${x.finalLoss} (loadavg ${loadavg()})\n`);
      }
    }
    const ratio = res.cache.map((c, i) => c.cpuMsPerStep[0] / res.plain[i].cpuMsPerStep[0]);
    rows.push({ model, batch, mode, res, ratio });
  }
}
console.log(`Large-buffer CPU cache vs libtorch's default allocator + glibc priming (REPOPT_CPU_CACHE=0); ${rounds} alternating rounds, 3 warm-up + ${steps} steps, ${threads} thread(s); ${new Date().toISOString()}`);
console.log('| model | batch | mode | CPU ms/step cache | CPU ms/step default | cache / default (per round) | faults/step cache | faults/step default | peak RSS cache | peak RSS default | same final loss | loadavg |');
console.log('|---|---:|---|---:|---:|---|---:|---:|---:|---:|---|---|');
for (const { model, batch, mode, res, ratio } of rows) {
  const m = (xs, f) => median(xs.map(f));
  const cpu = (x) => x.cpuMsPerStep[0];
  const same = res.cache.every((c, i) => c.finalLoss === res.plain[i].finalLoss);
  console.log(`| ${model} | ${batch} | ${mode} | ${m(res.cache, cpu).toFixed(1)} | ${m(res.plain, cpu).toFixed(1)} | ${median(ratio).toFixed(2)}x (${ratio.map((r) => r.toFixed(2)).join(', ')}) | ` +
    `${m(res.cache, (x) => x.minorFaultsPerStep).toFixed(0)} | ${m(res.plain, (x) => x.minorFaultsPerStep).toFixed(0)} | ${m(res.cache, (x) => x.maxRSSKiB / 1024).toFixed(0)} MiB | ` +
    `${m(res.plain, (x) => x.maxRSSKiB / 1024).toFixed(0)} MiB | ${same ? 'yes' : 'NO'} | ${Math.min(...res.loads)}-${Math.max(...res.loads)} |`);
}
