// Largest batch under a peak-RSS cap, ours vs PyTorch, per mode (issue 13 item 3), and peak RSS at
// equal batch. Each probe is a fresh process (1 warm-up + 2 steps, as `repopt bench --max-batch`);
// ours and PyTorch probe the same batches in turn (doubling from --batch, then bisection to a
// multiple of 8); `cat /proc/loadavg` is recorded with the result (peak RSS does not depend on load).
//
//   node bench/max-batch.mjs [--cap 768] [--modes target,repvgg,hs] [--batch 32] [--threads 1]
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, '..');
const args = process.argv.slice(2);
const opt = (k, d) => (args.includes(`--${k}`) ? args[args.indexOf(`--${k}`) + 1] : d);
const cap = Number(opt('cap', 768));
const start = Number(opt('batch', 32));
const threads = opt('threads', '1');
const env = { ...process.env, OMP_WAIT_POLICY: 'PASSIVE' };
const common = (mode, batch) => ['--mode', mode, '--batch', String(batch), '--warmup', '1', '--steps', '2', '--threads', threads];
const run = {
  ours: (mode, b) => [process.execPath, [path.join(root, 'dist/src/cli/main.js'), 'bench', '--json', ...common(mode, b)]],
  pytorch: (mode, b) => ['/usr/bin/python3', [path.join(here, 'train_step.py'), '--model', 'repoptvgg', ...common(mode, b)]],
};
function rssMiB(impl, mode, b) {
  const [cmd, argv] = run[impl](mode, b);
  const r = spawnSync(cmd, argv, { cwd: root, env, encoding: 'utf8', maxBuffer: 1 << 24 });
  if (r.status !== 0) throw new Error(`${impl} ${mode} batch ${b} failed: ${r.stderr.trim().split('\n').pop()}`);
  return JSON.parse(r.stdout.trim().split('\n').pop()).maxRSSKiB / 1024;
}
const loadavg = () => readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ');
const rows = [];
for (const mode of opt('modes', 'target,repvgg,hs').split(',')) {
  for (const impl of ['ours', 'pytorch']) {
    const probes = [];
    const fits = (b) => {
      const rss = rssMiB(impl, mode, b);
      probes.push(`${b}:${rss.toFixed(0)}`);
      process.stderr.write(`${mode} ${impl} batch ${b}: ${rss.toFixed(0)} MiB (loadavg ${loadavg()})\n`);
      return rss <= cap;
    };
    let lo = 0;
    let hi = start;
    while (fits(hi)) {
      lo = hi;
      hi *= 2;
    }
    while (hi - lo > 8) {
      const mid = Math.round((lo + hi) / 16) * 8;
      if (mid <= lo || mid >= hi) break;
      if (fits(mid)) lo = mid;
      else hi = mid;
    }
    rows.push({ mode, impl, batch: lo, atStart: probes[0], probes: probes.join(' ') });
  }
}
console.log(`Largest batch under ${cap} MiB peak RSS (bench model, ${threads} thread(s), 1 warm-up + 2 steps per probe); ${new Date().toISOString()}, loadavg ${loadavg()}`);
console.log('| mode | ours max batch | PyTorch max batch | ours RSS at batch ' + start + ' | PyTorch RSS at batch ' + start + ' | probes ours | probes PyTorch |');
console.log('|---|---:|---:|---:|---:|---|---|');
for (const mode of [...new Set(rows.map((r) => r.mode))]) {
  const o = rows.find((r) => r.mode === mode && r.impl === 'ours');
  const p = rows.find((r) => r.mode === mode && r.impl === 'pytorch');
  console.log(`| ${mode} | ${o.batch} | ${p.batch} | ${o.atStart.split(':')[1]} MiB | ${p.atStart.split(':')[1]} MiB | ${o.probes} | ${p.probes} |`);
}
