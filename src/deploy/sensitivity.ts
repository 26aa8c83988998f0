/**
 * Per-layer INT8 sensitivity and partial INT8 (YOLOv6's partial quantization, for any deployed model):
 * quantize one conv / linear layer at a time (its weights, its input and its output activation; every
 * other layer float) and measure the top-1 drop, at 8-bit and at narrower (default 6-bit) weights; keep
 * the K most sensitive layers in float (`QuantPolicy.floatLayers`), in the simulation and in the ONNX
 * file alike; and the accuracy / latency curve over K in ONNX Runtime.
 *
 * Ranking: by the INT8 top-1 drop, ties (common on small test sets) by the relative RMS error the layer
 * puts on the logits, then by the narrow-weight drop.
 */
import * as torch from '../torch/index.js';
import type { Tensor } from '../torch/index.js';
import type { Module } from '../nn/index.js';
import type { Batch } from '../data/batches.js';
import { top1 } from '../train/evaluate.js';
import { traceGraph } from './graph.js';
import { quantizeModel, type ActivationObserver, type ObserverKind, type QuantPolicy, type QuantizedNet } from './quant.js';
import { OnnxRunner, exportOnnx, type OnnxBackend, type OnnxRuntimeName } from './onnx.js';

export interface LayerSensitivity {
  layer: string;
  kind: 'conv' | 'linear';
  /** Top-1 with only this layer quantized (8-bit weights), and its drop from FP32 (positive: worse). */
  int8Top1: number;
  int8Drop: number;
  /** The same with `lowBits`-bit weights. */
  lowBitsTop1: number;
  lowBitsDrop: number;
  /** ||logits(INT8 this layer) - logits(FP32)|| / ||logits(FP32)|| over the images. */
  logitError: number;
}

export interface SensitivityReport {
  observer: ObserverKind;
  perChannel: boolean;
  lowBits: number;
  images: number;
  fp32Top1: number;
  /** Most sensitive first. */
  layers: LayerSensitivity[];
}

export interface SensitivityOptions {
  observer: ObserverKind;
  percentile?: number;
  perChannel?: boolean;
  /** Narrow weight bits measured beside 8 (default 6). */
  lowBits?: number;
}

/** Top-1 and relative logit error of a network against reference logits, over batches. */
function scoreAgainst(net: Module, batches: Batch[], ref: Tensor[]): { top1: number; logitError: number } {
  let hits = 0;
  let n = 0;
  let err = 0;
  let norm = 0;
  torch.noGrad(() =>
    batches.forEach(({ x, y }, i) =>
      torch.tidy(() => {
        const z = net.forward(x);
        hits += z.argmax(1).eq(y).sum().item();
        n += y.shape[0];
        err += z.sub(ref[i]).square().sum().item();
        norm += ref[i].square().sum().item();
      }),
    ),
  );
  return { top1: n ? hits / n : 0, logitError: Math.sqrt(err / Math.max(norm, 1e-30)) };
}

/** The weighted layers (conv / linear, state-dict prefixes) of a deployed model, in graph order. */
export function weightedLayers(model: Module): { layer: string; kind: 'conv' | 'linear' }[] {
  return traceGraph(model).layers().map((l) => ({ layer: l.layer, kind: l.kind }));
}

/**
 * The top-1 drop when each layer alone is quantized, most sensitive first. `observers` from
 * `calibrate(model, ...)`; `test` the images it is measured on.
 */
export function layerSensitivity(model: Module, observers: Map<string, ActivationObserver>, test: Batch[], o: SensitivityOptions): SensitivityReport {
  const lowBits = o.lowBits ?? 6;
  const perChannel = o.perChannel ?? true;
  const layers = weightedLayers(model);
  const names = layers.map((l) => l.layer);
  const wasTraining = model.training;
  model.eval();
  const ref = torch.noGrad(() => test.map((b) => torch.keep(model.forward(b.x))));
  try {
    const fp32 = top1(model, test);
    const rows: LayerSensitivity[] = layers.map(({ layer, kind }) => {
      const policy = (weightBits: number): QuantPolicy => ({ perChannel, quantizeFirst: true, quantizeLast: true, weightBits, floatLayers: names.filter((n) => n !== layer) });
      const q8 = quantizeModel(model, observers, o.observer, policy(8), { percentile: o.percentile });
      const s8 = scoreAgainst(q8, test, ref);
      const qLow = quantizeModel(model, observers, o.observer, policy(lowBits), { percentile: o.percentile });
      const sLow = scoreAgainst(qLow, test, ref);
      return { layer, kind, int8Top1: s8.top1, int8Drop: fp32 - s8.top1, lowBitsTop1: sLow.top1, lowBitsDrop: fp32 - sLow.top1, logitError: s8.logitError };
    });
    rows.sort((a, b) => b.int8Drop - a.int8Drop || b.logitError - a.logitError || b.lowBitsDrop - a.lowBitsDrop);
    return { observer: o.observer, perChannel, lowBits, images: test.reduce((s, b) => s + b.x.shape[0], 0), fp32Top1: fp32, layers: rows };
  } finally {
    for (const t of ref) t.dispose();
    model.train(wasTraining);
  }
}

/** What to keep in float: the K most sensitive layers, or named ones. */
export type KeepFloat = number | readonly string[];

/** Parses `--keep-float`: a count K, or comma-separated layer names. */
export function parseKeepFloat(text: string): KeepFloat {
  const t = text.trim();
  if (/^\d+$/.test(t)) return Number(t);
  const names = t.split(',').map((s) => s.trim()).filter(Boolean);
  if (!names.length) throw new Error(`keep-float: expected a count K or layer names, got '${text}'`);
  return names;
}

/** The layers a KeepFloat names (K: the first K of the sensitivity ranking, which it then needs). */
export function floatLayersOf(keep: KeepFloat, model: Module, sensitivity?: SensitivityReport): string[] {
  const all = weightedLayers(model).map((l) => l.layer);
  if (typeof keep === 'number') {
    if (!Number.isInteger(keep) || keep < 0 || keep > all.length) throw new RangeError(`keep-float: K must be an integer in [0, ${all.length}] (the model's layers), got ${keep}`);
    if (keep === 0) return [];
    if (!sensitivity) throw new Error('keep-float K needs the per-layer sensitivity ranking');
    return sensitivity.layers.slice(0, keep).map((l) => l.layer);
  }
  for (const k of keep) if (!all.includes(k)) throw new Error(`keep-float: no layer '${k}' (layers: ${all.join(', ')})`);
  return [...keep];
}

export interface PartialInt8Point {
  /** Layers kept in float (the K most sensitive). */
  k: number;
  floatLayers: string[];
  /** Top-1 of the simulation (libtorch) and of ONNX Runtime on the same images; their top-1 agreement. */
  simTop1: number;
  onnxTop1: number;
  agreement: number;
  /** Median ONNX Runtime latency of one image at batch 1, ms. */
  msPerImage: number;
  runtime: OnnxRuntimeName;
}

export interface PartialInt8CurveOptions {
  observer: ObserverKind;
  percentile?: number;
  perChannel?: boolean;
  /** The Ks (default 0..number of layers). */
  ks?: number[];
  /** Images timed one by one (default 32). */
  latencyImages?: number;
  /** Default `auto` (onnxruntime-node when installed). */
  backend?: OnnxBackend;
}

/** Median latency (ms) of batch-1 runs over the first `n` images of the batches (after one warm-up run). */
async function latencyPerImage(runner: OnnxRunner, batches: Batch[], n: number): Promise<number> {
  const times: number[] = [];
  const first = batches[0].x.narrow(0, 0, 1);
  (await runner.run(first)).dispose();
  first.dispose();
  outer: for (const { x } of batches) {
    for (let i = 0; i < x.shape[0]; i++) {
      if (times.length >= n) break outer;
      const xi = torch.keep(x.narrow(0, i, 1).contiguous());
      const t0 = performance.now();
      (await runner.run(xi)).dispose();
      times.push(performance.now() - t0);
      xi.dispose();
    }
  }
  times.sort((a, b) => a - b);
  return times[times.length >> 1];
}

/** One quantized network of the curve: the K most sensitive layers in float. */
export function partialInt8Net(model: Module, observers: Map<string, ActivationObserver>, floatLayers: string[], o: { observer: ObserverKind; percentile?: number; perChannel?: boolean; weightBits?: number }): QuantizedNet {
  return quantizeModel(model, observers, o.observer, { perChannel: o.perChannel ?? true, quantizeFirst: true, quantizeLast: true, weightBits: o.weightBits, floatLayers }, { percentile: o.percentile });
}

/** Simulated and ONNX Runtime top-1, and ONNX Runtime latency, over K = layers kept in float. */
export async function partialInt8Curve(
  model: Module,
  observers: Map<string, ActivationObserver>,
  test: Batch[],
  sensitivity: SensitivityReport,
  o: PartialInt8CurveOptions,
): Promise<PartialInt8Point[]> {
  const ks = o.ks ?? sensitivity.layers.map((_, i) => i).concat(sensitivity.layers.length);
  const out: PartialInt8Point[] = [];
  for (const k of ks) {
    const floatLayers = floatLayersOf(k, model, sensitivity);
    const q = partialInt8Net(model, observers, floatLayers, o);
    const runner = await OnnxRunner.create(exportOnnx(q), { backend: o.backend ?? 'auto' });
    try {
      let hitsSim = 0;
      let hitsOnnx = 0;
      let agree = 0;
      let n = 0;
      for (const { x, y } of test) {
        const theirs = await runner.run(x);
        torch.noGrad(() =>
          torch.tidy(() => {
            const a = theirs.argmax(1);
            const b = q.forward(x).argmax(1);
            hitsOnnx += a.eq(y).sum().item();
            hitsSim += b.eq(y).sum().item();
            agree += a.eq(b).sum().item();
            n += y.shape[0];
          }),
        );
        theirs.dispose();
      }
      const msPerImage = await latencyPerImage(runner, test, o.latencyImages ?? 32);
      out.push({ k, floatLayers, simTop1: hitsSim / n, onnxTop1: hitsOnnx / n, agreement: agree / n, msPerImage, runtime: runner.runtime });
    } finally {
      await runner.release();
    }
  }
  return out;
}
