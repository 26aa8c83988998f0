/**
 * A roofline for one RepOpt-VGG training step (issue 13).
 *
 *   node dist/bench/roofline.js [--blocks 1,2,4,1 --widths .75,.75,.75,2.5 --strides 2,2,2,2,2]
 *        [--image-size 64] [--in-channels 3] [--classes 100] [--batch 32] [--mode target|repvgg|hs]
 *        [--threads N] [--reps 5] [--channels-last] [--peaks-only | --peaks JSON] [--json]
 *
 * 1. The work of one step, per kind (conv forward / backward-data / backward-weight, BatchNorm,
 *    ReLU, the branch adds and scales, pooling + classifier + loss, optimizer with Grad Mults),
 *    counted from the model's layer shapes: FLOPs, and bytes moved = each op's inputs read once and
 *    outputs written once (float32; BatchNorm reads its input twice in forward, statistics then
 *    normalisation, and twice in backward, sums then dx; the optimizer as one fused pass over
 *    grad, weight, momentum and Grad Mult). The stem's input needs no gradient, so it has no
 *    backward-data.
 * 2. This machine's peaks, measured here (the fastest of the reps: the machine is shared): conv3x3 GFLOP/s (the better of contiguous and
 *    channels-last, 32x128x32x32), matmul GFLOP/s (2048^2), memory bandwidth (copy and in-place add
 *    of 64 MiB tensors: DRAM; of 1 MiB tensors: cache).
 * 3. Lower bound of the step = sum over ops of max(FLOPs / peak, bytes / bandwidth), with the conv
 *    peak for convolutions, the matmul peak for everything else, and the cache bandwidth for an
 *    op whose bytes fit in half the last-level cache (16 MiB here), DRAM bandwidth otherwise.
 * 4. Where the time goes on our side: every op kind timed in isolation (forward, and backward
 *    through autograd with only the input or only the weight requiring grad) on the step's
 *    shapes, the fastest of the reps (others' jobs only ever add time); the optimizer step on the real model. The sum against the measured
 *    step gives what the framework adds (autograd engine, allocation, op calls, cold caches).
 */
import os from 'node:os';
import * as torch from '../src/torch/index.js';
import { F, type Tensor } from '../src/torch/index.js';
import { vggBlockLayout, type RepOptVGGMode } from '../src/models/repoptvgg.js';
import { buildVgg, type ModelConfig } from '../src/train/setup.js';
import { benchPeak, median } from '../src/train/bench.js';
import { toChannelsLast_ } from '../src/nn/index.js';
import { benchOptimizer, type BenchMode } from '../src/train/bench.js';

const F32 = 4;
const CACHE_FIT_BYTES = 16 * 2 ** 20;

export const KINDS = [
  'conv fwd', 'conv bwd-data', 'conv bwd-weight', 'BN fwd', 'BN bwd', 'ReLU fwd', 'ReLU bwd',
  'branch add/scale fwd', 'branch add/scale bwd', 'pool+linear+loss', 'optimizer',
] as const;
export type Kind = (typeof KINDS)[number];

export interface Op {
  kind: Kind;
  flops: number;
  bytes: number;
  /** For convolutions (and the classifier): the GEMM-like peak applies. */
  conv?: boolean;
}

export interface StepShape {
  model: ModelConfig;
  mode: BenchMode;
  batch: number;
  imageSize: number;
  /** target mode trains with RepSGD (a Grad Mult per conv kernel). */
  repsgd: boolean;
}

interface ConvShape { n: number; cin: number; cout: number; h: number; ho: number; k: number; stride: number; first: boolean }

/** The convolutions, BN/ReLU activations and branch structure of every block. */
export function stepLayers(s: StepShape): { convs: ConvShape[]; blocks: { cin: number; cout: number; h: number; ho: number; identity: boolean; first: boolean }[]; last: number; lastH: number } {
  const m = s.model;
  const layout = vggBlockLayout({ numBlocks: m.blocks!, widthMultiplier: m.widths! }, { inChannels: m.inChannels, strides: m.strides });
  let h = s.imageSize;
  const convs: ConvShape[] = [];
  const blocks: { cin: number; cout: number; h: number; ho: number; identity: boolean; first: boolean }[] = [];
  layout.forEach((b, i) => {
    const ho = Math.floor((h + 2 - 3) / b.stride) + 1;
    const base = { n: s.batch, cin: b.inChannels, cout: b.outChannels, h, ho, stride: b.stride, first: i === 0 };
    convs.push({ ...base, k: 3 });
    if (s.mode !== 'target') convs.push({ ...base, k: 1 });
    blocks.push({ cin: b.inChannels, cout: b.outChannels, h, ho, identity: b.identity, first: i === 0 });
    h = ho;
  });
  return { convs, blocks, last: layout[layout.length - 1].outChannels, lastH: h };
}

/** Every op of one training step with its FLOPs and bytes (see the file comment). */
export function stepOps(s: StepShape): Op[] {
  const ops: Op[] = [];
  const { convs, blocks, last, lastH } = stepLayers(s);
  const N = s.batch;
  for (const c of convs) {
    const x = N * c.cin * c.h * c.h;
    const y = N * c.cout * c.ho * c.ho;
    const w = c.cout * c.cin * c.k * c.k;
    const flops = 2 * N * c.cout * c.cin * c.k * c.k * c.ho * c.ho;
    ops.push({ kind: 'conv fwd', flops, bytes: F32 * (x + w + y), conv: true });
    if (!c.first) ops.push({ kind: 'conv bwd-data', flops, bytes: F32 * (y + w + x), conv: true });
    ops.push({ kind: 'conv bwd-weight', flops, bytes: F32 * (x + y + w), conv: true });
  }
  for (const b of blocks) {
    const a = N * b.cout * b.ho * b.ho; // one activation of the block's output
    const xin = N * b.cin * b.h * b.h;
    const bns = s.mode === 'repvgg' ? 2 + (b.identity ? 1 : 0) : 1;
    for (let i = 0; i < bns; i++) {
      ops.push({ kind: 'BN fwd', flops: 6 * a, bytes: F32 * 3 * a });
      ops.push({ kind: 'BN bwd', flops: 8 * a, bytes: F32 * 5 * a });
    }
    ops.push({ kind: 'ReLU fwd', flops: a, bytes: F32 * 2 * a });
    ops.push({ kind: 'ReLU bwd', flops: a, bytes: F32 * 3 * a });
    if (s.mode === 'target') continue;
    const branches = 2 + (b.identity ? 1 : 0);
    // the branch sum: (branches - 1) adds forward; backward hands the same gradient to every branch
    ops.push({ kind: 'branch add/scale fwd', flops: (branches - 1) * a, bytes: F32 * 3 * (branches - 1) * a });
    // the input feeds every branch: autograd sums its gradients (the stem's input needs none)
    if (!b.first) ops.push({ kind: 'branch add/scale bwd', flops: (branches - 1) * xin, bytes: F32 * 3 * (branches - 1) * xin });
    if (s.mode === 'hs') {
      // a per-channel scale per branch: y = x * s forward; dx = dy * s and ds = sum(dy * x) backward
      ops.push({ kind: 'branch add/scale fwd', flops: branches * a, bytes: F32 * 2 * branches * a });
      ops.push({ kind: 'branch add/scale bwd', flops: 3 * branches * a, bytes: F32 * 4 * branches * a });
    }
  }
  // global average pool (fwd: read the last activation; bwd: write its gradient), classifier, loss
  const aLast = N * last * lastH * lastH;
  const K = s.model.numClasses;
  ops.push({ kind: 'pool+linear+loss', flops: 2 * aLast, bytes: F32 * 2 * aLast });
  ops.push({ kind: 'pool+linear+loss', flops: 3 * 2 * N * last * K, bytes: F32 * 3 * (N * last + last * K + N * K), conv: true });
  ops.push({ kind: 'pool+linear+loss', flops: 10 * N * K, bytes: F32 * 4 * N * K });
  // optimizer: read grad, weight, momentum (and the Grad Mult of conv kernels), write weight and momentum
  for (const c of convs) {
    const w = c.cout * c.cin * c.k * c.k;
    const mult = s.repsgd && c.k === 3 ? 1 : 0;
    ops.push({ kind: 'optimizer', flops: (5 + mult) * w, bytes: F32 * (5 + mult) * w });
  }
  let small = last * K + K;
  for (const b of blocks) small += b.cout * 2 * (s.mode === 'repvgg' ? 2 + (b.identity ? 1 : 0) : 1) + (s.mode === 'hs' ? b.cout * (2 + (b.identity ? 1 : 0)) : 0);
  ops.push({ kind: 'optimizer', flops: 5 * small, bytes: F32 * 5 * small });
  return ops;
}

export interface Peaks {
  threads: number;
  convGflops: number;
  convContiguousGflops: number;
  convChannelsLastGflops: number;
  matmulGflops: number;
  dramGBs: number;
  cacheGBs: number;
}

/**
 * The clock of every timing here: at 1 intra-op thread the process's CPU time, which does not
 * count the time others' jobs take the core away (the machine is shared); wall time otherwise.
 */
export function now(): number {
  if (torch.getNumThreads() !== 1) return performance.now();
  const c = process.cpuUsage();
  return (c.user + c.system) / 1e3;
}

function timeMs(fn: () => void, reps: number, inner = 1, pick: (xs: number[]) => number = median): number {
  fn();
  const ts: number[] = [];
  for (let i = 0; i < reps; i++) {
    const t0 = now();
    for (let j = 0; j < inner; j++) fn();
    ts.push((now() - t0) / inner);
  }
  return pick(ts);
}

/** A peak is what the machine can do: the fastest of the runs (the machine is shared). */
const fastest = (xs: number[]) => Math.min(...xs);

/** The machine's measured peaks (see the file comment). */
export function measurePeaks(reps = 7): Peaks {
  return torch.noGrad(() =>
    torch.tidy(() => {
      const p = benchPeak(torch.getNumThreads(), reps, 2048, { pick: fastest, clock: now });
      const bw = (elements: number, inner: number) => {
        const src = torch.randn([elements]);
        const dst = torch.randn([elements]);
        const copy = timeMs(() => void dst.copy_(src), reps, inner, fastest);
        const add = timeMs(() => void dst.add_(src), reps, inner, fastest);
        return Math.max((2 * F32 * elements) / (copy * 1e6), (3 * F32 * elements) / (add * 1e6));
      };
      return {
        threads: torch.getNumThreads(),
        convGflops: Math.max(p.conv.contiguous.gflops, p.conv.channelsLast.gflops),
        convContiguousGflops: p.conv.contiguous.gflops,
        convChannelsLastGflops: p.conv.channelsLast.gflops,
        matmulGflops: p.matmul.gflops,
        dramGBs: bw(16 * 2 ** 20, 1),
        cacheGBs: bw(256 * 2 ** 10, 50),
      };
    }),
  );
}

/** Lower bound (ms) of one op on these peaks. */
export function boundMs(op: Op, p: Peaks): number {
  const peak = op.conv ? p.convGflops : p.matmulGflops;
  const bw = op.bytes <= CACHE_FIT_BYTES ? p.cacheGBs : p.dramGBs;
  return Math.max(op.flops / (peak * 1e6), op.bytes / (bw * 1e6));
}

export interface KindRow { kind: Kind; flops: number; bytes: number; boundMs: number; isolatedMs: number | null }

export function roofline(s: StepShape, p: Peaks): { rows: KindRow[]; lowerBoundMs: number } {
  const rows = KINDS.map((kind) => ({ kind, flops: 0, bytes: 0, boundMs: 0, isolatedMs: null as number | null }));
  for (const op of stepOps(s)) {
    const r = rows[KINDS.indexOf(op.kind)];
    r.flops += op.flops;
    r.bytes += op.bytes;
    r.boundMs += boundMs(op, p);
  }
  return { rows, lowerBoundMs: rows.reduce((a, r) => a + r.boundMs, 0) };
}

// ------------------------------------------------------------ isolated op timings (our side)

type Timer = (fwd: () => Tensor, leaves: Tensor[]) => { fwd: number; bwd: number };

/** Forward and backward time of a small graph: forward alone, then backward with a random upstream gradient. */
function graphTimer(reps: number): Timer {
  return (fwd, leaves) => {
    const f = timeMs(() => torch.tidy(() => void fwd()), reps, 1, fastest);
    const bs: number[] = [];
    for (let i = 0; i < reps + 1; i++) {
      torch.tidy(() => {
        const y = fwd();
        // the upstream gradient in the output's layout, as the real backward hands it over
        const g = y.isContiguous('channelsLast') && !y.isContiguous() ? torch.randn(y.shape).toChannelsLast() : torch.randn(y.shape);
        const t0 = now();
        y.backward(g);
        const t = now() - t0;
        for (const l of leaves) l.grad = null;
        if (i > 0) bs.push(t);
      });
    }
    return { fwd: f, bwd: fastest(bs) };
  };
}

/** ms per kind, our side, each op kind in isolation on the step's shapes. */
export function isolatedTimes(s: StepShape, reps: number, channelsLast: boolean): Map<Kind, number> {
  const t = new Map<Kind, number>(KINDS.map((k) => [k, 0]));
  const add = (k: Kind, ms: number) => t.set(k, t.get(k)! + ms);
  const time = graphTimer(reps);
  const fmt = (x: Tensor) => (channelsLast ? x.toChannelsLast() : x);
  const { convs, blocks, last, lastH } = stepLayers(s);
  const N = s.batch;
  torch.tidy(() => {
    for (const c of convs) {
      torch.tidy(() => {
        const xd = fmt(torch.randn([N, c.cin, c.h, c.h]));
        const wd = fmt(torch.randn([c.cout, c.cin, c.k, c.k]).mul(0.1));
        const x = xd.detach().requiresGrad_(true);
        const w = wd.detach().requiresGrad_(true);
        const opts = { stride: c.stride, padding: c.k === 3 ? 1 : 0 };
        // forward as in training (weight requires grad, so autograd records the node)
        add('conv fwd', time(() => F.conv2d(xd, w, null, opts), [w]).fwd);
        add('conv bwd-weight', time(() => F.conv2d(xd, w, null, opts), [w]).bwd);
        if (!c.first) add('conv bwd-data', time(() => F.conv2d(x, wd, null, opts), [x]).bwd);
      });
    }
    for (const b of blocks) {
      torch.tidy(() => {
        const shape = [N, b.cout, b.ho, b.ho];
        const x = fmt(torch.randn(shape)).requiresGrad_(true);
        const gamma = torch.ones([b.cout]).requiresGrad_(true);
        const beta = torch.zeros([b.cout]).requiresGrad_(true);
        const rm = torch.zeros([b.cout]);
        const rv = torch.ones([b.cout]);
        const bns = s.mode === 'repvgg' ? 2 + (b.identity ? 1 : 0) : 1;
        // target and hs: BN then ReLU, which the models run as one fused op (BatchNorm2d.forwardRelu);
        // its time goes to the BN rows and the ReLU rows stay 0. repvgg: BN per branch, ReLU after the sum.
        const bnOpts = { weight: gamma, bias: beta, training: true, momentum: 0.1, eps: 1e-5 };
        const fusedRelu = s.mode !== 'repvgg' && torch.getFusedKernels();
        const bn = time(() => (fusedRelu ? F.batchNormRelu(x, rm, rv, bnOpts) : F.batchNorm(x, rm, rv, bnOpts)), [x, gamma, beta]);
        add('BN fwd', bns * bn.fwd);
        add('BN bwd', bns * bn.bwd);
        if (!fusedRelu) {
          const relu = time(() => F.relu(x), [x]);
          add('ReLU fwd', relu.fwd);
          add('ReLU bwd', relu.bwd);
        }
        if (s.mode === 'target') return;
        const branches = 2 + (b.identity ? 1 : 0);
        const ys = Array.from({ length: branches }, () => fmt(torch.randn(shape)).requiresGrad_(true));
        const scales = ys.map(() => torch.ones([1, b.cout, 1, 1]).requiresGrad_(true));
        const combine = s.mode === 'hs'
          ? () => ys.map((y, i) => y.mul(scales[i])).reduce((a, c) => a.add(c))
          : () => ys.reduce((a, c) => a.add(c));
        const r = time(combine, [...ys, ...scales]);
        add('branch add/scale fwd', r.fwd);
        add('branch add/scale bwd', r.bwd);
        if (!b.first) {
          // autograd sums the input's gradients from every branch
          const g = fmt(torch.randn([N, b.cin, b.h, b.h]));
          add('branch add/scale bwd', (branches - 1) * timeMs(() => torch.tidy(() => void g.add(g)), reps, 1, fastest));
        }
      });
    }
    torch.tidy(() => {
      const x = fmt(torch.randn([N, last, lastH, lastH])).requiresGrad_(true);
      const w = torch.randn([s.model.numClasses, last]).mul(0.1).requiresGrad_(true);
      const bias = torch.zeros([s.model.numClasses]).requiresGrad_(true);
      const y = torch.randint(0, s.model.numClasses, [N]);
      const r = graphTimer(reps)(() => F.crossEntropy(F.linear(F.adaptiveAvgPool2d(x, 1).flatten(1), w, bias), y).mul(1), [x, w, bias]);
      add('pool+linear+loss', r.fwd + r.bwd);
    });
  });
  // the optimizer on the real model, after one real backward
  torch.manualSeed(0);
  const model = buildVgg(s.model, s.mode as RepOptVGGMode);
  if (channelsLast) toChannelsLast_(model);
  const opt = benchOptimizer(model, s.mode === 'target' && s.repsgd ? 'repsgd' : 'sgd');
  try {
    torch.tidy(() => {
      const x = fmt(torch.randn([N, s.model.inChannels, s.imageSize, s.imageSize]));
      F.crossEntropy(model.forward(x), torch.randint(0, s.model.numClasses, [N])).backward();
    });
    add('optimizer', timeMs(() => opt.step(), reps, 1, fastest));
  } finally {
    model.zeroGrad();
    model.dispose();
    opt.dispose();
  }
  return t;
}

// ------------------------------------------------------------ command line

function parseArgs(argv: string[]): Record<string, string | true> {
  const out: Record<string, string | true> = {};
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (!a.startsWith('--')) throw new Error(`unexpected argument '${a}'`);
    const next = argv[i + 1];
    if (next === undefined || next.startsWith('--')) out[a.slice(2)] = true;
    else out[a.slice(2)] = argv[++i];
  }
  return out;
}

const isMain = process.argv[1]?.endsWith('roofline.js');
if (isMain) {
  const a = parseArgs(process.argv.slice(2));
  const list = (k: string, d: number[]) => (typeof a[k] === 'string' ? (a[k] as string).split(',').map(Number) : d);
  const num = (k: string, d: number) => (typeof a[k] === 'string' ? Number(a[k]) : d);
  torch.setNumThreads(num('threads', os.availableParallelism()));
  const mode = (typeof a.mode === 'string' ? a.mode : 'target') as BenchMode;
  const s: StepShape = {
    model: {
      blocks: list('blocks', [1, 2, 4, 1]), widths: list('widths', [0.75, 0.75, 0.75, 2.5]), strides: list('strides', [2, 2, 2, 2, 2]),
      inChannels: num('in-channels', 3), numClasses: num('classes', 100),
    },
    mode,
    batch: num('batch', 32),
    imageSize: num('image-size', 64),
    repsgd: mode === 'target' && a.optimizer !== 'sgd',
  };
  const reps = num('reps', 5);
  // --peaks JSON: use given peaks (the suite's best over several measurements) instead of measuring
  const peaks = typeof a.peaks === 'string' ? (JSON.parse(a.peaks) as Peaks) : measurePeaks(reps);
  if (a['peaks-only']) {
    console.log(JSON.stringify({ peaks, loadavg: os.loadavg() }));
  } else {
    const { rows, lowerBoundMs } = roofline(s, peaks);
    const iso = isolatedTimes(s, reps, a['channels-last'] === true);
    for (const r of rows) r.isolatedMs = iso.get(r.kind)!;
    const isolatedTotalMs = rows.reduce((x, r) => x + (r.isolatedMs ?? 0), 0);
    const res = { shape: s, peaks, rows, lowerBoundMs, isolatedTotalMs, channelsLast: a['channels-last'] === true, loadavg: os.loadavg() };
    if (a.json) console.log(JSON.stringify(res));
    else {
      console.log(`peaks (${peaks.threads} threads): conv ${peaks.convGflops.toFixed(1)} GFLOP/s, matmul ${peaks.matmulGflops.toFixed(1)} GFLOP/s, ` +
        `DRAM ${peaks.dramGBs.toFixed(1)} GB/s, cache ${peaks.cacheGBs.toFixed(1)} GB/s`);
      console.log('| kind | GFLOP | MB moved | lower bound ms | isolated ms |');
      console.log('|---|---:|---:|---:|---:|');
      for (const r of rows) console.log(`| ${r.kind} | ${(r.flops / 1e9).toFixed(3)} | ${(r.bytes / 1e6).toFixed(1)} | ${r.boundMs.toFixed(2)} | ${r.isolatedMs!.toFixed(2)} |`);
      console.log(`| total | | | ${lowerBoundMs.toFixed(2)} | ${isolatedTotalMs.toFixed(2)} |`);
    }
  }
}
