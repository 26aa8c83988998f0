/** `repopt bench`: flags -> the benchmark harness in src/train/bench.ts -> printed results. */
import { UsageError, parseCommand } from './flags.js';
import { BENCH_COMMAND } from './commands.js';
import {
  DEFAULT_BENCH_MODEL, benchChild, benchOptimizerOverhead, benchPeak, benchTrainStep, median, modelLabel, searchMaxBatch,
  type BenchMode, type BenchOptions, type BenchResult,
} from '../train/bench.js';
import { buildVgg, type ModelConfig } from '../train/setup.js';

export function runBench(argv: string[], log: (l: string) => void): number {
  const { flags: f } = parseCommand(BENCH_COMMAND, argv);
  const custom = f.arch === undefined && f.blocks === undefined && f.widths === undefined;
  if (f.arch && (f.blocks || f.widths)) throw new UsageError('give either --arch or --blocks/--widths, not both');
  const model: ModelConfig = custom
    ? { ...DEFAULT_BENCH_MODEL, strides: f.strides ?? DEFAULT_BENCH_MODEL.strides, numClasses: f.classes, inChannels: f['in-channels'] }
    : { arch: f.arch, blocks: f.blocks, widths: f.widths, strides: f.strides, inChannels: f['in-channels'], numClasses: f.classes };
  // Resolve arch names to blocks/widths once (MAC counting and child args use them).
  const probeModel = buildVgg(model, 'target');
  const resolved: ModelConfig = { ...model, arch: undefined, blocks: [...probeModel.config.numBlocks], widths: [...probeModel.config.widthMultiplier] };
  probeModel.dispose();
  const o: BenchOptions = {
    model: resolved,
    imageSize: f['image-size'],
    mode: f.mode,
    optimizer: f.optimizer,
    batch: f.batch,
    warmup: f.warmup,
    steps: f.steps,
    threads: f.threads,
    channelsLast: f['channels-last'],
    seed: f.seed,
  };
  const json = f.json;
  const out = (obj: unknown, text: () => void) => (json ? log(JSON.stringify(obj)) : text());

  if (f.peak) {
    const p = benchPeak(o.threads, f.reps ?? 7);
    out(p, () => {
      log(`machine peak, ${p.threads} threads (forward only, median of runs):`);
      log(`  matmul ${p.matmul.n}x${p.matmul.n}: ${p.matmul.ms.toFixed(1)} ms, ${p.matmul.gflops.toFixed(1)} GFLOP/s`);
      log(`  conv3x3 ${p.conv.shape}: contiguous ${p.conv.contiguous.gflops.toFixed(1)} GFLOP/s, channels-last ${p.conv.channelsLast.gflops.toFixed(1)} GFLOP/s`);
    });
    return 0;
  }
  if (f['opt-overhead']) {
    const r = benchOptimizerOverhead(o, f.reps ?? 30);
    out(r, () => {
      log(`optimizer step on the target model (${modelLabel(o.model)}), ${r.reps} alternating steps each:`);
      log(`  RepSGD ${r.repsgdMs.toFixed(3)} ms, SGD ${r.sgdMs.toFixed(3)} ms: Grad Mults add ${r.overheadMs.toFixed(3)} ms`);
    });
    return 0;
  }
  if (f['max-batch']) {
    if (f['mem-cap'] === undefined) throw new UsageError('--max-batch needs --mem-cap MIB (a cap on peak RSS)');
    const cap = f['mem-cap'];
    const modes = f.modes ?? [o.mode];
    const res = modes.map((m) => {
      if (!json) log(`${m}: searching the largest batch under ${cap} MiB peak RSS`);
      const r = searchMaxBatch((b) => benchChild({ ...o, mode: m, batch: b, warmup: 1, steps: 2 }).maxRSSKiB / 1024, cap, o.batch, 8, json ? undefined : log);
      return { mode: m, capMiB: cap, ...r };
    });
    out(res, () => res.forEach((r) => log(`${r.mode}: max batch ${r.batch} (peak RSS ${r.rssMiB.toFixed(0)} MiB)`)));
    return 0;
  }
  if (f.modes) {
    const modes = f.modes;
    const rounds = f.rounds;
    const runs = new Map<BenchMode, BenchResult[]>(modes.map((m) => [m, []]));
    for (let r = 0; r < rounds; r++) {
      const order = r % 2 ? [...modes].reverse() : modes;
      for (const m of order) {
        const res = benchChild({ ...o, mode: m });
        runs.get(m)!.push(res);
        if (!json) log(`round ${r + 1}/${rounds} ${m.padEnd(6)} ${res.msPerStep[0].toFixed(1)} ms/step, ${res.imgPerSec.toFixed(1)} img/s, RSS ${(res.maxRSSKiB / 1024).toFixed(0)} MiB`);
      }
    }
    const rows = modes.map((m) => {
      const xs = runs.get(m)!;
      const ms = median(xs.map((x) => x.msPerStep[0]));
      return {
        mode: m, msPerStep: ms, imgPerSec: (o.batch * 1000) / ms, forwardMs: median(xs.map((x) => x.forwardMs)),
        backwardMs: median(xs.map((x) => x.backwardMs)), optimizerMs: median(xs.map((x) => x.optimizerMs)),
        gflops: median(xs.map((x) => x.gflops)), rssMiB: Math.max(...xs.map((x) => x.maxRSSKiB)) / 1024,
      };
    });
    out(rows, () => {
      log(`${modelLabel(o.model)}, ${o.imageSize}x${o.imageSize}, batch ${o.batch}, ${o.threads} threads, medians of ${rounds} rounds`);
      log('| mode | ms/step | img/s | fwd ms | bwd ms | opt ms | GFLOP/s | peak RSS MiB |');
      log('|---|---:|---:|---:|---:|---:|---:|---:|');
      for (const r of rows) {
        log(`| ${r.mode} | ${r.msPerStep.toFixed(1)} | ${r.imgPerSec.toFixed(1)} | ${r.forwardMs.toFixed(1)} | ${r.backwardMs.toFixed(1)} | ${r.optimizerMs.toFixed(2)} | ${r.gflops.toFixed(1)} | ${r.rssMiB.toFixed(0)} |`);
      }
    });
    return 0;
  }
  const r = benchTrainStep(o);
  out(r, () => {
    log(`${r.model}, mode ${r.mode} (${r.optimizer}), ${r.size}x${r.size}, batch ${r.batch}, ${r.threads} threads${r.channelsLast ? ', channels-last' : ''}${r.fusedKernels ? '' : ', fused kernels off'}`);
    log(`  ${r.msPerStep[0].toFixed(1)} ms/step (forward ${r.forwardMs.toFixed(1)}, backward ${r.backwardMs.toFixed(1)}, optimizer ${r.optimizerMs.toFixed(2)}), ` +
      `${r.imgPerSec.toFixed(1)} img/s, ${r.gflops.toFixed(1)} GFLOP/s, peak RSS ${(r.maxRSSKiB / 1024).toFixed(0)} MiB, final loss ${r.finalLoss.toFixed(6)}`);
  });
  return 0;
}
