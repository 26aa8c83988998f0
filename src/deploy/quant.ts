/**
 * Post-training INT8 quantization of a deployed RepOpt-VGG, simulated in libtorch with fake-quant ops,
 * and quantization-aware fine-tuning (QAT) through the same ops (straight-through estimator).
 *
 * Scheme (what the ONNX QDQ export in onnx.ts writes, and what ONNX Runtime's int8 kernels compute):
 * - Weights: int8, symmetric (zero point 0), scale = max|w| / 127 per output channel (default) or per
 *   tensor; q = clamp(round_half_even(w / scale), -128, 127), every |q| <= 127. `weightBits` < 8 uses the
 *   grid [-2^(b-1), 2^(b-1) - 1] (still stored as int8): a probe of how weight outliers cost precision.
 * - Activations: uint8, affine, one scale and zero point per tensor, from a calibrated range [lo, hi]
 *   widened to contain 0 (so 0, and hence ReLU and zero padding, is exact): scale = (hi - lo) / 255,
 *   zero point = round(-lo / scale).
 * - Where: the input of every quantized layer. Block outputs (after ReLU) are always quantized (they feed
 *   int8 convs); the network input and the stem's weights only when the first layer is quantized; the
 *   pooled features and the classifier's weights only when the last layer is. Biases stay float32 (ONNX
 *   Runtime folds them into its int32 accumulators). Logits are float32.
 * Calibration sites are named `input`, the block names (`stage0`, `stage1.0`, ...) and `pool`.
 *
 * Range observers on calibration data (two passes: min-max, then a histogram over that range):
 * - `minmax`:     the observed [min, max].
 * - `percentile`: the p-th / (100 - p)-th percentiles (default p = 99.99), read off the histogram.
 * - `mse`:        the clip range (the min-max range scaled by a factor in (0, 1]) minimising the expected
 *                 squared quantization error (rounding plus clipping) over the histogram; exact zeros are
 *                 counted apart (they quantize without error whatever the range).
 */
import { OptionError } from '../errors.js';
import * as torch from '../torch/index.js';
import { F, defOp, type Tensor } from '../torch/index.js';
import { Module } from '../nn/index.js';
import { SGD } from '../optim/index.js';
import { lrAt } from '../train/schedule.js';
import type { BatchSource } from '../train/evaluate.js';
import { InterruptedError, catchStopSignals, turnEventLoop } from '../train/interrupt.js';
import { wrapHandle } from '../torch/tensor.js';
import { traceGraph, type GraphValue, type InferenceGraph } from './graph.js';

const fqPerTensor = defOp('aten::fake_quantize_per_tensor_affine');
const fqPerChannel = defOp('aten::fake_quantize_per_channel_affine');
const histc = defOp('aten::histc');
const roundOp = defOp('aten::round');

/** Smallest scale used (float32 epsilon, as PyTorch's observers): a constant-zero tensor still gets a valid scale. */
export const MIN_SCALE = 1.1920928955078125e-7;
export const ACT_QMIN = 0;
export const ACT_QMAX = 255;

export interface QParams {
  /** float32-representable (ONNX stores it as float). */
  scale: number;
  zeroPoint: number;
  qmin: number;
  qmax: number;
}

/** Rounds half to even (ONNX QuantizeLinear and PyTorch's fake-quant both do). */
export function roundHalfEven(x: number): number {
  const r = Math.round(x);
  return Math.abs(x % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/** Affine parameters for the range [lo, hi] (widened to contain 0) on the integer grid [qmin, qmax]. */
export function affineQParams(lo: number, hi: number, qmin = ACT_QMIN, qmax = ACT_QMAX): QParams {
  if (!Number.isFinite(lo) || !Number.isFinite(hi) || lo > hi) throw new Error(`quantization range [${lo}, ${hi}] is not a finite interval`);
  const a = Math.min(lo, 0);
  const b = Math.max(hi, 0);
  const scale = Math.fround(Math.max((b - a) / (qmax - qmin), MIN_SCALE));
  const zeroPoint = Math.min(qmax, Math.max(qmin, roundHalfEven(qmin - a / scale)));
  return { scale, zeroPoint, qmin, qmax };
}

/** Symmetric scale for values in [-amax, amax] on [-qmax, qmax] (zero point 0). */
export function symmetricScale(amax: number, qmax = 127): number {
  return Math.fround(Math.max(Math.abs(amax) / qmax, MIN_SCALE));
}

/** q = clamp(round(x / scale) + zero point, qmin, qmax) for one number. */
export function quantizeValue(x: number, p: QParams): number {
  return Math.min(p.qmax, Math.max(p.qmin, roundHalfEven(x / p.scale) + p.zeroPoint));
}

export function dequantizeValue(q: number, p: QParams): number {
  return (q - p.zeroPoint) * p.scale;
}

/** Fake quantization of a tensor with per-tensor parameters (gradient: straight through inside the range). */
export function fakeQuant(x: Tensor, p: QParams): Tensor {
  return wrapHandle(fqPerTensor(x.handle, p.scale, p.zeroPoint, p.qmin, p.qmax));
}

/** Per-output-channel (dim 0) max |w|, as float64 numbers. */
export function channelAbsMax(w: Tensor): number[] {
  return torch.tidy(() => w.detach().abs().flatten(1).amax([1]).toArray());
}

/** The integer grid of `bits`-bit signed weights: [-2^(bits-1), 2^(bits-1) - 1] (int8: [-128, 127]). */
export function weightGrid(bits = 8): { qmin: number; qmax: number } {
  if (!Number.isInteger(bits) || bits < 2 || bits > 8) throw new RangeError(`weight bits must be an integer in [2, 8], got ${bits}`);
  return { qmin: -(2 ** (bits - 1)), qmax: 2 ** (bits - 1) - 1 };
}

/**
 * Symmetric weight scales (max |w| / (2^(bits-1) - 1)): one per output channel, or the tensor's one
 * repeated. Fewer than 8 bits still store int8 codes, in a narrower range.
 */
export function weightScales(w: Tensor, perChannel: boolean, bits = 8): Float32Array {
  const { qmax } = weightGrid(bits);
  const amax = channelAbsMax(w);
  if (!perChannel) {
    const s = symmetricScale(Math.max(...amax), qmax);
    return new Float32Array(amax.length).fill(s);
  }
  return Float32Array.from(amax, (a) => symmetricScale(a, qmax));
}

/** Fake-quantized weights with the given per-output-channel scales (zero point 0, signed `bits`-bit grid). */
export function fakeQuantWeight(w: Tensor, scales: Float32Array, bits = 8): Tensor {
  const { qmin, qmax } = weightGrid(bits);
  return torch.tidy(() => {
    const s = torch.fromTypedArray(scales, [scales.length]).to(w.dtype === 'float64' ? 'float64' : 'float32');
    const z = torch.zeros([scales.length], { dtype: 'int32' });
    return wrapHandle(fqPerChannel(w.handle, s.handle, z.handle, 0, qmin, qmax));
  });
}

/** The int8 codes of a weight tensor (row-major) for its scales; dequantized they equal fakeQuantWeight. */
export function quantizeWeightInt8(w: Tensor, scales: Float32Array, bits = 8): Int8Array {
  const { qmin, qmax } = weightGrid(bits);
  return torch.noGrad(() =>
    torch.tidy(() => {
      const fq = fakeQuantWeight(w.detach().float(), scales, bits);
      const s = torch.fromTypedArray(scales, [scales.length]).view([-1, ...Array(w.ndim - 1).fill(1)]);
      const q = wrapHandle(roundOp(fq.div(s).handle)).clamp(qmin, qmax);
      return Int8Array.from(q.toArray());
    }),
  );
}

// ------------------------------------------------------------------ observers

export type ObserverKind = 'minmax' | 'percentile' | 'mse';
export const OBSERVERS: readonly ObserverKind[] = ['minmax', 'percentile', 'mse'];

export interface Histogram {
  lo: number;
  hi: number;
  /** Counts per bin over [lo, hi] (equal widths), exact zeros excluded. */
  counts: Float64Array;
  /** Number of values exactly 0. */
  zeros: number;
}

/** A histogram of plain numbers (for tests and small data), same conventions as the tensor observer. */
export function histogramOf(values: ArrayLike<number>, bins = 2048, lo?: number, hi?: number): Histogram {
  let a = lo ?? Infinity;
  let b = hi ?? -Infinity;
  if (lo === undefined || hi === undefined) for (let i = 0; i < values.length; i++) { a = Math.min(a, values[i]); b = Math.max(b, values[i]); }
  const counts = new Float64Array(bins);
  let zeros = 0;
  const w = (b - a) / bins;
  for (let i = 0; i < values.length; i++) {
    const v = values[i];
    if (v === 0) { zeros++; continue; }
    if (v < a || v > b) continue;
    counts[w > 0 ? Math.min(bins - 1, Math.floor((v - a) / w)) : 0]++;
  }
  return { lo: a, hi: b, counts, zeros };
}

function total(h: Histogram): number {
  let n = h.zeros;
  for (const c of h.counts) n += c;
  return n;
}

/** The value below which a fraction `q` of the histogram's mass lies (uniform inside a bin; zeros at 0). */
export function histogramQuantile(h: Histogram, q: number): number {
  const n = total(h);
  if (n === 0) return 0;
  const bins = h.counts.length;
  const w = (h.hi - h.lo) / bins;
  const zb = h.zeros ? (w > 0 ? Math.min(bins - 1, Math.max(0, Math.floor((0 - h.lo) / w))) : 0) : -1;
  const segs: [number, number, number][] = []; // [from, to, mass] in increasing order of value
  for (let i = 0; i < bins; i++) {
    const a = h.lo + i * w;
    const c = h.counts[i];
    if (i === zb) {
      const frac = w > 0 ? Math.min(1, Math.max(0, (0 - a) / w)) : 0;
      segs.push([a, Math.min(0, a + w), c * frac], [0, 0, h.zeros], [Math.max(0, a), a + w, c * (1 - frac)]);
    } else segs.push([a, a + w, c]);
  }
  const target = q * n;
  let acc = 0;
  for (const [a, b, m] of segs) {
    if (m > 0 && acc + m >= target) return a + ((target - acc) / m) * (b - a);
    acc += m;
  }
  return h.hi;
}

/** [lo, hi] at the percentiles 100 - p and p. */
export function percentileRange(h: Histogram, p = 99.99): [number, number] {
  if (!(p > 50 && p <= 100)) throw new RangeError(`percentile must be in (50, 100], got ${p}`);
  const lo = histogramQuantile(h, 1 - p / 100);
  const hi = histogramQuantile(h, p / 100);
  return [Math.min(lo, 0), Math.max(hi, 0)];
}

/**
 * Expected squared error of quantizing the histogram's values with `p` (each bin sampled at `sub`
 * evenly spaced points; zeros exact).
 */
export function histogramQuantError(h: Histogram, p: QParams, sub = 8): number {
  const n = h.counts.length;
  const w = (h.hi - h.lo) / n;
  const lo = dequantizeValue(p.qmin, p);
  const hi = dequantizeValue(p.qmax, p);
  let err = 0;
  for (let i = 0; i < n; i++) {
    const c = h.counts[i];
    if (!c) continue;
    let e = 0;
    for (let k = 0; k < sub; k++) {
      const v = h.lo + (i + (k + 0.5) / sub) * w;
      const d = v < lo ? v - lo : v > hi ? v - hi : v - dequantizeValue(roundHalfEven(v / p.scale) + p.zeroPoint, p);
      e += d * d;
    }
    err += (c * e) / sub;
  }
  return err;
}

/** The clip range, the min-max range times a factor in (0, 1], with the least expected squared error. */
export function mseRange(h: Histogram, opts: { steps?: number; qmin?: number; qmax?: number } = {}): [number, number] {
  const steps = opts.steps ?? 100;
  const lo0 = Math.min(h.lo, 0);
  const hi0 = Math.max(h.hi, 0);
  if (hi0 - lo0 <= 0) return [lo0, hi0];
  let best: [number, number] = [lo0, hi0];
  let bestErr = Infinity;
  for (let k = steps; k >= 1; k--) {
    const f = k / steps;
    const p = affineQParams(lo0 * f, hi0 * f, opts.qmin ?? ACT_QMIN, opts.qmax ?? ACT_QMAX);
    const e = histogramQuantError(h, p);
    if (e < bestErr) {
      bestErr = e;
      best = [lo0 * f, hi0 * f];
    }
  }
  return best;
}

/** Range statistics of one activation site, gathered from tensors in two passes. */
export class ActivationObserver {
  min = Infinity;
  max = -Infinity;
  count = 0;
  hist: Histogram | null = null;
  constructor(readonly bins = 2048) {}

  /** Pass 1: the running min and max. */
  observeRange(x: Tensor): void {
    torch.tidy(() => {
      this.min = Math.min(this.min, x.min().item());
      this.max = Math.max(this.max, x.max().item());
      this.count += x.numel;
    });
  }

  /** Pass 2: a histogram over [min, max] (exact zeros counted apart). */
  observeHistogram(x: Tensor): void {
    if (!Number.isFinite(this.min)) throw new Error('observeHistogram before observeRange');
    if (!this.hist) this.hist = { lo: this.min, hi: this.max, counts: new Float64Array(this.bins), zeros: 0 };
    const h = this.hist;
    torch.tidy(() => {
      const xf = x.detach().float();
      const zeros = xf.eq(0).sum().item();
      const counts = wrapHandle(histc(xf.handle, this.bins, h.lo, h.hi === h.lo ? h.lo + 1 : h.hi)).toArray();
      h.zeros += zeros;
      const zeroBin = h.hi > h.lo ? Math.min(this.bins - 1, Math.floor(((0 - h.lo) / (h.hi - h.lo)) * this.bins)) : 0;
      for (let i = 0; i < counts.length; i++) h.counts[i] += counts[i];
      if (zeros && 0 >= h.lo && 0 <= h.hi) h.counts[zeroBin] = Math.max(0, h.counts[zeroBin] - zeros);
    });
  }

  /** The range chosen by an observer kind. */
  range(kind: ObserverKind, opts: { percentile?: number } = {}): [number, number] {
    if (!Number.isFinite(this.min)) throw new Error('no calibration data observed');
    if (kind === 'minmax') return [Math.min(this.min, 0), Math.max(this.max, 0)];
    if (!this.hist) throw new Error(`the ${kind} observer needs the histogram pass`);
    if (kind === 'percentile') return percentileRange(this.hist, opts.percentile);
    return mseRange(this.hist);
  }

  qparams(kind: ObserverKind, opts: { percentile?: number } = {}): QParams {
    const [lo, hi] = this.range(kind, opts);
    return affineQParams(lo, hi);
  }
}

// ------------------------------------------------------------------ the quantized network

export interface QuantPolicy {
  /** Per-output-channel weight scales (default) or one per tensor. */
  perChannel: boolean;
  /** Quantize the stem (its weights and the network input); false keeps the first conv in float32. */
  quantizeFirst: boolean;
  /** Quantize the classifier (its weights and the pooled features); false keeps it in float32. */
  quantizeLast: boolean;
  /** Weight bits (default 8; fewer is stored as int8 codes in a narrower range, to probe outlier sensitivity). */
  weightBits?: number;
  /**
   * Layers kept in float (partial INT8, e.g. the most sensitive ones: see sensitivity.ts): their weights
   * and their inputs are not quantized (an input another quantized layer also reads still is).
   */
  floatLayers?: readonly string[];
}

export const DEFAULT_POLICY: QuantPolicy = { perChannel: true, quantizeFirst: true, quantizeLast: true };

/**
 * The activation values quantized under a policy, in graph order: the input of every quantized layer and
 * the output of every quantized layer (after its ReLU when a ReLU is its only reader), never the graph's
 * output (logits stay float). With `quantizeFirst` off the layers reading the network input stay float;
 * with `quantizeLast` off the layers producing the output.
 */
export function activationSites(model: Module, policy: QuantPolicy): string[] {
  const g = traceGraph(model);
  const layers = new Set(quantizedLayers(model, policy));
  const keep = new Set(policy.floatLayers ?? []);
  const sites = new Set<GraphValue>();
  const inputs = new Set<GraphValue>();
  const floatInputs = new Set<GraphValue>();
  for (const n of g.nodes) {
    if (n.op.kind !== 'conv' && n.op.kind !== 'linear') continue;
    if (!layers.has(n.op.layer)) {
      if (keep.has(n.op.layer)) floatInputs.add(n.inputs[0]);
      continue;
    }
    sites.add(n.inputs[0]);
    inputs.add(n.inputs[0]);
    const readers = g.consumers(n.output);
    sites.add(readers.length === 1 && readers[0].op.kind === 'relu' ? readers[0].output : n.output);
  }
  // A kept layer reads float: no QDQ before it, unless a quantized layer needs that value quantized too.
  for (const v of floatInputs) if (!inputs.has(v)) sites.delete(v);
  sites.delete(g.output);
  return [g.input, ...g.nodes.map((n) => n.output)].filter((v) => sites.has(v));
}

/** The conv / linear layers (state-dict prefixes, e.g. `stage0.conv`, `linear`) whose weights are quantized under a policy. */
export function quantizedLayers(model: Module, policy: QuantPolicy): string[] {
  const g = traceGraph(model);
  const first = new Set(g.consumers(g.input).map((n) => n.output));
  const last = g.producer(g.output)?.output;
  const keep = new Set(policy.floatLayers ?? []);
  const all = g.layers().map((l) => l.layer);
  for (const k of keep) if (!all.includes(k)) throw new Error(`no layer '${k}' to keep in float (layers: ${all.join(', ')})`);
  return g.nodes
    .filter((n) => n.op.kind === 'conv' || n.op.kind === 'linear')
    .filter((n) => (policy.quantizeFirst || !first.has(n.output)) && (policy.quantizeLast || n.output !== last))
    .map((n) => (n.op as { layer: string }).layer)
    .filter((l) => !keep.has(l));
}

interface Hooks {
  act?: (site: string, t: Tensor) => Tensor;
  weight?: (layer: string, w: Tensor) => Tensor;
}

const allSitesCache = new WeakMap<InferenceGraph, Set<string>>();

/** Every value that can be an activation site (the sites with everything quantized). */
function allSites(model: Module): Set<string> {
  const g = traceGraph(model);
  let s = allSitesCache.get(g);
  if (!s) allSitesCache.set(g, (s = new Set(activationSites(model, { perChannel: true, quantizeFirst: true, quantizeLast: true }))));
  return s;
}

/** The deployed network's forward (its inference graph) with taps on the activation sites and the weights. */
export function forwardWithHooks(model: Module, x: Tensor, hooks: Hooks): Tensor {
  const sites = allSites(model);
  const act = hooks.act;
  return traceGraph(model).run(x, { act: act ? (v, t) => (sites.has(v) ? act(v, t) : t) : undefined, weight: hooks.weight });
}

/**
 * Calibration: runs the float network over the batches twice (min-max, then histograms) and returns one
 * observer per activation site (all sites; the policy decides which are used).
 */
export function calibrate(model: Module, batches: Tensor[], opts: { bins?: number } = {}): Map<string, ActivationObserver> {
  if (!batches.length) throw new Error('calibration needs at least one batch');
  const obs = new Map<string, ActivationObserver>();
  const get = (s: string) => {
    let o = obs.get(s);
    if (!o) obs.set(s, (o = new ActivationObserver(opts.bins)));
    return o;
  };
  const wasTraining = model.training;
  model.eval();
  try {
    for (const pass of ['range', 'histogram'] as const) {
      for (const x of batches) {
        torch.noGrad(() =>
          torch.tidy(() => {
            forwardWithHooks(model, x, {
              act: (s, t) => {
                if (pass === 'range') get(s).observeRange(t);
                else get(s).observeHistogram(t);
                return t;
              },
            });
          }),
        );
      }
    }
  } finally {
    model.train(wasTraining);
  }
  return obs;
}

/** Activation parameters per site from calibration observers. */
export function activationQParams(
  model: Module,
  observers: Map<string, ActivationObserver>,
  kind: ObserverKind,
  policy: QuantPolicy,
  opts: { percentile?: number } = {},
): Map<string, QParams> {
  const out = new Map<string, QParams>();
  for (const s of activationSites(model, policy)) {
    const o = observers.get(s);
    if (!o) throw new Error(`no calibration statistics for activation site '${s}'`);
    out.set(s, o.qparams(kind, opts));
  }
  return out;
}

/**
 * The simulated INT8 network of any deployed model (anything {@link traceGraph} describes): the model's
 * parameters (shared, trainable for QAT) with fake quantization of weights (scales recomputed from the
 * current weights at every forward) and of activations (fixed calibrated parameters). A Module, so
 * `evaluate` and optimizers work on it unchanged.
 */
export class QuantizedNet extends Module {
  readonly model: Module;
  readonly graph: InferenceGraph;
  readonly layers: Set<string>;
  readonly #weights: Map<string, Tensor>;
  constructor(model: Module, readonly act: Map<string, QParams>, readonly policy: QuantPolicy) {
    super();
    this.model = this.registerModule('model', model);
    this.graph = traceGraph(model);
    for (const s of activationSites(model, policy)) if (!act.has(s)) throw new Error(`QuantizedNet: no activation parameters for site '${s}'`);
    this.layers = new Set(quantizedLayers(model, policy));
    this.#weights = new Map(this.graph.layers().map((l) => [l.layer, l.module.weight]));
    weightGrid(this.weightBits);
  }

  get weightBits(): number {
    return this.policy.weightBits ?? 8;
  }

  /** The float weight of a layer (`stage0.conv`, ..., `linear`). */
  layerWeight(layer: string): Tensor {
    const w = this.#weights.get(layer);
    if (!w) throw new Error(`no layer '${layer}'`);
    return w;
  }

  /** The int8 weight scales of a quantized layer for its current weights. */
  scalesOf(layer: string): Float32Array {
    return weightScales(this.layerWeight(layer), this.policy.perChannel, this.weightBits);
  }

  forward(x: Tensor): Tensor {
    return this.graph.run(x, {
      act: (s, t) => {
        const p = this.act.get(s);
        return p ? fakeQuant(t, p) : t;
      },
      weight: (l, w) => (this.layers.has(l) ? fakeQuantWeight(w, weightScales(w, this.policy.perChannel, this.weightBits), this.weightBits) : w),
    });
  }

  /** Detaches the shared deployed model from disposal (dispose() frees only what this module owns). */
  override dispose(): void {
    /* the deployed model belongs to the caller */
  }
}

/** The former name, from when only RepOpt-VGG deployed. */
export { QuantizedNet as QuantizedVGG };

/** Builds the quantized network of a deployed model from calibration batches with one observer kind. */
export function quantizeModel(
  model: Module,
  observers: Map<string, ActivationObserver>,
  kind: ObserverKind,
  policy: QuantPolicy = DEFAULT_POLICY,
  opts: { percentile?: number } = {},
): QuantizedNet {
  return new QuantizedNet(model, activationQParams(model, observers, kind, policy, opts), policy);
}

// ------------------------------------------------------------------ QAT

export interface QatOptions {
  epochs: number;
  lr: number;
  momentum?: number;
  weightDecay?: number;
  /** Stop after this many steps in total (tests). */
  maxSteps?: number;
  log?: (line: string) => void;
}

/** One QAT step (forward through fake quant, cross entropy, backward, SGD step); returns the loss. */
export function qatStep(q: QuantizedNet, opt: SGD, x: Tensor, y: Tensor): number {
  opt.zeroGrad();
  const loss = torch.tidy(() => {
    const l = F.crossEntropy(q.forward(x), y);
    l.backward();
    return l.item();
  });
  opt.step();
  return loss;
}

export function qatOptimizer(q: QuantizedNet, lr: number, momentum = 0.9, weightDecay = 0): SGD {
  const named = q.model.namedParameters().filter(([, p]) => p.requiresGrad);
  return new SGD(named, { lr, momentum, weightDecay });
}

/**
 * Quantization-aware fine-tuning: SGD (momentum 0.9, cosine schedule) on the deployed weights through
 * the fake-quant ops (their gradients are the straight-through estimator: 1 inside the range, 0 outside).
 * Activation ranges stay as calibrated; weight scales follow the weights.
 */
export async function qatFineTune(q: QuantizedNet, loader: BatchSource & { batchesPerEpoch: number }, o: QatOptions): Promise<{ losses: number[] }> {
  const opt = qatOptimizer(q, o.lr, o.momentum ?? 0.9, o.weightDecay ?? 0);
  const total = o.maxSteps ?? o.epochs * loader.batchesPerEpoch;
  const losses: number[] = [];
  q.train();
  let it = 0;
  // QAT writes nothing to disk: a stop signal ends it at the next step with an InterruptedError.
  const stop = catchStopSignals({ notice: 'stopping QAT at the next step' });
  try {
    o.log?.(`qat: ${o.epochs} epoch(s) of ${loader.batchesPerEpoch} steps, ${total} in all; SIGINT/SIGTERM stop it`);
    for (let e = 0; e < o.epochs && it < total; e++) {
      let sum = 0;
      let n = 0;
      for await (const { x, y } of loader.epoch(e)) {
        if (it < total) {
          opt.setLr(lrAt({ kind: 'cosine', baseLr: o.lr, totalIters: total, warmupIters: 0 }, it));
          const l = qatStep(q, opt, x, y);
          if (!Number.isFinite(l)) throw new OptionError('lr', `QAT loss became ${l}; lower the learning rate`);
          losses.push(l);
          sum += l;
          n++;
          it++;
        }
        x.dispose();
        y.dispose();
        await turnEventLoop();
        if (stop.signal) throw new InterruptedError(stop.signal, `QAT interrupted by ${stop.signal} after ${it} step(s); nothing was saved`);
      }
      o.log?.(`qat epoch ${e + 1}/${o.epochs}: loss ${(sum / Math.max(1, n)).toFixed(4)}`);
    }
  } finally {
    stop.close();
    q.eval();
    opt.dispose();
  }
  return { losses };
}

// ------------------------------------------------------------------ weight statistics

export interface LayerWeightStats {
  layer: string;
  shape: number[];
  /** Standard deviation over all parameters of the kernel. */
  std: number;
  /** ... over the centre taps [:, :, 1, 1] (3x3 kernels). */
  centreStd: number | null;
  /** ... over the eight surrounding taps. */
  surroundStd: number | null;
  maxAbs: number;
  /** Relative RMS error ||w - Q(w)|| / ||w|| of int8 weights, per-tensor and per-channel scales. */
  errPerTensor: number;
  errPerChannel: number;
}

function relErr(w: Tensor, perChannel: boolean): number {
  return torch.noGrad(() =>
    torch.tidy(() => {
      const d = fakeQuantWeight(w, weightScales(w, perChannel)).sub(w);
      const n = w.square().sum().item();
      return n > 0 ? Math.sqrt(d.square().sum().item() / n) : 0;
    }),
  );
}

/** The paper's Table 11 statistics (std overall, at the centre tap, at the surrounding taps) per layer. */
export function weightStats(layers: [string, Tensor][]): LayerWeightStats[] {
  return layers.map(([layer, w0]) =>
    torch.noGrad(() =>
      torch.tidy(() => {
        const w = w0.detach().double();
        const is3x3 = w.ndim === 4 && w.shape[2] === 3 && w.shape[3] === 3;
        let centreStd: number | null = null;
        let surroundStd: number | null = null;
        if (is3x3) {
          const flat = w.flatten(2); // [O, I, 9]
          const centre = flat.narrow(2, 4, 1);
          const around = torch.cat([flat.narrow(2, 0, 4), flat.narrow(2, 5, 4)], 2);
          centreStd = centre.std().item();
          surroundStd = around.std().item();
        }
        return {
          layer,
          shape: w.shape,
          std: w.std().item(),
          centreStd,
          surroundStd,
          maxAbs: w.abs().max().item(),
          errPerTensor: relErr(w0.detach().float(), false),
          errPerChannel: relErr(w0.detach().float(), true),
        };
      }),
    ),
  );
}

/** The kernels of a deployed model by layer (state-dict prefix: `stage0.conv`, ..., `linear`), in graph order. */
export function deployedKernels(model: Module): [string, Tensor][] {
  return traceGraph(model).layers().map((l): [string, Tensor] => [l.layer, l.module.weight]);
}
