/**
 * The training-speed measurements of RepOpt-VGG, our side (the harness behind `repopt bench`).
 *
 * One run (the default) times the training step of one model in one mode in
 * this process and prints a summary (`--json`: one JSON line, the format
 * bench/run-repopt.mjs reads, the same as bench/train_step.py's):
 *
 *   repopt bench [--arch A | --blocks B --widths W] [--strides S] [--image-size N] [--classes N]
 *                [--mode target|repvgg|hs] [--optimizer repsgd|sgd] [--batch N]
 *                [--warmup N] [--steps N] [--threads N] [--channels-last] [--seed N] [--json]
 *
 * Default model: A0 widths with fewer blocks (1,2,4,1), strides 2,2,2,2,2, 64x64
 * input, 100 classes: convolutions dominate, a step takes well under a second.
 *
 * A step is exactly the trainer's: zeroGrad (grads to none), forward, cross
 * entropy, backward, optimizer step, inside torch.tidy. Optimizers as `repopt
 * train` builds them: SGD(lr 0.1, momentum 0.9, wd 1e-4) with the release's
 * weight-decay rule; `target` mode trains with RepSGD (`--optimizer repsgd`,
 * the default): the Grad Mults come from scales at the Hyper-Search model's
 * initial values (1 and sqrt(2/i), identity 1) so no scale file is needed; the
 * Rule of Initialization is skipped (a dense conv's time does not depend on
 * its values), so both sides start from the same plain init and train the same
 * numbers. `--optimizer sgd` trains the target model with plain SGD.
 *
 * Each step is split into forward (+ loss), backward and optimizer step, timed
 * with performance.now() (libtorch CPU ops are synchronous).
 *
 * Other measurements:
 *   --modes target,repvgg,hs [--rounds R]  each mode in a fresh child process, alternating order
 *                                          per round; medians; peak RSS per mode
 *   --max-batch --mem-cap MIB [--mode M]   the largest batch whose run keeps peak RSS <= cap:
 *                                          doubling, then bisection, each probe a child process
 *   --opt-overhead [--reps N]              RepSGD vs plain SGD step on the same target model and
 *                                          gradients, alternating, in this process
 *   --peak                                 the machine's measured peak: a large matmul and a large
 *                                          3x3 convolution (contiguous and channels-last), GFLOP/s
 */
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { toChannelsLast_ } from '../nn/memory-format.js';
import * as torch from '../torch/index.js';
import { F, type Tensor } from '../torch/index.js';
import type { Optimizer } from '../optim/index.js';
import { vggBlockLayout, type RepOptVGG, type RepOptVGGMode } from '../models/repoptvgg.js';
import { repOptVggHandler } from '../models/repoptvgg-handler.js';
import { buildVgg, buildOptimizer, type ModelConfig } from './setup.js';

export const BENCH_MODES = ['target', 'repvgg', 'qarepvgg', 'hs'] as const;
export type BenchMode = (typeof BENCH_MODES)[number];

export interface BenchOptions {
  model: ModelConfig;
  imageSize: number;
  mode: BenchMode;
  /** `repsgd`: SGD with Grad Mults (target mode only); `sgd`: plain SGD. */
  optimizer: 'repsgd' | 'sgd';
  batch: number;
  warmup: number;
  steps: number;
  threads: number;
  channelsLast: boolean;
  seed: number;
}

export const DEFAULT_BENCH_MODEL: ModelConfig = {
  blocks: [1, 2, 4, 1],
  widths: [0.75, 0.75, 0.75, 2.5],
  strides: [2, 2, 2, 2, 2],
  inChannels: 3,
  numClasses: 100,
};

export interface BenchResult {
  impl: string;
  mode: BenchMode;
  optimizer: string;
  model: string;
  batch: number;
  size: number;
  channelsLast: boolean;
  /** Whether the addon's fused kernels were on (torch.setFusedKernels; the numbers are the same either way). */
  fusedKernels: boolean;
  warmup: number;
  steps: number;
  threads: number;
  /** Wall ms per step (mean over the timed steps); an array of one, as bench/train-step.ts. */
  msPerStep: number[];
  cpuMsPerStep: number[];
  medianStepMs: number;
  /** Median ms per phase over the timed steps. */
  forwardMs: number;
  backwardMs: number;
  optimizerMs: number;
  imgPerSec: number;
  /** Multiply-accumulates of one image's forward pass (convs + linear). */
  macsPerImage: number;
  /** Achieved GFLOP/s: 3 x forward MACs x 2 FLOP x batch / step time. */
  gflops: number;
  maxRSSKiB: number;
  /** Minor page faults per timed step (a buffer mapped afresh faults once per 4 KiB page it touches). */
  minorFaultsPerStep: number;
  finalLoss: number;
  runtime: string;
}

export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length === 0 ? NaN : s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

/**
 * Forward multiply-accumulates of one image in a mode: every conv (3x3, and in
 * `repvgg` / `hs` the 1x1 branch) and the classifier. BN, ReLU, adds and scales
 * are not counted (they are memory-bound, not MACs).
 */
export function vggModeMacs(model: ModelConfig, mode: BenchMode, imageSize: number): number {
  const blocks = model.blocks!;
  const widths = model.widths!;
  let h = imageSize;
  let macs = 0;
  let last = 0;
  for (const b of vggBlockLayout({ numBlocks: blocks, widthMultiplier: widths }, { inChannels: model.inChannels, strides: model.strides })) {
    h = Math.floor((h + 2 - 3) / b.stride) + 1;
    const perTap = b.outChannels * b.inChannels * h * h;
    macs += perTap * 9 + (mode === 'target' ? 0 : perTap);
    last = b.outChannels;
  }
  return macs + last * model.numClasses;
}

/** Scales at the Hyper-Search model's initial values, keyed as in a scale file. */
export function initialScales(model: RepOptVGG): Map<string, Tensor> {
  const out = new Map<string, Tensor>();
  for (const b of model.layout) {
    out.set(`${b.name}.scale_conv.weight`, torch.keep(torch.full([b.outChannels], b.scaleInit)));
    out.set(`${b.name}.scale_1x1.weight`, torch.keep(torch.full([b.outChannels], b.scaleInit)));
    if (b.identity) out.set(`${b.name}.scale_identity.weight`, torch.keep(torch.full([b.outChannels], 1)));
  }
  return out;
}

const OPTIMIZER = { kind: 'sgd' as const, lr: 0.1, momentum: 0.9, nesterov: false, weightDecay: 1e-4 };

/** The optimizer `repopt train` would build for this mode (target: RepSGD from the initial scales). */
export function benchOptimizer(model: RepOptVGG, kind: 'repsgd' | 'sgd'): Optimizer<{ lr: number }> {
  if (kind === 'sgd') return buildOptimizer(model, OPTIMIZER);
  const scales = initialScales(model);
  const mults = repOptVggHandler(model, scales).gradMults('sgd');
  try {
    return buildOptimizer(model, OPTIMIZER, mults); // RepSGD
  } finally {
    for (const t of [...scales.values(), ...mults.values()]) t.dispose();
  }
}

export function modelLabel(m: ModelConfig): string {
  return m.arch ?? `blocks ${m.blocks!.join(',')} widths ${m.widths!.join(',')} strides ${(m.strides ?? [2, 2, 2, 2, 2]).join(',')}`;
}

/** Times the training step (see the file comment). */
export function benchTrainStep(o: BenchOptions): BenchResult {
  torch.setNumThreads(o.threads);
  torch.manualSeed(o.seed);
  const model = buildVgg(o.model, o.mode as RepOptVGGMode);
  if (o.channelsLast) toChannelsLast_(model); // weights too, as model.to(memory_format=torch.channels_last)
  const kind = o.mode === 'target' ? o.optimizer : 'sgd';
  const opt = benchOptimizer(model, kind);
  let x = torch.keep(torch.randn([o.batch, o.model.inChannels, o.imageSize, o.imageSize]));
  if (o.channelsLast) {
    const cl = torch.keep(x.toChannelsLast());
    x.dispose();
    x = cl;
  }
  const y = torch.keep(torch.randint(0, o.model.numClasses, [o.batch]));
  const phases = { fwd: [] as number[], bwd: [] as number[], opt: [] as number[], all: [] as number[] };
  const step = (record: boolean) =>
    torch.tidy(() => {
      const t0 = performance.now();
      opt.zeroGrad();
      const loss = F.crossEntropy(model.forward(x), y);
      const t1 = performance.now();
      loss.backward();
      const t2 = performance.now();
      opt.step();
      const t3 = performance.now();
      if (record) {
        phases.fwd.push(t1 - t0);
        phases.bwd.push(t2 - t1);
        phases.opt.push(t3 - t2);
        phases.all.push(t3 - t0);
      }
    });
  // as the trainer: the step's disposed handles are collected once per step (see torch.collectHandles)
  const stepAndCollect = (record: boolean) => {
    step(record);
    torch.collectHandles();
  };
  try {
    for (let i = 0; i < o.warmup; i++) stepAndCollect(false);
    const c0 = process.cpuUsage();
    const f0 = process.resourceUsage().minorPageFault;
    const w0 = performance.now();
    for (let i = 0; i < o.steps; i++) stepAndCollect(true);
    const ms = (performance.now() - w0) / Math.max(1, o.steps);
    const c = process.cpuUsage(c0);
    const faults = process.resourceUsage().minorPageFault - f0;
    const finalLoss = torch.tidy(() => torch.noGrad(() => F.crossEntropy(model.forward(x), y).item()));
    const macsPerImage = vggModeMacs(modelConfigOf(model, o.model), o.mode, o.imageSize);
    return {
      impl: 'repopt',
      mode: o.mode,
      optimizer: o.mode === 'target' ? kind : 'sgd',
      model: modelLabel(o.model),
      batch: o.batch,
      size: o.imageSize,
      channelsLast: o.channelsLast,
      fusedKernels: torch.getFusedKernels(),
      warmup: o.warmup,
      steps: o.steps,
      threads: torch.getNumThreads(),
      msPerStep: [ms],
      cpuMsPerStep: [(c.user + c.system) / 1e3 / Math.max(1, o.steps)],
      medianStepMs: median(phases.all),
      forwardMs: median(phases.fwd),
      backwardMs: median(phases.bwd),
      optimizerMs: median(phases.opt),
      imgPerSec: (o.batch * 1000) / ms,
      macsPerImage,
      gflops: (3 * 2 * macsPerImage * o.batch) / (ms * 1e6),
      maxRSSKiB: process.resourceUsage().maxRSS,
      minorFaultsPerStep: faults / Math.max(1, o.steps),
      finalLoss,
      runtime: `node ${process.version}`,
    };
  } finally {
    model.dispose();
    opt.dispose();
    x.dispose();
    y.dispose();
  }
}

function modelConfigOf(model: RepOptVGG, m: ModelConfig): ModelConfig {
  return { ...m, blocks: [...model.config.numBlocks], widths: [...model.config.widthMultiplier] };
}

// ------------------------------------------------------------ RepSGD overhead

export interface OverheadResult {
  /** Median ms of one optimizer step with Grad Mults (RepSGD) and without (SGD), same model and gradients. */
  repsgdMs: number;
  sgdMs: number;
  overheadMs: number;
  reps: number;
}

/**
 * RepSGD's extra cost over plain SGD: one forward/backward gives the target
 * model gradients; then the two optimizers (each with its own momentum
 * buffers) step alternately `reps` times on those gradients, timed one by one.
 */
export function benchOptimizerOverhead(o: BenchOptions, reps: number): OverheadResult {
  torch.setNumThreads(o.threads);
  torch.manualSeed(o.seed);
  const model = buildVgg(o.model, 'target');
  const rep = benchOptimizer(model, 'repsgd');
  const plain = benchOptimizer(model, 'sgd');
  try {
    torch.tidy(() => {
      const x = torch.randn([o.batch, o.model.inChannels, o.imageSize, o.imageSize]);
      const y = torch.randint(0, o.model.numClasses, [o.batch]);
      F.crossEntropy(model.forward(x), y).backward();
    });
    const times = { rep: [] as number[], plain: [] as number[] };
    for (let i = 0; i < reps + 3; i++) {
      for (const [k, opt] of (i % 2 ? [['plain', plain], ['rep', rep]] : [['rep', rep], ['plain', plain]]) as ['rep' | 'plain', Optimizer<{ lr: number }>][]) {
        const t0 = performance.now();
        opt.step();
        if (i >= 3) times[k].push(performance.now() - t0);
      }
    }
    const repsgdMs = median(times.rep);
    const sgdMs = median(times.plain);
    return { repsgdMs, sgdMs, overheadMs: repsgdMs - sgdMs, reps };
  } finally {
    model.zeroGrad();
    model.dispose();
    rep.dispose();
    plain.dispose();
  }
}

// ------------------------------------------------------------ machine peak

export interface PeakResult {
  threads: number;
  matmul: { n: number; ms: number; gflops: number };
  conv: { shape: string; contiguous: { ms: number; gflops: number }; channelsLast: { ms: number; gflops: number } };
}

/** How a peak is timed: which run counts (the median by default) and the clock (wall time by default). */
export interface PeakTiming {
  pick?: (runsMs: number[]) => number;
  clock?: () => number;
}

function timeRuns(fn: () => void, reps: number, { pick = median, clock = () => performance.now() }: PeakTiming): number {
  fn(); // warm-up
  const ts: number[] = [];
  for (let i = 0; i < reps; i++) {
    const t0 = clock();
    fn();
    ts.push(clock() - t0);
  }
  return pick(ts);
}

export function benchPeak(threads: number, reps = 7, n = 2048, timing: PeakTiming = {}): PeakResult {
  torch.setNumThreads(threads);
  torch.manualSeed(0);
  return torch.noGrad(() =>
    torch.tidy(() => {
      const a = torch.randn([n, n]);
      const b = torch.randn([n, n]);
      const mmMs = timeRuns(() => torch.tidy(() => void a.matmul(b)), reps, timing);
      const [N, C, H] = [32, 128, 32];
      const x = torch.randn([N, C, H, H]);
      const w = torch.randn([C, C, 3, 3]).mul(0.01);
      const xc = x.toChannelsLast();
      const wc = w.toChannelsLast();
      const flop = 2 * N * C * C * 9 * H * H;
      const cMs = timeRuns(() => torch.tidy(() => void F.conv2d(x, w, null, { padding: 1 })), reps, timing);
      const clMs = timeRuns(() => torch.tidy(() => void F.conv2d(xc, wc, null, { padding: 1 })), reps, timing);
      return {
        threads: torch.getNumThreads(),
        matmul: { n, ms: mmMs, gflops: (2 * n ** 3) / (mmMs * 1e6) },
        conv: {
          shape: `${N}x${C}x${H}x${H}, ${C}x${C}x3x3, padding 1`,
          contiguous: { ms: cMs, gflops: flop / (cMs * 1e6) },
          channelsLast: { ms: clMs, gflops: flop / (clMs * 1e6) },
        },
      };
    }),
  );
}

// ------------------------------------------------------------ child-process drivers

/** The CLI entry point: child runs are `repopt bench --json` processes. */
const self = fileURLToPath(new URL('../cli/main.js', import.meta.url));

function benchArgs(o: BenchOptions): string[] {
  const m = o.model;
  const a = ['bench', '--json', '--mode', o.mode, '--optimizer', o.optimizer, '--batch', String(o.batch), '--image-size', String(o.imageSize),
    '--warmup', String(o.warmup), '--steps', String(o.steps), '--threads', String(o.threads), '--seed', String(o.seed), '--classes', String(m.numClasses), '--in-channels', String(m.inChannels)];
  if (m.arch) a.push('--arch', m.arch);
  else a.push('--blocks', m.blocks!.join(','), '--widths', m.widths!.join(','));
  if (m.strides) a.push('--strides', m.strides.join(','));
  if (o.channelsLast) a.push('--channels-last');
  return a;
}

/** One `repopt bench --json` run in a fresh process (peak RSS is per process). */
export function benchChild(o: BenchOptions): BenchResult {
  const r = spawnSync(process.execPath, [self, ...benchArgs(o)], { encoding: 'utf8', maxBuffer: 1 << 24 });
  if (r.error) throw r.error;
  if (r.status !== 0) throw new Error(`bench child (${o.mode}, batch ${o.batch}) failed (${r.status}): ${r.stderr.trim().split('\n').pop()}`);
  return JSON.parse(r.stdout.trim().split('\n').pop()!) as BenchResult;
}

/**
 * The largest batch whose run stays under `capMiB` peak RSS, by doubling from
 * `start` and then bisecting (to a multiple of `granule`). `probe(batch)` runs
 * in its own process and returns its peak RSS in MiB.
 */
export function searchMaxBatch(probe: (batch: number) => number, capMiB: number, start = 16, granule = 8, log?: (l: string) => void): { batch: number; rssMiB: number; probes: [number, number][] } {
  const probes: [number, number][] = [];
  const fits = (b: number) => {
    const rss = probe(b);
    probes.push([b, rss]);
    log?.(`  batch ${b}: peak RSS ${rss.toFixed(0)} MiB ${rss <= capMiB ? 'fits' : 'over'}`);
    return rss <= capMiB;
  };
  let lo = 0;
  let hi = start;
  while (fits(hi)) {
    lo = hi;
    hi *= 2;
  }
  // (when even `start` is over the cap, lo = 0 and hi = start: the bisection below runs under it)
  while (hi - lo > granule) {
    const mid = Math.round((lo + hi) / 2 / granule) * granule || granule;
    if (mid <= lo || mid >= hi) break;
    if (fits(mid)) lo = mid;
    else hi = mid;
  }
  const best = probes.filter(([b]) => b === lo)[0];
  return { batch: lo, rssMiB: best ? best[1] : NaN, probes };
}

