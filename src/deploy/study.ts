/**
 * Deployment studies of a checkpoint, for any model family: load it as trained model + deploy form
 * (`loadForDeploy`), export it to ONNX (FP32 or INT8 QDQ) checked in ONNX Runtime (`exportCheckpoint`),
 * and measure FP32 vs INT8 accuracy per observer / weight granularity / weight bits, ONNX Runtime
 * agreement and QAT (`quantizeStudy`). The `repopt deploy|export|quantize` commands are thin shells.
 */
import fs from 'node:fs';
import path from 'node:path';
import * as torch from '../torch/index.js';
import type { Tensor } from '../torch/index.js';
import type { Module } from '../nn/index.js';
import { openDataset, type Dataset } from '../data/dataset.js';
import { DataLoader } from '../data/loader.js';
import { defaultTransforms } from '../data/transforms.js';
import { collectBatches, disposeBatches, type Batch } from '../data/batches.js';
import { writeFileAtomic } from '../io/durable.js';
import { checkpointModel, loadCheckpointModel, prepareCheckpointModel, type CheckpointModel, type CheckpointModelOptions, type CheckpointSource } from '../train/checkpoint-model.js';
export { checkpointModel, loadCheckpointModel, prepareCheckpointModel, type CheckpointModel, type CheckpointModelOptions, type CheckpointSource };
import { top1 } from '../train/evaluate.js';
import type { ModelFamily, ModelSpec } from '../models/family.js';
import '../models/families.js';
import { OptionError } from '../errors.js';
import { RepOptVGG, TargetBlock } from '../models/repoptvgg.js';
import {
  QuantizedNet, calibrate, deployedKernels, qatFineTune, quantizeModel, weightStats,
  type LayerWeightStats, type ObserverKind, type QuantPolicy,
} from './quant.js';
import { OnnxRunner, hasOrtNode, exportOnnx, type OnnxBackend, type OnnxRuntimeName } from './onnx.js';
import { floatLayersOf, layerSensitivity, partialInt8Curve, type KeepFloat, type PartialInt8Point, type SensitivityReport } from './sensitivity.js';

export interface LoadedModel {
  family: ModelFamily;
  /** The trained model in eval mode (null when the checkpoint already holds the deploy form). */
  trained: Module | null;
  /** The deploy form, in eval mode. */
  deployed: Module;
  /** The mode the checkpoint was saved in ('deploy' for the deploy form). */
  mode: string;
  /** The model, with input channels and classes from the state dict. */
  config: ModelSpec;
  /** max |trained - deployed| / max |trained| over random inputs (0 for deployed checkpoints). */
  fuseError: number;
}

/**
 * A checkpoint as its trained model and deploy form. The architecture comes from `src.model` or the
 * run's config.json beside the checkpoint; the mode, input channels and classes from the state dict.
 */
export function loadForDeploy(src: CheckpointSource, opts: { imageSize?: number } = {}): LoadedModel {
  const { model, family, mode, config } = loadCheckpointModel(src);
  if (mode === 'deploy') return { family, trained: null, deployed: model, mode, config, fuseError: 0 };
  try {
    const deployed = family.deploy(model);
    const fuseError = fusionError(model, deployed, config.inChannels, opts.imageSize ?? 32);
    return { family, trained: model, deployed, mode, config, fuseError };
  } catch (e) {
    model.dispose();
    throw e;
  }
}

/** max |a(x) - b(x)| / max |a(x)| over a batch of random normal inputs (eval mode). */
export function fusionError(a: Module, b: Module, inChannels: number, size = 32, batch = 4): number {
  return torch.noGrad(() =>
    torch.tidy(() => {
      const x = torch.randn([batch, inChannels, size, size]);
      const ya = a.forward(x);
      const yb = b.forward(x);
      return ya.sub(yb).abs().max().item() / Math.max(1e-12, ya.abs().max().item());
    }),
  );
}


export interface OnnxAgreement {
  images: number;
  /** Fraction of images where ONNX Runtime's top-1 class equals ours. */
  agreement: number;
  /** max |logit difference| / max |our logit|. */
  relMaxDiff: number;
  maxDiff: number;
  onnxTop1: number;
  oursTop1: number;
  runtime: OnnxRuntimeName;
}

/** Runs ONNX bytes in ONNX Runtime (default: onnxruntime-web) over batches and compares with our model's logits. */
export async function onnxAgreement(bytes: Uint8Array, ours: Module, batches: Batch[], opts: { backend?: OnnxBackend } = {}): Promise<OnnxAgreement> {
  const runner = await OnnxRunner.create(bytes, { backend: opts.backend });
  let agree = 0;
  let n = 0;
  let maxDiff = 0;
  let scale = 0;
  let hitsOnnx = 0;
  let hitsOurs = 0;
  const wasTraining = ours.training;
  ours.eval();
  try {
    for (const { x, y } of batches) {
      const theirs = await runner.run(x);
      torch.noGrad(() =>
        torch.tidy(() => {
          const mine = ours.forward(x);
          const pa = theirs.argmax(1);
          const pb = mine.argmax(1);
          agree += pa.eq(pb).sum().item();
          hitsOnnx += pa.eq(y).sum().item();
          hitsOurs += pb.eq(y).sum().item();
          maxDiff = Math.max(maxDiff, theirs.sub(mine).abs().max().item());
          scale = Math.max(scale, mine.abs().max().item());
          n += y.shape[0];
        }),
      );
      theirs.dispose();
    }
  } finally {
    ours.train(wasTraining);
    await runner.release();
  }
  return { images: n, agreement: agree / n, relMaxDiff: maxDiff / Math.max(scale, 1e-12), maxDiff, onnxTop1: hitsOnnx / n, oursTop1: hitsOurs / n, runtime: runner.runtime };
}


export interface ExportOptions extends CheckpointSource {
  /** The ONNX file to write. */
  out: string;
  /** INT8 QDQ calibrated on this data set's training split (FP32 when absent). */
  int8?: {
    calib: string;
    calibImages: number;
    observer: ObserverKind;
    percentile: number;
    policy: QuantPolicy;
    /** Layers kept in float: named, or the K most sensitive on `sensitivityImages` of the calibration data's test split. */
    keepFloat?: KeepFloat;
    sensitivityImages?: number;
  };
  /** Image size of folder calibration images and of the random check images. */
  imageSize?: number;
  /** Run the file in ONNX Runtime and compare with our logits (default true). */
  verify?: boolean;
  /** ONNX Runtime for the check (default `auto`: onnxruntime-node when installed, else onnxruntime-web). */
  backend?: OnnxBackend;
  seed?: number;
}

export interface ExportReport {
  out: string;
  bytes: number;
  mode: string;
  inChannels: number;
  fuseError: number | null;
  /** What was quantized (absent: FP32). */
  int8?: { observer: ObserverKind; calibImages: number; calibData: string; perChannel: boolean; weightBits: number; quantizeFirst: boolean; quantizeLast: boolean; floatLayers: string[]; sensitivity?: SensitivityReport };
  /** The ONNX Runtime check: on calibration images (INT8) or random ones (FP32). */
  check?: OnnxAgreement & { on: 'calibration' | 'random'; ok: boolean };
  /** INT8 with onnxruntime-node installed: its agreement on the same images (information; see exportCheckpoint). */
  nativeCheck?: OnnxAgreement;
}

/**
 * The INT8 network of an export: calibrated on `calibImages` of the calibration set (shuffled with
 * `seed`), with the layers `keepFloat` names (or the K most sensitive, measured on the same data set's
 * test split) in float. The calibration batches are the caller's to dispose.
 */
export async function quantizeForExport(
  deployed: Module,
  calibSet: Dataset,
  int8: NonNullable<ExportOptions['int8']>,
  o: { imageSize?: number; seed: number },
): Promise<{ q: QuantizedNet; calib: Batch[]; info: NonNullable<ExportReport['int8']> }> {
  const calib = await collectBatches(calibSet, int8.calibImages, 128, true, o.seed);
  try {
    const obs = calibrate(deployed, calib.map((b) => b.x));
    let sensitivity: SensitivityReport | undefined;
    const keep = int8.keepFloat ?? [];
    if (typeof keep === 'number' && keep > 0) {
      const test = await collectBatches(openDataset(int8.calib, 'test', { imageSize: o.imageSize }), int8.sensitivityImages ?? 500, 250, false, 0);
      try {
        sensitivity = layerSensitivity(deployed, obs, test, { observer: int8.observer, percentile: int8.percentile, perChannel: int8.policy.perChannel });
      } finally {
        disposeBatches(test);
      }
    }
    const policy: QuantPolicy = { ...int8.policy, floatLayers: floatLayersOf(keep, deployed, sensitivity) };
    const q = quantizeModel(deployed, obs, int8.observer, policy, { percentile: int8.percentile });
    const info = {
      observer: int8.observer, calibImages: calib.reduce((s, b) => s + b.x.shape[0], 0), calibData: calibSet.name,
      perChannel: q.policy.perChannel, weightBits: q.weightBits, quantizeFirst: q.policy.quantizeFirst, quantizeLast: q.policy.quantizeLast,
      floatLayers: [...(policy.floatLayers ?? [])], sensitivity,
    };
    return { q, calib, info };
  } catch (e) {
    disposeBatches(calib);
    throw e;
  }
}

/**
 * Writes a checkpoint's deploy form as ONNX (opset 13), FP32 or INT8 QDQ, then (unless `verify` is false)
 * runs it in ONNX Runtime against our model: FP32 must match to 1e-4 of the logits' scale, INT8 agree
 * on the top-1 class of >= 90% of the images (`check.ok`).
 */
export async function exportCheckpoint(o: ExportOptions): Promise<ExportReport> {
  const seed = o.seed ?? 0;
  torch.manualSeed(seed);
  const calibSet = o.int8 ? openDataset(o.int8.calib, 'train', { imageSize: o.imageSize }) : null;
  await prepareCheckpointModel(o);
  const m = loadForDeploy(o, { imageSize: calibSet?.height });
  let calib: Batch[] = [];
  try {
    const cin = m.config.inChannels;
    if (calibSet && calibSet.channels !== cin) throw new OptionError('calib', `${o.int8!.calib}: ${calibSet.channels}-channel images, the model takes ${cin}`);
    const deployed = m.deployed;
    let net: Module = deployed;
    let int8: ExportReport['int8'];
    if (o.int8 && calibSet) {
      const r = await quantizeForExport(deployed, calibSet, o.int8, { imageSize: o.imageSize, seed });
      calib = r.calib;
      net = r.q;
      int8 = r.info;
    }
    const bytes = exportOnnx(net);
    fs.mkdirSync(path.dirname(path.resolve(o.out)), { recursive: true });
    writeFileAtomic(o.out, bytes, 'ONNX model'); // whole or not at all, the temporary file removed on failure
    const report: ExportReport = { out: o.out, bytes: bytes.length, mode: m.mode, inChannels: cin, fuseError: m.trained ? m.fuseError : null, int8 };
    if (o.verify ?? true) {
      const size = calibSet?.height ?? o.imageSize ?? 32;
      const batches = calib.length ? calib.slice(0, 2) : [{ x: torch.keep(torch.randn([8, cin, size, size])), y: torch.keep(torch.zeros([8], { dtype: 'int64' })) }];
      try {
        // INT8 is checked on onnxruntime-web: QDQ's reference arithmetic. onnxruntime-node's int8 kernels on
        // CPUs without AVX-512 VNNI multiply u8 x s8 pairs into int16 (pmaddubsw), which saturates with full
        // 8-bit weights (measured: 82.8% top-1 agreement on the README network, 100% with 7-bit weights,
        // ORT's reduce_range); when installed it is run as well and reported beside.
        const a = await onnxAgreement(bytes, net, batches, { backend: o.backend ?? (int8 ? 'web' : 'auto') });
        report.check = { ...a, on: calib.length ? 'calibration' : 'random', ok: int8 ? a.agreement >= 0.9 : a.relMaxDiff <= 1e-4 };
        if (int8 && o.backend === undefined && (await hasOrtNode())) {
          report.nativeCheck = await onnxAgreement(bytes, net, batches, { backend: 'node' });
        }
      } finally {
        if (!calib.length) disposeBatches(batches);
      }
    }
    return report;
  } finally {
    disposeBatches(calib);
    m.trained?.dispose();
    m.deployed.dispose();
  }
}

export interface QuantRow {
  observer: ObserverKind;
  perChannel: boolean;
  weightBits: number;
  top1: number;
}

export interface QuantReport {
  checkpoint: string;
  mode: string;
  fuseError: number;
  calibImages: number;
  testImages: number;
  fp32Trained: number | null;
  fp32Deployed: number;
  rows: QuantRow[];
  qat?: { observer: ObserverKind; perChannel: boolean; weightBits: number; epochs: number; before: number; after: number };
  onnx?: OnnxAgreement & { observer: ObserverKind; perChannel: boolean; weightBits: number };
  weights: LayerWeightStats[];
  /** Layers kept in float in every row (partial INT8). */
  floatLayers?: string[];
  /** Per-layer sensitivity, and the partial-INT8 curve over K in ONNX Runtime. */
  sensitivity?: SensitivityReport & { curve?: PartialInt8Point[] };
}

export interface QuantizeOptions {
  checkpoint: string;
  /** The model when no config.json is beside the checkpoint (see {@link loadForDeploy}). */
  model?: CheckpointModel;
  data: string;
  calibImages: number;
  /** Test images (all when undefined). */
  testImages?: number;
  observers: ObserverKind[];
  percentile: number;
  granularities: boolean[]; // perChannel values to try
  quantizeFirst: boolean;
  quantizeLast: boolean;
  /** Weight bit widths to try (default [8]; fewer bits probe outlier sensitivity). */
  weightBits?: number[];
  /** Observers for bit widths below 8 (default: `observers`). */
  lowBitObservers?: ObserverKind[];
  qatEpochs: number;
  qatLr: number;
  qatObserver?: ObserverKind;
  /** Weight bits QAT fine-tunes for (default: the smallest of `weightBits`). */
  qatBits?: number;
  onnxImages: number;
  batchSize: number;
  seed: number;
  /** Per-layer sensitivity (first observer, first granularity), with the partial-INT8 curve in ONNX Runtime when `curve`. */
  sensitivity?: { curve: boolean; lowBits?: number };
  /** Layers kept in float in every configuration: named, or the K most sensitive (measures sensitivity). */
  keepFloat?: KeepFloat;
  log?: (line: string) => void;
}

/** The whole quantization study of one checkpoint. */
export async function quantizeStudy(o: QuantizeOptions): Promise<QuantReport> {
  const log = o.log ?? (() => {});
  torch.manualSeed(o.seed);
  const trainSet = openDataset(o.data, 'train');
  const testSet = openDataset(o.data, 'test');
  await prepareCheckpointModel({ checkpoint: o.checkpoint, model: o.model });
  const m = loadForDeploy({ checkpoint: o.checkpoint, model: o.model }, { imageSize: testSet.height });
  if (testSet.channels !== m.config.inChannels) {
    m.trained?.dispose();
    m.deployed.dispose();
    throw new Error(`${o.data}: ${testSet.channels}-channel images, the model takes ${m.config.inChannels}`);
  }
  const deployed = m.deployed;
  const calib = await collectBatches(trainSet, o.calibImages, 128, true, o.seed);
  const test = await collectBatches(testSet, o.testImages ?? testSet.length, o.batchSize, false, 0);
  try {
    const testImages = test.reduce((s, b) => s + b.x.shape[0], 0);
    const fp32Trained = m.trained ? top1(m.trained, test) : null;
    const fp32Deployed = top1(deployed, test);
    const obs = calibrate(deployed, calib.map((b) => b.x));
    const keep = o.keepFloat ?? [];
    let sensitivity: QuantReport['sensitivity'];
    if (o.sensitivity || (typeof keep === 'number' && keep > 0)) {
      const sens = layerSensitivity(deployed, obs, test, { observer: o.observers[0], percentile: o.percentile, perChannel: o.granularities[0], lowBits: o.sensitivity?.lowBits });
      sensitivity = sens;
      log(`  per-layer sensitivity (${sens.observer}, one layer quantized at a time, most sensitive first; FP32 ${pct(sens.fp32Top1)}):`);
      for (const l of sens.layers) log(`    ${l.layer.padEnd(24)} INT8 drop ${(l.int8Drop * 100).toFixed(2).padStart(6)}%  W${sens.lowBits} drop ${(l.lowBitsDrop * 100).toFixed(2).padStart(6)}%  logit error ${(l.logitError * 100).toFixed(2)}%`);
      if (o.sensitivity?.curve) {
        const curve = await partialInt8Curve(deployed, obs, test.slice(0, Math.max(1, Math.ceil(Math.min(o.onnxImages || 256, testImages) / o.batchSize))), sens, { observer: sens.observer, percentile: o.percentile, perChannel: sens.perChannel });
        sensitivity = { ...sens, curve };
        for (const p of curve) log(`    keep ${String(p.k).padStart(2)} float: simulated ${pct(p.simTop1)}, ${p.runtime} ${pct(p.onnxTop1)} (agreement ${pct(p.agreement)}), ${p.msPerImage.toFixed(3)} ms/image`);
      }
    }
    const floatLayers = floatLayersOf(keep, deployed, sensitivity);
    const rows: QuantRow[] = [];
    const nets = new Map<string, QuantizedNet>();
    const bitsList = o.weightBits ?? [8];
    const key = (observer: ObserverKind, perChannel: boolean, bits: number) => `${observer}/${perChannel}/${bits}`;
    const make = (observer: ObserverKind, perChannel: boolean, weightBits: number) =>
      quantizeModel(deployed, obs, observer, { perChannel, quantizeFirst: o.quantizeFirst, quantizeLast: o.quantizeLast, weightBits, floatLayers }, { percentile: o.percentile });
    for (const bits of bitsList) {
      for (const perChannel of o.granularities) {
        for (const observer of bits < 8 ? (o.lowBitObservers ?? o.observers) : o.observers) {
          const q = make(observer, perChannel, bits);
          nets.set(key(observer, perChannel, bits), q);
          const r = top1(q, test);
          rows.push({ observer, perChannel, weightBits: bits, top1: r });
          log(`  ${int8Label(bits)} ${observer.padEnd(10)} ${perChannel ? 'per-channel' : 'per-tensor '} weights: top-1 ${pct(r)}`);
        }
      }
    }
    const report: QuantReport = {
      checkpoint: o.checkpoint, mode: m.mode, fuseError: m.fuseError, calibImages: calib.reduce((s, b) => s + b.x.shape[0], 0), testImages,
      fp32Trained, fp32Deployed, rows, weights: weightStats(deployedKernels(deployed)),
    };
    if (floatLayers.length) report.floatLayers = floatLayers;
    if (sensitivity) report.sensitivity = sensitivity;
    // ONNX Runtime on the best simulated configuration of the first bit width and granularity.
    const first = rows.filter((r) => r.perChannel === o.granularities[0] && r.weightBits === bitsList[0]);
    const best = first.reduce((a, b) => (b.top1 > a.top1 ? b : a), first[0]);
    if (o.onnxImages > 0 && best) {
      const q = nets.get(key(best.observer, best.perChannel, best.weightBits))!;
      const sub: Batch[] = [];
      let n = 0;
      for (const b of test) {
        if (n >= o.onnxImages) break;
        sub.push(b);
        n += b.x.shape[0];
      }
      const a = await onnxAgreement(exportOnnx(q), q, sub);
      report.onnx = { ...a, observer: best.observer, perChannel: best.perChannel, weightBits: best.weightBits };
      log(`  ONNX Runtime ${int8Label(best.weightBits)} (${best.observer}, ${best.perChannel ? 'per-channel' : 'per-tensor'} w): top-1 agreement ${pct(a.agreement)} on ${a.images} test images, max |logit diff| ${a.maxDiff.toFixed(4)} (${(a.relMaxDiff * 100).toFixed(2)}% of the logits' scale)`);
    }
    if (o.qatEpochs > 0) {
      const bits = o.qatBits ?? Math.min(...bitsList);
      const perChannel = o.granularities[0];
      const candidates = rows.filter((r) => r.perChannel === perChannel && r.weightBits === bits);
      const observer = o.qatObserver ?? (candidates.length ? candidates.reduce((a, b) => (b.top1 > a.top1 ? b : a)).observer : best.observer);
      const q = nets.get(key(observer, perChannel, bits)) ?? make(observer, perChannel, bits);
      const before = top1(q, test);
      const loader = new DataLoader(trainSet, { batchSize: o.batchSize, shuffle: true, seed: o.seed, augment: true, transforms: defaultTransforms(trainSet, 'train', true), workers: 1 });
      try {
        await qatFineTune(q, loader, { epochs: o.qatEpochs, lr: o.qatLr, log: (l) => log(`  ${l}`) });
      } finally {
        await loader.close();
      }
      const after = top1(q, test);
      report.qat = { observer, perChannel, weightBits: bits, epochs: o.qatEpochs, before, after };
      log(`  QAT ${o.qatEpochs} epoch(s) (${observer}, lr ${o.qatLr}): ${int8Label(bits)} top-1 ${pct(before)} -> ${pct(after)}`);
    }
    return report;
  } finally {
    disposeBatches(calib);
    disposeBatches(test);
    m.trained?.dispose();
    m.deployed.dispose();
  }
}


const pct = (x: number) => `${(x * 100).toFixed(2)}%`;
/** "INT8", or "INT8 (W4)" for narrower weights. */
export const int8Label = (bits = 8) => (bits < 8 ? `INT8 (W${bits})` : 'INT8');

/** Per-layer weight statistics of a loaded checkpoint's deploy form, and of a target model's kernels before BN folding. */
export function weightReport(m: LoadedModel): { deployed: LayerWeightStats[]; beforeFolding: LayerWeightStats[] | null } {
  const deployed = weightStats(deployedKernels(m.deployed));
  let beforeFolding: LayerWeightStats[] | null = null;
  if (m.trained instanceof RepOptVGG && m.mode === 'target') {
    beforeFolding = weightStats(m.trained.blocks.flatMap((b): [string, Tensor][] => (b instanceof TargetBlock ? [[b.info.name, b.conv.weight]] : [])));
  }
  return { deployed, beforeFolding };
}
