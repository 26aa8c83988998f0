/**
 * RepOpt-GhostNet vs RepGhostNet after INT8 post-training quantization, through the generic deploy path
 * (reparameterizeModel -> inference graph -> calibrate / quantizeModel -> ONNX QDQ in ONNX Runtime).
 *
 *   node dist/bench/ghostnet-int8.js [--data fashion-mnist] [--width 0.5] [--epochs 1] [--batch 64]
 *        [--lr 0.1] [--calib 512] [--onnx-images 1024] [--seed 0]
 *
 * Two models of the same width and recipe (SGD nesterov momentum 0.9, cosine LR, weight decay 4e-5 on
 * conv/linear weights, label smoothing 0.1, flip+crop augmentation from the loader):
 *   RepOpt-GhostNet: `target` mode, RepSGD with the release's 0.5x scale file (Grad Mults, Rule of
 *                    Initialization);
 *   RepGhostNet:     `rep` mode (cheap-op BN + fusion BN branch), plain SGD.
 * Both are re-parameterized, calibrated on `--calib` training images and evaluated on the whole test
 * split in FP32 and INT8 (per-channel and per-tensor weights; min-max, percentile and MSE observers; 6-
 * and 5-bit weight grids with MSE), then the best 8-bit per-channel net runs as an ONNX QDQ file in ONNX
 * Runtime against our simulation. One JSON line per model (plus the cheap ops' centre/surround tap spread).
 */
import path from 'node:path';
import * as torch from '../src/torch/index.js';
import { F, type Tensor } from '../src/torch/index.js';
import { openDataset, type Dataset } from '../src/data/dataset.js';
import { DataLoader } from '../src/data/loader.js';
import { defaultTransforms } from '../src/data/transforms.js';
import { SGD } from '../src/optim/index.js';
import { RepSGD, reparameterizeModel } from '../src/repopt/index.js';
import { lrAt } from '../src/train/schedule.js';
import type { Module } from '../src/nn/index.js';
import { GhostNet, ghostnetHandler, loadGhostnetScales, type GhostNetMode } from '../src/models/ghostnet.js';
import { OBSERVERS, calibrate, deployedKernels, quantizeModel, weightStats } from '../src/deploy/quant.js';
import { OnnxRunner, exportOnnx } from '../src/deploy/onnx.js';
import { REPO_ROOT } from '../test/helpers/paths.js';

function arg(name: string, dflt: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : dflt;
}
const data = arg('data', 'fashion-mnist');
const width = Number(arg('width', '0.5'));
const epochs = Number(arg('epochs', '1'));
const batchSize = Number(arg('batch', '64'));
const lr = Number(arg('lr', '0.1'));
const calibImages = Number(arg('calib', '512'));
const onnxImages = Number(arg('onnx-images', '1024'));
const seed = Number(arg('seed', '0'));
const SCALES = path.join(REPO_ROOT, 'test/fixtures/scales/RepOptGhostNet_0_5x_scales.pth');

interface Batch {
  x: Tensor;
  y: Tensor;
}

async function collect(ds: Dataset, limit: number, shuffle: boolean): Promise<Batch[]> {
  const loader = new DataLoader(ds, { batchSize: 128, shuffle, seed, augment: false, transforms: defaultTransforms(ds, 'test', false), workers: 0 });
  const out: Batch[] = [];
  let n = 0;
  try {
    for await (const { x, y } of loader.epoch(0)) {
      out.push({ x, y });
      n += x.shape[0];
      if (n >= limit) break;
    }
  } finally {
    await loader.close();
  }
  return out;
}

function top1(model: Module, batches: Batch[]): number {
  model.eval();
  let hits = 0;
  let n = 0;
  for (const { x, y } of batches) {
    torch.noGrad(() => torch.tidy(() => (hits += model.forward(x).argmax(1).eq(y).sum().item())));
    n += y.shape[0];
  }
  return hits / n;
}

async function trainOne(mode: GhostNetMode, train: Dataset): Promise<{ model: GhostNet; seconds: number; loss: number }> {
  torch.manualSeed(seed);
  const model = new GhostNet({ width, mode, numClasses: train.numClasses, inChannels: train.channels });
  const named = model.namedParameters();
  const decay = named.filter(([, p]) => p.ndim > 1);
  const rest = named.filter(([, p]) => p.ndim <= 1);
  const groups = [
    { params: decay, weightDecay: 4e-5 },
    { params: rest, weightDecay: 0 },
  ];
  const opts = { lr, momentum: 0.9, nesterov: true };
  let opt: SGD;
  if (mode === 'target') {
    const scales = loadGhostnetScales(SCALES, model);
    const handler = ghostnetHandler(scales, model);
    handler.reinitialize(model);
    const mults = handler.gradMults('sgd');
    opt = new RepSGD(groups, opts, mults);
    for (const t of [...mults.values(), ...scales.values()]) t.dispose();
  } else {
    opt = new SGD(groups, opts);
  }
  const loader = new DataLoader(train, { batchSize, shuffle: true, seed, augment: true, transforms: defaultTransforms(train, 'train', true), workers: 1 });
  const total = epochs * loader.batchesPerEpoch;
  let it = 0;
  let loss = 0;
  const t0 = performance.now();
  model.train();
  try {
    for (let e = 0; e < epochs; e++) {
      for await (const { x, y } of loader.epoch(e)) {
        opt.setLr(lrAt({ kind: 'cosine', baseLr: lr, totalIters: total, warmupIters: Math.min(100, total / 10) }, it));
        opt.zeroGrad();
        loss = torch.tidy(() => {
          const l = F.crossEntropy(model.forward(x), y, { labelSmoothing: 0.1 });
          l.backward();
          return l.item();
        });
        opt.step();
        x.dispose();
        y.dispose();
        it++;
      }
    }
  } finally {
    await loader.close();
    opt.dispose();
  }
  return { model, seconds: (performance.now() - t0) / 1000, loss };
}

torch.manualSeed(seed);
const train = openDataset(data, 'train');
const test = openDataset(data, 'test');
const testBatches = await collect(test, test.length, false);
const calib = (await collect(train, calibImages, true)).map((b) => b.x);
for (const mode of ['target', 'rep'] as const) {
  const { model, seconds, loss } = await trainOne(mode, train);
  const fp32Trained = top1(model, testBatches);
  const deployed = reparameterizeModel(model);
  const fp32Deployed = top1(deployed, testBatches);
  const observers = calibrate(deployed, calib);
  const int8: Record<string, number> = {};
  let best = { observer: OBSERVERS[0], top1: -1 };
  for (const weightBits of [8, 6, 5]) {
    for (const perChannel of [true, false]) {
      for (const observer of weightBits === 8 ? OBSERVERS : (['mse'] as const)) {
        const q = quantizeModel(deployed, observers, observer, { perChannel, quantizeFirst: true, quantizeLast: true, weightBits });
        const r = top1(q, testBatches);
        int8[`w${weightBits}/${perChannel ? 'channel' : 'tensor'}/${observer}`] = r;
        if (weightBits === 8 && perChannel && r > best.top1) best = { observer, top1: r };
      }
    }
  }
  // The cheap ops' kernels: spread of the centre tap against the surrounding ones (the paper's Table 11 view).
  const cheap = weightStats(deployedKernels(deployed).filter(([l]) => l.endsWith('cheap_operation')));
  const cheapCentreOverSurround = cheap.reduce((a, r) => a + r.centreStd! / r.surroundStd!, 0) / cheap.length;
  const cheapMaxOverStd = cheap.reduce((a, r) => a + r.maxAbs / r.std, 0) / cheap.length;
  const q = quantizeModel(deployed, observers, best.observer);
  const runner = await OnnxRunner.create(exportOnnx(q));
  let agree = 0;
  let n = 0;
  for (const { x } of testBatches) {
    if (n >= onnxImages) break;
    const theirs = await runner.run(x);
    torch.noGrad(() => torch.tidy(() => (agree += theirs.argmax(1).eq(q.forward(x).argmax(1)).sum().item())));
    theirs.dispose();
    n += x.shape[0];
  }
  await runner.release();
  console.log(JSON.stringify({
    model: mode === 'target' ? `RepOpt-GhostNet-${width}x` : `RepGhostNet-${width}x`, mode, data, epochs, trainSeconds: Math.round(seconds), finalLoss: loss,
    fp32Trained, fp32Deployed, int8, onnxObserver: best.observer, onnxInt8Agreement: agree / n, onnxImages: n, cheapCentreOverSurround, cheapMaxOverStd,
  }));
  deployed.dispose();
  model.dispose();
}
