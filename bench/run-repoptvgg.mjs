// The RepOpt-VGG suite of bench/run.mjs (`node bench/run.mjs --suite repoptvgg ...`):
// ours (`repopt bench --json`, dist/src/cli/main.js) against PyTorch
// (`bench/train_step.py --model repoptvgg`), a fresh process per run, the order
// swapped every round, medians over rounds. See bench/README.md.
import { writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';

export async function runRepOptVggSuite(o, { root, here, median, waitQuiet, runOne }) {
  const cli = path.join(root, 'dist/src/cli/main.js');
  const py = path.join(here, 'train_step.py');
  const modes = o.modes.split(',');
  const maxModes = o.maxModes.split(',');
  const modelArgs = ['--blocks', o.blocks, '--widths', o.widths4, '--strides', o.strides, '--classes', String(o.classes)];
  const stepArgs = (mode, batch, warmup, steps) => [
    '--mode', mode, '--batch', String(batch), '--warmup', String(warmup), '--steps', String(steps),
    '--threads', String(o.threads), ...modelArgs, ...(o.channelsLast ? ['--channels-last'] : []),
  ];
  const run = {
    repopt: (args) => runOne(process.execPath, [cli, 'bench', '--json', '--image-size', String(o.size), ...args]),
    pytorch: (args) => runOne(o.python, [py, '--model', 'repoptvgg', '--size', String(o.size), ...args]),
  };
  const log = (l) => process.stderr.write(l + '\n');
  const busy = (q) => (q ? '' : ' (machine was busy at start)');

  // Alternating rounds of ours and PyTorch for each mode at one batch (per mode and impl).
  const alternate = (batchOf, rounds, warmup, steps, modeList) => {
    const res = {};
    for (const m of modeList) {
      res[m] = { repopt: [], pytorch: [] };
      for (let r = 0; r < rounds; r++) {
        for (const impl of r % 2 === 0 ? ['repopt', 'pytorch'] : ['pytorch', 'repopt']) {
          const q = o.quietWait > 0 ? waitQuiet() : true;
          const x = run[impl](stepArgs(m, batchOf(m, impl), warmup, steps));
          res[m][impl].push(x);
          log(`${m} batch ${x.batch} round ${r + 1}/${rounds} ${impl.padEnd(7)} ${x.msPerStep[0].toFixed(1)} ms/step (fwd ${x.forwardMs.toFixed(1)} bwd ${x.backwardMs.toFixed(1)} opt ${x.optimizerMs.toFixed(2)}) ` +
            `rss ${(x.maxRSSKiB / 1024).toFixed(0)} MiB loss ${x.finalLoss.toFixed(6)} loadavg ${os.loadavg()[0].toFixed(2)}${busy(q)}`);
        }
      }
    }
    return res;
  };
  const sum = (xs) => {
    const ms = median(xs.map((x) => x.msPerStep[0]));
    return {
      ms, batch: xs[0].batch, imgPerSec: (xs[0].batch * 1000) / ms, fwd: median(xs.map((x) => x.forwardMs)), bwd: median(xs.map((x) => x.backwardMs)),
      opt: median(xs.map((x) => x.optimizerMs)), gflops: median(xs.map((x) => x.gflops)), rssMiB: Math.max(...xs.map((x) => x.maxRSSKiB)) / 1024,
      loss: xs[0].finalLoss, runtime: xs[0].runtime,
    };
  };
  const pairRatio = (a, b) => median(a.map((x, i) => x.msPerStep[0] / b[i].msPerStep[0]));
  const f1 = (x) => x.toFixed(1);
  const f2 = (x) => x.toFixed(2);
  const out = [];
  const emit = (l = '') => {
    out.push(l);
    console.log(l);
  };

  // 1. Fixed batch: ours vs PyTorch per mode.
  const fixed = alternate(() => o.batch, o.rounds, o.warmup, o.steps, modes);
  const S = Object.fromEntries(modes.map((m) => [m, { repopt: sum(fixed[m].repopt), pytorch: sum(fixed[m].pytorch), pair: pairRatio(fixed[m].repopt, fixed[m].pytorch) }]));
  emit(`### Ours vs PyTorch per training step (batch ${o.batch}, ${o.size}x${o.size}${o.channelsLast ? ', channels-last input' : ''})`);
  emit();
  emit('| mode | ours ms/step | PyTorch ms/step | ratio | ratio (per-round median) | ours fwd / bwd / opt ms | PyTorch fwd / bwd / opt ms | ours GFLOP/s | ours peak RSS | PyTorch peak RSS | final loss (ours / PyTorch) |');
  emit('|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|');
  for (const m of modes) {
    const { repopt: a, pytorch: b, pair } = S[m];
    emit(`| ${m} | ${f1(a.ms)} | ${f1(b.ms)} | ${f2(a.ms / b.ms)}x | ${f2(pair)}x | ${f1(a.fwd)} / ${f1(a.bwd)} / ${f2(a.opt)} | ${f1(b.fwd)} / ${f1(b.bwd)} / ${f2(b.opt)} | ` +
      `${f1(a.gflops)} | ${a.rssMiB.toFixed(0)} MiB | ${b.rssMiB.toFixed(0)} MiB | ${a.loss.toPrecision(7)} / ${b.loss.toPrecision(7)} |`);
  }
  emit();

  // 2. target vs repvgg (and hs) at equal batch, both sides.
  if (S.target && S.repvgg) {
    emit(`### RepOpt-VGG (target + RepSGD) vs RepVGG at equal batch ${o.batch}`);
    emit();
    emit('| side | target img/s | repvgg img/s | speed-up | hs img/s | target peak RSS | repvgg peak RSS | memory ratio |');
    emit('|---|---:|---:|---:|---:|---:|---:|---:|');
    for (const impl of ['repopt', 'pytorch']) {
      const t = S.target[impl];
      const r = S.repvgg[impl];
      emit(`| ${impl === 'repopt' ? 'ours' : 'PyTorch'} | ${f1(t.imgPerSec)} | ${f1(r.imgPerSec)} | ${f2(t.imgPerSec / r.imgPerSec)}x | ${S.hs ? f1(S.hs[impl].imgPerSec) : '-'} | ` +
        `${t.rssMiB.toFixed(0)} MiB | ${r.rssMiB.toFixed(0)} MiB | ${f2(r.rssMiB / t.rssMiB)}x |`);
    }
    emit();
  }

  // 3. Max batch under a peak-RSS cap, and throughput there.
  if (o.memCap > 0) {
    const maxB = {};
    for (const m of maxModes) {
      maxB[m] = {};
      for (const impl of ['repopt', 'pytorch']) {
        const probes = [];
        const fits = (b) => {
          if (o.quietWait > 0) waitQuiet();
          const rss = run[impl](stepArgs(m, b, 1, 2)).maxRSSKiB / 1024;
          probes.push(`${b}:${rss.toFixed(0)}`);
          log(`max batch ${m} ${impl}: batch ${b} peak RSS ${rss.toFixed(0)} MiB ${rss <= o.memCap ? 'fits' : 'over'}`);
          return rss <= o.memCap;
        };
        // Doubling from --batch, then bisection to a multiple of 8.
        let lo = 0;
        let hi = o.batch;
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
        maxB[m][impl] = { batch: lo, probes };
      }
    }
    const atMax = alternate((m, impl) => maxB[m][impl].batch, Math.max(1, Math.min(o.rounds, 2)), 1, 3, maxModes);
    emit(`### Largest batch under ${o.memCap} MiB peak RSS, and throughput there`);
    emit();
    emit('| side | mode | max batch | peak RSS | ms/step | img/s |');
    emit('|---|---|---:|---:|---:|---:|');
    const M = {};
    for (const impl of ['repopt', 'pytorch']) {
      for (const m of maxModes) {
        const s = sum(atMax[m][impl]);
        M[`${impl}.${m}`] = s;
        emit(`| ${impl === 'repopt' ? 'ours' : 'PyTorch'} | ${m} | ${s.batch} | ${s.rssMiB.toFixed(0)} MiB | ${f1(s.ms)} | ${f1(s.imgPerSec)} |`);
      }
    }
    emit();
    if (maxModes.includes('target') && maxModes.includes('repvgg')) {
      for (const impl of ['repopt', 'pytorch']) {
        const t = M[`${impl}.target`];
        const r = M[`${impl}.repvgg`];
        emit(`${impl === 'repopt' ? 'Ours' : 'PyTorch'}: target fits a ${f2(t.batch / r.batch)}x larger batch and trains ${f2(t.imgPerSec / r.imgPerSec)}x faster at its max batch than repvgg at its own.`);
      }
      emit();
    }
    emit(`Probes (batch:peak RSS MiB): ${maxModes.map((m) => `${m} ours ${maxB[m].repopt.probes.join(' ')}; PyTorch ${maxB[m].pytorch.probes.join(' ')}`).join('; ')}.`);
    emit();
  }

  // 4. RepSGD vs SGD optimizer step.
  if (o.overhead) {
    const ov = { repopt: [], pytorch: [] };
    const args = ['--batch', String(o.batch), '--threads', String(o.threads), ...modelArgs, '--reps', '30'];
    for (let r = 0; r < o.rounds; r++) {
      for (const impl of r % 2 === 0 ? ['repopt', 'pytorch'] : ['pytorch', 'repopt']) {
        if (o.quietWait > 0) waitQuiet();
        ov[impl].push(run[impl](['--opt-overhead', ...args]));
      }
    }
    emit('### RepOptimizer overhead: optimizer step on the target model, RepSGD vs plain SGD');
    emit();
    emit('| side | RepSGD step ms | SGD step ms | Grad Mult cost ms | % of the target step |');
    emit('|---|---:|---:|---:|---:|');
    for (const impl of ['repopt', 'pytorch']) {
      const rep = median(ov[impl].map((x) => x.repsgdMs));
      const sgd = median(ov[impl].map((x) => x.sgdMs));
      const full = S.target ? S.target[impl].ms : NaN;
      emit(`| ${impl === 'repopt' ? 'ours' : 'PyTorch'} | ${f2(rep)} | ${f2(sgd)} | ${f2(rep - sgd)} | ${f2((100 * (rep - sgd)) / full)}% (RepSGD step: ${f2((100 * rep) / full)}%) |`);
    }
    emit();
  }

  // 5. Peak and achieved GFLOP/s.
  if (o.peak) {
    if (o.quietWait > 0) waitQuiet();
    const pa = runOne(process.execPath, [cli, 'bench', '--peak', '--json', '--threads', String(o.threads)]);
    if (o.quietWait > 0) waitQuiet();
    const pb = runOne(o.python, [py, '--model', 'repoptvgg', '--peak', '--threads', String(o.threads)]);
    emit(`### Achieved GFLOP/s against the machine's peak (${o.threads} thread${o.threads > 1 ? 's' : ''})`);
    emit();
    emit('| measurement | ours | PyTorch |');
    emit('|---|---:|---:|');
    emit(`| matmul ${pa.matmul.n}x${pa.matmul.n} (forward) | ${f1(pa.matmul.gflops)} | ${f1(pb.matmul.gflops)} |`);
    emit(`| conv3x3 32x128x32x32 -> 128 (forward, contiguous) | ${f1(pa.conv.contiguous.gflops)} | ${f1(pb.conv.contiguous.gflops)} |`);
    emit(`| conv3x3 the same, channels-last | ${f1(pa.conv.channelsLast.gflops)} | ${f1(pb.conv.channelsLast.gflops)} |`);
    for (const m of modes) {
      const peak = Math.max(pa.matmul.gflops, pa.conv.contiguous.gflops, pa.conv.channelsLast.gflops);
      emit(`| training step, ${m} (3 x forward MACs x 2 / time) | ${f1(S[m].repopt.gflops)} (${((100 * S[m].repopt.gflops) / peak).toFixed(0)}% of peak) | ${f1(S[m].pytorch.gflops)} |`);
    }
    emit();
  }

  const a0 = S[modes[0]];
  const note = `Model: RepOpt-VGG blocks ${o.blocks}, widths ${o.widths4}, strides ${o.strides}, ${o.classes} classes, ${o.size}x${o.size} input; ` +
    `SGD(lr 0.1, momentum 0.9, wd 1e-4, the release's wd rule), target mode with RepSGD (Grad Mults from the Hyper-Search initial scales). ` +
    `${o.rounds} alternating rounds per mode, a fresh process per run: ${o.warmup} warm-up + ${o.steps} timed steps; medians over rounds; peak RSS = max over rounds. ` +
    `Machine: ${os.cpus()[0]?.model}, ${os.availableParallelism()} logical CPUs, ${o.threads} intra-op thread${o.threads > 1 ? 's' : ''} on both sides; ours: ${a0.repopt.runtime}, PyTorch: ${a0.pytorch.runtime}.`;
  emit(note);
  if (o.write) {
    const file = path.join(here, 'RESULTS-repoptvgg.md');
    writeFileSync(file, `# RepOpt-VGG training-speed results\n\nGenerated by \`node bench/run.mjs --suite repoptvgg ${process.argv.slice(2).filter((x) => x !== '--suite' && x !== 'repoptvgg').join(' ')}\` on ${new Date().toISOString()}.\n\n${out.join('\n')}\n`);
    log(`wrote ${path.relative(root, file)}`);
  }
}
