/**
 * Deployment commands:
 *   deploy           fuse a trained checkpoint into the plain deployed network, write its state dict
 *   export           write the deployed network as ONNX (FP32, or INT8 QDQ calibrated on data), checked in ONNX Runtime
 *   quantize         FP32 vs INT8 top-1 per observer (simulated in libtorch), optional QAT, ONNX Runtime agreement
 *   inspect-weights  per-layer weight statistics of the deployed kernels (the paper's Table 11)
 *   quant-demo       search + RepOpt training + RepVGG training on Fashion-MNIST, then all of the above side by side
 */
import { groupQuantStudies, quantComparisons, spreadOf, writeReport } from '../report/index.js';
import fs from 'node:fs';
import path from 'node:path';
import * as torch from '../torch/index.js';
import type { Tensor } from '../torch/index.js';
import { openDataset, type Dataset } from '../data/dataset.js';
import { DataLoader } from '../data/loader.js';
import { defaultTransforms } from '../data/transforms.js';
import { loadStateDictFile, saveStateDict } from '../train/checkpoint.js';
import { buildModel, type ModelConfig } from '../train/setup.js';
import type { RepOptVGG } from '../models/repoptvgg.js';
import { DeployVGG, deployVGG, modeOfStateDict } from '../deploy/fuse.js';
import {
  DEFAULT_POLICY,
  OBSERVERS,
  QuantizedVGG,
  calibrate,
  deployedKernels,
  qatFineTune,
  quantizeModel,
  weightStats,
  type LayerWeightStats,
  type ObserverKind,
  type QuantPolicy,
} from '../deploy/quant.js';
import { OnnxRunner, exportOnnx } from '../deploy/onnx.js';
import { runTraining } from './train.js';
import { UsageError, parseCommand, type Flags } from './flags.js';
import { DEPLOY_COMMAND, EXPORT_COMMAND, INSPECT_WEIGHTS_COMMAND, QUANTIZE_COMMAND, QUANT_DEMO_COMMAND, QUANT_DEMO_ARCH } from './commands.js';
import { applyThreads } from './threads.js';
import { InterruptedError } from '../train/interrupt.js';
import type { Module } from '../nn/index.js';

type Log = (line: string) => void;

/** Where a checkpoint's model comes from. */
export interface CheckpointModel {
  checkpoint: string;
  arch?: string;
  blocks?: number[];
  widths?: number[];
  strides?: number[];
}


export interface LoadedModel {
  /** The trained model (null when the checkpoint already holds a deployed network). */
  trained: RepOptVGG | null;
  deployed: DeployVGG;
  mode: 'target' | 'repvgg' | 'hs' | 'deploy';
  config: ModelConfig;
  /** max |trained - deployed| / max |trained| over random inputs (0 for deployed checkpoints). */
  fuseError: number;
}

function firstKernel(sd: Map<string, Tensor>): Tensor {
  const t = sd.get('stage0.conv.weight') ?? sd.get('stage0.conv_3x3.weight');
  if (!t) throw new Error('no stem kernel (stage0.conv.weight / stage0.conv_3x3.weight) in the checkpoint');
  return t;
}

/**
 * A checkpoint (repopt training checkpoint, `{"model": ...}`, plain state dict, or a deployed state dict)
 * as a trained model and its deployed network. The architecture comes from --arch / --blocks --widths
 * [--strides], else from the run's config.json beside the checkpoint; the mode, input channels and classes
 * from the state dict itself.
 */
export function loadForDeploy(f: CheckpointModel, opts: { imageSize?: number } = {}): LoadedModel {
  const file = f.checkpoint;
  if (!fs.existsSync(file)) throw new Error(`${file}: no such checkpoint`);
  if (f.arch && (f.blocks || f.widths)) throw new UsageError('give either --arch or --blocks/--widths, not both');
  const sd = loadStateDictFile(file);
  try {
    const mode = modeOfStateDict(sd.keys());
    const lin = sd.get('linear.weight');
    if (!lin) throw new Error(`${file}: no linear.weight in the checkpoint`);
    const inferred = { inChannels: firstKernel(sd).shape[1], numClasses: lin.shape[0] };
    let config: ModelConfig;
    if (f.arch || f.blocks || f.widths) {
      if (!f.arch && !(f.blocks && f.widths)) throw new UsageError('give --arch NAME, or both --blocks and --widths');
      config = { arch: f.arch, blocks: f.blocks, widths: f.widths, strides: f.strides, ...inferred };
    } else {
      const cfgFile = path.join(path.dirname(file), 'config.json');
      if (!fs.existsSync(cfgFile)) throw new UsageError(`no config.json beside ${file}: give the model with --arch or --blocks/--widths [--strides]`);
      const saved = JSON.parse(fs.readFileSync(cfgFile, 'utf8')) as { model?: ModelConfig };
      if (!saved.model) throw new Error(`${cfgFile}: no model configuration`);
      config = { ...saved.model, ...(f.strides ? { strides: f.strides } : {}), ...inferred };
    }
    if (mode === 'deploy') {
      const shape = buildModel(config, 'target');
      const layout = shape.layout;
      shape.dispose();
      const deployed = new DeployVGG({ layout, numClasses: config.numClasses });
      deployed.loadStateDict(sd);
      return { trained: null, deployed: deployed.eval(), mode, config, fuseError: 0 };
    }
    const trained = buildModel(config, mode);
    try {
      trained.loadStateDict(sd);
      trained.eval();
      const deployed = deployVGG(trained);
      const fuseError = fusionError(trained, deployed, opts.imageSize ?? 32);
      return { trained, deployed, mode, config, fuseError };
    } catch (e) {
      trained.dispose();
      throw e;
    }
  } finally {
    for (const t of sd.values()) t.dispose();
  }
}

/** max |a(x) - b(x)| / max |a(x)| over a batch of random normal inputs (eval mode). */
export function fusionError(a: Module, b: Module, size = 32, batch = 4): number {
  const cin = (b as DeployVGG).layout[0].inChannels;
  return torch.noGrad(() =>
    torch.tidy(() => {
      const x = torch.randn([batch, cin, size, size]);
      const ya = a.forward(x);
      const yb = b.forward(x);
      return ya.sub(yb).abs().max().item() / Math.max(1e-12, ya.abs().max().item());
    }),
  );
}

// ------------------------------------------------------------------ data helpers

interface Batch {
  x: Tensor;
  y: Tensor;
}

/** Up to `limit` images of a split as batches in memory (no augmentation; shuffled with `seed` if asked). */
async function collectBatches(ds: Dataset, limit: number, batchSize: number, shuffle: boolean, seed: number): Promise<Batch[]> {
  const loader = new DataLoader(ds, { batchSize, shuffle, seed, augment: false, transforms: defaultTransforms(ds, 'test', false), workers: 0 });
  const out: Batch[] = [];
  let n = 0;
  try {
    // Stop once `limit` images are in: the rest of the epoch would only be decoded to be thrown away.
    if (limit > 0) {
      for await (const { x, y } of loader.epoch(0)) {
        const take = Math.min(x.shape[0], limit - n);
        if (take < x.shape[0]) {
          out.push({ x: torch.keep(x.narrow(0, 0, take).contiguous()), y: torch.keep(y.narrow(0, 0, take).contiguous()) });
          x.dispose();
          y.dispose();
        } else out.push({ x, y });
        n += take;
        if (n >= limit) break;
      }
    }
  } finally {
    await loader.close();
  }
  return out;
}

function disposeBatches(bs: Batch[]): void {
  for (const b of bs) {
    b.x.dispose();
    b.y.dispose();
  }
}

/** Top-1 of a model over batches. */
function top1(model: Module, batches: Batch[]): number {
  const wasTraining = model.training;
  model.eval();
  let hits = 0;
  let n = 0;
  try {
    for (const { x, y } of batches) {
      torch.noGrad(() =>
        torch.tidy(() => {
          hits += model.forward(x).argmax(1).eq(y).sum().item();
          n += y.shape[0];
        }),
      );
    }
  } finally {
    model.train(wasTraining);
  }
  return n ? hits / n : 0;
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
}

/** Runs ONNX bytes in ONNX Runtime over batches and compares with our model's logits. */
export async function onnxAgreement(bytes: Uint8Array, ours: Module, batches: Batch[]): Promise<OnnxAgreement> {
  const runner = await OnnxRunner.create(bytes);
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
  return { images: n, agreement: agree / n, relMaxDiff: maxDiff / Math.max(scale, 1e-12), maxDiff, onnxTop1: hitsOnnx / n, oursTop1: hitsOurs / n };
}

const pct = (x: number) => `${(x * 100).toFixed(2)}%`;
/** "INT8", or "INT8 (W4)" for narrower weights. */
const label = (bits = 8) => (bits < 8 ? `INT8 (W${bits})` : 'INT8');

// ------------------------------------------------------------------ deploy

export async function runDeploy(argv: string[], log: Log): Promise<number> {
  const { flags: f } = parseCommand(DEPLOY_COMMAND, argv);
  applyThreads(f.threads);
  const m = loadForDeploy(f);
  try {
    saveStateDict(f.out, m.deployed.stateDict());
    log(`${f.checkpoint} (${m.mode}) -> ${f.out}: ${m.deployed.blocks.length} conv3x3+bias blocks, ${m.deployed.numParameters().toLocaleString('en-US')} params` +
      (m.trained ? ` (trained ${m.trained.numParameters().toLocaleString('en-US')}); max |trained - deployed| = ${m.fuseError.toExponential(2)} of the logits' scale` : ''));
    return 0;
  } finally {
    m.trained?.dispose();
    m.deployed.dispose();
  }
}

// ------------------------------------------------------------------ export

export async function runExport(argv: string[], log: Log): Promise<number> {
  const { flags: f, given } = parseCommand(EXPORT_COMMAND, argv);
  if (f.int8 && !f.calib) throw new UsageError('--int8 needs calibration data: --calib SPEC (e.g. fashion-mnist)');
  const int8Only = (['calib', 'calib-images', 'observer', 'per-tensor', 'weight-bits', 'fp32-first', 'fp32-last', 'percentile'] as const).filter((k) => given.has(k));
  if (!f.int8 && int8Only.length) throw new UsageError(`${int8Only.map((k) => `--${k}`).join(', ')} need --int8`);
  applyThreads(f.threads);
  const { observer, percentile, seed } = f;
  torch.manualSeed(seed);
  const calibSet = f.calib ? openDataset(f.calib, 'train', { imageSize: f['image-size'] }) : null;
  const m = loadForDeploy(f, { imageSize: calibSet?.height });
  let calib: Batch[] = [];
  try {
    if (calibSet && calibSet.channels !== m.deployed.layout[0].inChannels) throw new Error(`--calib ${f.calib}: ${calibSet.channels}-channel images, the model takes ${m.deployed.layout[0].inChannels}`);
    let net: DeployVGG | QuantizedVGG = m.deployed;
    if (calibSet) {
      calib = await collectBatches(calibSet, f['calib-images'], 128, true, seed);
      const obs = calibrate(m.deployed, calib.map((b) => b.x));
      const policy: QuantPolicy = { perChannel: !f['per-tensor'], quantizeFirst: !f['fp32-first'], quantizeLast: !f['fp32-last'], weightBits: f['weight-bits'] };
      net = quantizeModel(m.deployed, obs, observer, policy, { percentile });
    }
    const bytes = exportOnnx(net);
    fs.mkdirSync(path.dirname(path.resolve(f.out)), { recursive: true });
    fs.writeFileSync(f.out, bytes);
    const what = net instanceof QuantizedVGG
      ? `INT8 QDQ (${observer} activations on ${calib.reduce((s, b) => s + b.x.shape[0], 0)} images of ${calibSet!.name}, ${net.policy.perChannel ? 'per-channel' : 'per-tensor'}${net.weightBits < 8 ? ` ${net.weightBits}-bit` : ''} weights${net.policy.quantizeFirst ? '' : ', first conv FP32'}${net.policy.quantizeLast ? '' : ', last linear FP32'})`
      : 'FP32';
    log(`${f.out}: ${what}, opset 13, input [batch, ${m.deployed.layout[0].inChannels}, height, width], ${bytes.length.toLocaleString('en-US')} bytes` +
      (m.trained ? `; fusion error ${m.fuseError.toExponential(2)}` : ''));
    if (!f['no-verify']) {
      const size = calibSet?.height ?? f['image-size'] ?? 32;
      const batches = calib.length ? calib.slice(0, 2) : [{ x: torch.keep(torch.randn([8, m.deployed.layout[0].inChannels, size, size])), y: torch.keep(torch.zeros([8], { dtype: 'int64' })) }];
      const a = await onnxAgreement(bytes, net, batches);
      if (!calib.length) disposeBatches(batches);
      log(`ONNX Runtime check on ${a.images} ${calib.length ? 'calibration' : 'random'} images: top-1 agreement ${pct(a.agreement)}, max |logit diff| ${a.maxDiff.toExponential(2)} (${a.relMaxDiff.toExponential(2)} of the logits' scale)`);
      const ok = net instanceof QuantizedVGG ? a.agreement >= 0.9 : a.relMaxDiff <= 1e-4;
      if (!ok) {
        log('ONNX Runtime disagrees with the model beyond tolerance');
        return 1;
      }
    }
    return 0;
  } finally {
    disposeBatches(calib);
    m.trained?.dispose();
    m.deployed.dispose();
  }
}

// ------------------------------------------------------------------ quantize

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
}

export interface QuantizeOptions {
  checkpoint: string;
  modelFlags?: Omit<CheckpointModel, 'checkpoint'>;
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
  log?: Log;
}

/** The whole quantization study of one checkpoint. */
export async function quantizeStudy(o: QuantizeOptions): Promise<QuantReport> {
  const log = o.log ?? (() => {});
  torch.manualSeed(o.seed);
  const trainSet = openDataset(o.data, 'train');
  const testSet = openDataset(o.data, 'test');
  const m = loadForDeploy({ ...(o.modelFlags ?? {}), checkpoint: o.checkpoint }, { imageSize: testSet.height });
  if (testSet.channels !== m.deployed.layout[0].inChannels) {
    m.trained?.dispose();
    m.deployed.dispose();
    throw new Error(`${o.data}: ${testSet.channels}-channel images, the model takes ${m.deployed.layout[0].inChannels}`);
  }
  const calib = await collectBatches(trainSet, o.calibImages, 128, true, o.seed);
  const test = await collectBatches(testSet, o.testImages ?? testSet.length, o.batchSize, false, 0);
  try {
    const testImages = test.reduce((s, b) => s + b.x.shape[0], 0);
    const fp32Trained = m.trained ? top1(m.trained, test) : null;
    const fp32Deployed = top1(m.deployed, test);
    const obs = calibrate(m.deployed, calib.map((b) => b.x));
    const rows: QuantRow[] = [];
    const nets = new Map<string, QuantizedVGG>();
    const bitsList = o.weightBits ?? [8];
    const key = (observer: ObserverKind, perChannel: boolean, bits: number) => `${observer}/${perChannel}/${bits}`;
    const make = (observer: ObserverKind, perChannel: boolean, weightBits: number) =>
      quantizeModel(m.deployed, obs, observer, { perChannel, quantizeFirst: o.quantizeFirst, quantizeLast: o.quantizeLast, weightBits }, { percentile: o.percentile });
    for (const bits of bitsList) {
      for (const perChannel of o.granularities) {
        for (const observer of bits < 8 ? (o.lowBitObservers ?? o.observers) : o.observers) {
          const q = make(observer, perChannel, bits);
          nets.set(key(observer, perChannel, bits), q);
          const r = top1(q, test);
          rows.push({ observer, perChannel, weightBits: bits, top1: r });
          log(`  ${label(bits)} ${observer.padEnd(10)} ${perChannel ? 'per-channel' : 'per-tensor '} weights: top-1 ${pct(r)}`);
        }
      }
    }
    const report: QuantReport = {
      checkpoint: o.checkpoint, mode: m.mode, fuseError: m.fuseError, calibImages: calib.reduce((s, b) => s + b.x.shape[0], 0), testImages,
      fp32Trained, fp32Deployed, rows, weights: weightStats(deployedKernels(m.deployed)),
    };
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
      log(`  ONNX Runtime ${label(best.weightBits)} (${best.observer}, ${best.perChannel ? 'per-channel' : 'per-tensor'} w): top-1 agreement ${pct(a.agreement)} on ${a.images} test images, max |logit diff| ${a.maxDiff.toFixed(4)} (${(a.relMaxDiff * 100).toFixed(2)}% of the logits' scale)`);
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
      log(`  QAT ${o.qatEpochs} epoch(s) (${observer}, lr ${o.qatLr}): ${label(bits)} top-1 ${pct(before)} -> ${pct(after)}`);
    }
    return report;
  } finally {
    disposeBatches(calib);
    disposeBatches(test);
    m.trained?.dispose();
    m.deployed.dispose();
  }
}

export function formatWeightStats(rows: LayerWeightStats[]): string[] {
  const f = (x: number | null) => (x === null ? '     -' : x.toFixed(4).padStart(8));
  const lines = [`${'layer'.padEnd(10)} ${'shape'.padEnd(16)} ${'std'.padStart(8)} ${'centre'.padStart(8)} ${'around'.padStart(8)} ${'max|w|'.padStart(8)} ${'max/std'.padStart(8)} ${'err/T'.padStart(7)} ${'err/C'.padStart(7)}`];
  for (const r of rows) {
    lines.push(`${r.layer.padEnd(10)} ${`[${r.shape.join(',')}]`.padEnd(16)} ${f(r.std)} ${f(r.centreStd)} ${f(r.surroundStd)} ${f(r.maxAbs)} ${(r.maxAbs / r.std).toFixed(1).padStart(8)} ${(r.errPerTensor * 100).toFixed(2).padStart(6)}% ${(r.errPerChannel * 100).toFixed(2).padStart(6)}%`);
  }
  return lines;
}

const WEIGHT_STATS_NOTE = 'deployed kernels (BN folded, branches fused); centre = tap [1,1], around = the other 8 taps; err/T, err/C = relative RMS error of int8 weights with per-tensor / per-channel scales';

export async function runQuantize(argv: string[], log: Log): Promise<number> {
  const { flags: f } = parseCommand(QUANTIZE_COMMAND, argv);
  applyThreads(f.threads);
  const granularities = { channel: [true], tensor: [false], both: [true, false] }[f['weight-scales']];
  const r = await quantizeStudy({
    checkpoint: f.checkpoint,
    modelFlags: f,
    data: f.data,
    calibImages: f['calib-images'],
    testImages: f['test-images'],
    observers: f.observers,
    percentile: f.percentile,
    granularities,
    quantizeFirst: !f['fp32-first'],
    quantizeLast: !f['fp32-last'],
    weightBits: f['weight-bits'],
    qatEpochs: f['qat-epochs'],
    qatLr: f['qat-lr'],
    qatObserver: f['qat-observer'],
    qatBits: f['qat-bits'],
    onnxImages: f['onnx-images'],
    batchSize: f['batch-size'],
    seed: f.seed,
    log: f.json ? undefined : log,
  });
  if (f.json) {
    log(JSON.stringify(r));
    return 0;
  }
  log(`${r.checkpoint} (${r.mode}); fusion error ${r.fuseError.toExponential(2)}; calibration ${r.calibImages} training images, test ${r.testImages} images`);
  log(`${'model'.padEnd(36)} ${'top-1'.padStart(8)} ${'drop'.padStart(8)}`);
  if (r.fp32Trained !== null) log(`${'FP32 trained (eval mode)'.padEnd(36)} ${pct(r.fp32Trained).padStart(8)}`);
  log(`${'FP32 deployed'.padEnd(36)} ${pct(r.fp32Deployed).padStart(8)}`);
  for (const row of r.rows) {
    const name = `${label(row.weightBits)} ${row.observer} (${row.perChannel ? 'per-channel' : 'per-tensor'} w)`;
    log(`${name.padEnd(36)} ${pct(row.top1).padStart(8)} ${((row.top1 - r.fp32Deployed) * 100).toFixed(2).padStart(7)}%`);
  }
  if (r.qat) log(`${`${label(r.qat.weightBits)} ${r.qat.observer} + QAT ${r.qat.epochs} ep`.padEnd(36)} ${pct(r.qat.after).padStart(8)} ${((r.qat.after - r.fp32Deployed) * 100).toFixed(2).padStart(7)}%`);
  if (r.onnx) log(`ONNX Runtime ${label(r.onnx.weightBits)} (${r.onnx.observer}, ${r.onnx.perChannel ? 'per-channel' : 'per-tensor'} w): top-1 ${pct(r.onnx.onnxTop1)} vs simulated ${pct(r.onnx.oursTop1)} on ${r.onnx.images} images, agreement ${pct(r.onnx.agreement)}, max |logit diff| ${(r.onnx.relMaxDiff * 100).toFixed(2)}% of the logits' scale`);
  if (f.weights) {
    log(`weights: ${WEIGHT_STATS_NOTE}`);
    for (const l of formatWeightStats(r.weights)) log(l);
  }
  return 0;
}

// ------------------------------------------------------------------ inspect-weights

export async function runInspectWeights(argv: string[], log: Log): Promise<number> {
  const { flags: f } = parseCommand(INSPECT_WEIGHTS_COMMAND, argv);
  applyThreads(f.threads);
  const m = loadForDeploy(f);
  try {
    const rows = weightStats(deployedKernels(m.deployed));
    if (f.json) {
      log(JSON.stringify({ checkpoint: f.checkpoint, mode: m.mode, layers: rows }));
      return 0;
    }
    log(`${f.checkpoint} (${m.mode}): ${WEIGHT_STATS_NOTE}`);
    for (const l of formatWeightStats(rows)) log(l);
    if (m.trained && m.mode === 'target') {
      const raw = weightStats(m.trained.blocks.map((b) => [b.info.name, (b as { conv: { weight: Tensor } }).conv.weight]));
      log('trained 3x3 kernels before BN folding:');
      for (const l of formatWeightStats(raw)) log(l);
    }
    return 0;
  } finally {
    m.trained?.dispose();
    m.deployed.dispose();
  }
}

// ------------------------------------------------------------------ quant-demo

export { QUANT_DEMO_ARCH };

export async function runQuantDemo(argv: string[], log: Log): Promise<number> {
  const { flags: f } = parseCommand(QUANT_DEMO_COMMAND, argv);
  applyThreads(f.threads);
  // With --seeds N every arm runs N times (seeds S..S+N-1, each in OUT/seed-K); one seed keeps OUT itself.
  const studies: Record<string, QuantReport>[] = [];
  for (let k = 0; k < f.seeds; k++) {
    if (f.seeds > 1) log(`\n=== seed ${f.seed + k} (${k + 1} of ${f.seeds}) ===`);
    studies.push(await quantDemoOnce(f, f.seeds > 1 ? path.join(f.out, `seed-${f.seed + k}`) : f.out, f.seed + k, log));
  }
  if (f.seeds > 1) {
    const [group] = groupQuantStudies(studies.map((arms, k) => ({ file: path.join(f.out, `seed-${f.seed + k}`, 'quant-demo.json'), arms })));
    log('');
    log(`over ${f.seeds} seeds (mean ± sd of top-1):`);
    for (let i = 0; i < group.configs.length; i++) {
      log(`${group.configs[i].padEnd(34)}${group.arms.map((n) => {
        const sp = spreadOf(group.top1[n][i]);
        return (sp ? `${sp.mean.toFixed(2)} ± ${sp.sd.toFixed(2)}` : '-').padStart(17);
      }).join('')}`);
    }
    for (const c of quantComparisons(group)) log(c.sentence);
  }
  const report = writeReport([f.out], path.join(f.out, 'report.html'), { title: 'repopt quant-demo: RepOpt-VGG vs RepVGG after quantization', commands: [['repopt', 'quant-demo', ...argv].join(' ')] });
  log(`report: ${report.file}`);
  return 0;
}

type QuantDemoFlags = Flags<typeof QUANT_DEMO_COMMAND.flags>;

/** One seed of the quant-demo: search, RepOpt-VGG and RepVGG in `out`, quantized; writes out/quant-demo.json. */
async function quantDemoOnce(f: QuantDemoFlags, out: string, seed: number, log: Log): Promise<Record<string, QuantReport>> {
  const { data, epochs } = f;
  // 8-bit weights with every observer, then narrower weights (MSE activations): where weight outliers cost.
  const bitsList = f['weight-bits'];
  const searchEpochs = f['search-epochs'];
  const batchSize = f['batch-size'];
  const arch = ['--blocks', f.blocks.join(','), '--widths', f.widths.join(','), '--strides', f.strides.join(',')];
  const common = ['--data', data, ...arch, '--batch-size', String(batchSize), '--seed', String(seed), '--log-every', '1000000', ...(f.lr !== undefined ? ['--lr', String(f.lr)] : [])];
  const t0 = performance.now();
  const stage = async (name: string, cmd: 'search' | 'train', extra: string[], ep: number): Promise<string> => {
    const dir = path.join(out, name);
    const done = path.join(dir, cmd === 'search' ? 'scales.pth' : 'final.pth');
    if (fs.existsSync(done)) {
      log(`[${name}] reusing ${done}`);
      return done;
    }
    if (fs.existsSync(path.join(dir, 'latest.pth'))) extra = [...extra, '--resume'];
    log(`[${name}] repopt ${cmd} ${[...common, ...extra, '--epochs', String(ep), '--out', dir].join(' ')}`);
    const r = await runTraining([...common, ...extra, '--epochs', String(ep), '--out', dir, '--quiet'], cmd, log);
    if (r.result.stopSignal) throw new InterruptedError(r.result.stopSignal, `${name} interrupted by ${r.result.stopSignal}: its checkpoint is saved; rerun quant-demo to continue`);
    log(`[${name}] done in ${((performance.now() - t0) / 1000).toFixed(0)} s${r.result.lastEval ? `, test top-1 ${pct(r.result.lastEval.top1)}` : ''}`);
    return done;
  };
  const scales = await stage('search', 'search', ['--no-eval'], searchEpochs);
  const repopt = await stage('repopt', 'train', ['--mode', 'target', '--scales', scales], epochs);
  const repvgg = await stage('repvgg', 'train', ['--mode', 'repvgg'], epochs);

  const reports: Record<string, QuantReport> = {};
  for (const [name, ckpt] of [['RepOpt-VGG', repopt], ['RepVGG', repvgg]] as const) {
    log(`[quantize] ${name}: ${ckpt}`);
    reports[name] = await quantizeStudy({
      checkpoint: ckpt,
      data,
      calibImages: f['calib-images'],
      testImages: f['test-images'],
      observers: [...OBSERVERS],
      lowBitObservers: ['mse'],
      weightBits: bitsList,
      percentile: 99.99,
      granularities: [true, false],
      quantizeFirst: true,
      quantizeLast: true,
      qatEpochs: f['qat-epochs'],
      qatLr: 1e-3,
      onnxImages: f['onnx-images'],
      batchSize: 256,
      seed,
      log,
    });
  }
  fs.writeFileSync(path.join(out, 'quant-demo.json'), JSON.stringify(reports, null, 2) + '\n');
  const names = Object.keys(reports);
  const col = (s: string) => s.padStart(17);
  log('');
  log(`${data}, blocks ${arch[1]} widths ${arch[3]} strides ${arch[5]}, ${epochs} epoch(s); INT8 calibrated on ${reports[names[0]].calibImages} training images, top-1 on ${reports[names[0]].testImages} test images`);
  log(`${''.padEnd(34)}${names.map(col).join('')}`);
  const line = (label: string, get: (r: QuantReport) => string) => log(`${label.padEnd(34)}${names.map((n) => col(get(reports[n]))).join('')}`);
  line('FP32 deployed', (r) => pct(r.fp32Deployed));
  for (const bits of bitsList) {
    for (const perChannel of [true, false]) {
      for (const obs of bits < 8 ? ['mse' as const] : OBSERVERS) {
        line(`${label(bits)} ${obs}, ${perChannel ? 'per-channel' : 'per-tensor'} w`, (r) => {
          const row = r.rows.find((x) => x.observer === obs && x.perChannel === perChannel && x.weightBits === bits)!;
          return `${pct(row.top1)} (${((row.top1 - r.fp32Deployed) * 100).toFixed(1)})`;
        });
      }
    }
  }
  if (reports[names[0]].qat) line(`${label(bitsList[0])} + QAT`, (r) => (r.qat ? `${pct(r.qat.after)} (${((r.qat.after - r.fp32Deployed) * 100).toFixed(1)})` : '-'));
  line(`ONNX Runtime ${label(bitsList[0])} agreement`, (r) => (r.onnx ? pct(r.onnx.agreement) : '-'));
  // Weight statistics of the deployed kernels. In RepVGG the identity branch lands on the centre taps of the
  // blocks that have one (stageS.I, I >= 1): the fused kernels get outliers there.
  const idBlocks = (r: QuantReport) => r.weights.filter((w) => /^stage[1-4]\.[1-9]/.test(w.layer));
  const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / Math.max(1, xs.length);
  if (idBlocks(reports[names[0]]).length) {
    line('centre/around std, identity blocks', (r) => mean(idBlocks(r).map((w) => w.centreStd! / w.surroundStd!)).toFixed(2));
    line('max|w|/std, identity blocks', (r) => mean(idBlocks(r).map((w) => w.maxAbs / w.std)).toFixed(1));
    line('int8 weight error, per-tensor', (r) => `${(mean(idBlocks(r).map((w) => w.errPerTensor)) * 100).toFixed(2)}%`);
  }
  log(`results in ${path.join(out, 'quant-demo.json')} (${((performance.now() - t0) / 1000).toFixed(0)} s)`);
  return reports;
}
