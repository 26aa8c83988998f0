/**
 * `repopt bench`'s pieces: MAC counting per mode (target agrees with the model
 * listing's count), the max-batch search (doubling + bisection), the RepSGD it
 * builds (Grad Mults on every target kernel), and a tiny timed run.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as torch from '../src/torch/index.js';
import { REPOPT_VGG_CONFIGS, vggTargetStats } from '../src/models/repoptvgg.js';
import { benchOptimizer, benchTrainStep, searchMaxBatch, vggModeMacs } from '../src/train/bench.js';
import { buildVgg } from '../src/train/setup.js';

torch.setNumThreads(1);

test('vggModeMacs: target equals the listing count; repvgg / hs add one 1x1 conv per block', () => {
  const cfg = REPOPT_VGG_CONFIGS.A0;
  const m = { blocks: [...cfg.numBlocks], widths: [...cfg.widthMultiplier], inChannels: 3, numClasses: 1000 };
  const target = vggModeMacs(m, 'target', 224);
  assert.equal(target, vggTargetStats(cfg).macs);
  const rep = vggModeMacs(m, 'repvgg', 224);
  assert.equal(rep, vggModeMacs(m, 'hs', 224));
  // (rep - linear) = 10/9 (target - linear)
  const lin = 1280 * 1000;
  assert.ok(Math.abs((rep - lin) / (target - lin) - 10 / 9) < 1e-12);
});

test('searchMaxBatch: doubling then bisection to the granule, the largest batch that fits', () => {
  const r = searchMaxBatch((b) => 100 + 2 * b, 1000, 16, 8);
  assert.equal(r.batch, 448);
  assert.equal(r.rssMiB, 996);
  assert.deepEqual(r.probes.map(([b]) => b).slice(0, 6), [16, 32, 64, 128, 256, 512]);
  assert.ok(r.probes.every(([b, rss]) => (rss <= 1000) === (b <= 450)));
  assert.equal(searchMaxBatch((b) => 100 + 2 * b, 50, 16, 8).batch, 0);
});

test('benchOptimizer: RepSGD has a Grad Mult on every target kernel, SGD none', () => {
  const model = buildVgg({ blocks: [1, 2, 1, 1], widths: [0.25, 0.25, 0.25, 0.25], inChannels: 3, numClasses: 10 }, 'target');
  const rep = benchOptimizer(model, 'repsgd');
  const plain = benchOptimizer(model, 'sgd');
  try {
    assert.deepEqual([...rep.gradMults.keys()], model.layout.map((b) => `${b.name}.conv.weight`));
    assert.equal(plain.gradMults.size, 0);
    // stage2.1: s = t = sqrt(2/1), identity: off-centre taps s^2 = 2, centre of the diagonal 2 + 2 + 1
    const m = rep.gradMult('stage2.1.conv.weight')!;
    assert.ok(Math.abs(m.select(0, 0).select(0, 0).select(0, 0).select(0, 0).item() - 2) < 1e-6);
    assert.ok(Math.abs(m.select(0, 3).select(0, 3).select(0, 1).select(0, 1).item() - 5) < 1e-6);
    assert.ok(Math.abs(m.select(0, 3).select(0, 2).select(0, 1).select(0, 1).item() - 4) < 1e-6);
  } finally {
    model.dispose();
    rep.dispose();
    plain.dispose();
  }
});

test('benchTrainStep: a tiny run in each mode reports finite times, MACs and loss', () => {
  for (const mode of ['target', 'repvgg', 'hs'] as const) {
    const r = benchTrainStep({
      model: { blocks: [1, 1, 1, 1], widths: [0.25, 0.25, 0.25, 0.25], inChannels: 3, numClasses: 10 },
      imageSize: 16, mode, optimizer: 'repsgd', batch: 4, warmup: 1, steps: 2, threads: 1, channelsLast: mode === 'hs', seed: 0,
    });
    assert.equal(r.mode, mode);
    assert.equal(r.optimizer, mode === 'target' ? 'repsgd' : 'sgd');
    for (const k of ['forwardMs', 'backwardMs', 'optimizerMs', 'imgPerSec', 'gflops', 'finalLoss'] as const) assert.ok(Number.isFinite(r[k]) && r[k] >= 0, k);
    assert.ok(r.macsPerImage > 0);
  }
});
