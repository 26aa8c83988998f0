/**
 * INT8 quantization: the quantizer's maths on hand-made numbers (scales, zero points, round-half-even,
 * clamping, per-channel weights), fake-quant ops and their straight-through gradients, the range observers
 * (min-max, percentile, MSE) on hand-made data, calibration of a tiny network, a QAT step, and the
 * per-layer weight statistics.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as torch from '../src/torch/index.js';
import { RepOptVGG } from '../src/models/repoptvgg.js';
import { deployVGG } from '../src/deploy/fuse.js';
import {
  ActivationObserver,
  MIN_SCALE,
  activationSites,
  affineQParams,
  calibrate,
  dequantizeValue,
  fakeQuant,
  fakeQuantWeight,
  histogramOf,
  histogramQuantile,
  mseRange,
  percentileRange,
  qatOptimizer,
  qatStep,
  quantizeModel,
  quantizeValue,
  quantizeWeightInt8,
  quantizedLayers,
  roundHalfEven,
  symmetricScale,
  weightScales,
  weightStats,
} from '../src/deploy/quant.js';

torch.setNumThreads(1);

const close = (a: number, b: number, tol = 1e-6) => Math.abs(a - b) <= tol * Math.max(1, Math.abs(b));

test('roundHalfEven: ties go to the even integer, like ONNX QuantizeLinear and nearbyint', () => {
  const cases: [number, number][] = [[0.5, 0], [1.5, 2], [2.5, 2], [-0.5, -0], [-1.5, -2], [-2.5, -2], [2.4, 2], [2.6, 3], [-2.6, -3], [7, 7]];
  for (const [x, want] of cases) assert.equal(roundHalfEven(x) + 0, want + 0, `round(${x})`);
});

test('affineQParams: scale and zero point from a range, widened to contain 0; degenerate ranges', () => {
  let p = affineQParams(0, 2.55);
  assert.ok(close(p.scale, 0.01));
  assert.equal(p.zeroPoint, 0);
  p = affineQParams(-1, 1);
  assert.ok(close(p.scale, 2 / 255));
  assert.equal(p.zeroPoint, 127); // -(-1) / fround(2/255) = 127.49999..., as PyTorch's observers give
  p = affineQParams(0.5, 1); // widened to [0, 1]
  assert.ok(close(p.scale, 1 / 255));
  assert.equal(p.zeroPoint, 0);
  p = affineQParams(-3, -1); // widened to [-3, 0]
  assert.equal(p.zeroPoint, 255);
  assert.ok(close(p.scale, 3 / 255));
  p = affineQParams(0, 0);
  assert.equal(p.scale, Math.fround(MIN_SCALE));
  assert.equal(p.zeroPoint, 0);
  assert.equal(p.scale, Math.fround(p.scale)); // float32, as ONNX stores it
  assert.throws(() => affineQParams(1, 0), /not a finite interval/);
  assert.throws(() => affineQParams(0, Infinity), /not a finite interval/);
  assert.ok(close(symmetricScale(1.27), 0.01));
  assert.ok(close(symmetricScale(-2.54), 0.02));
  assert.equal(symmetricScale(0), Math.fround(MIN_SCALE));
});

test('quantizeValue / dequantizeValue: rounding, zero point, clamping at both ends', () => {
  const p = { scale: 0.5, zeroPoint: 10, qmin: 0, qmax: 255 };
  assert.equal(quantizeValue(0, p), 10);
  assert.equal(quantizeValue(1, p), 12);
  assert.equal(quantizeValue(0.25, p), 10); // 0.5 -> 0 (even)
  assert.equal(quantizeValue(0.75, p), 12); // 1.5 -> 2
  assert.equal(quantizeValue(-5, p), 0);
  assert.equal(quantizeValue(-100, p), 0); // clamped
  assert.equal(quantizeValue(1000, p), 255); // clamped
  assert.equal(dequantizeValue(255, p), 122.5);
  assert.equal(dequantizeValue(0, p), -5);
});

test('fakeQuant (libtorch) equals quantize-then-dequantize by hand; its gradient is straight-through inside the range', () => {
  const p = { scale: 0.5, zeroPoint: 10, qmin: 0, qmax: 255 };
  const xs = [-100, -5.2, -0.25, 0, 0.24, 0.25, 0.26, 0.75, 1.25, 3.1, 122.4, 122.76, 500];
  const x = torch.tensor(xs, { requiresGrad: true });
  const y = fakeQuant(x, p);
  assert.deepEqual(y.toArray(), xs.map((v) => dequantizeValue(quantizeValue(v, p), p)));
  y.sum().backward();
  // STE: 1 where the value quantizes inside [qmin, qmax], 0 where it was clamped
  assert.deepEqual(x.grad!.toArray(), xs.map((v) => {
    const q = roundHalfEven(v / p.scale) + p.zeroPoint;
    return q >= p.qmin && q <= p.qmax ? 1 : 0;
  }));
});

test('weights: symmetric int8 scales per output channel or per tensor; codes, fake quant and clamping agree', () => {
  // channel 0: max |w| 1.27 -> scale 0.01; channel 1: max |w| 0.254 -> scale 0.002
  const w = torch.tensor([
    [[[1.27, -0.5]], [[0.004, 0.0049]]],
    [[[-0.254, 0.001]], [[0.0031, 0.1]]],
  ]); // [2, 2, 1, 2]
  const pc = weightScales(w, true);
  assert.ok(close(pc[0], 0.01) && close(pc[1], 0.002), `${pc}`);
  const pt = weightScales(w, false);
  assert.ok(close(pt[0], 0.01) && close(pt[1], 0.01));
  const codes = quantizeWeightInt8(w, pc);
  assert.deepEqual([...codes], [127, -50, 0, 0, -127, 0, 2, 50]); // 0.4 -> 0, 0.49 -> 0, 0.5 -> 0 (even), 1.55 -> 2
  const fq = fakeQuantWeight(w, pc).toArray();
  const s = [pc[0], pc[0], pc[0], pc[0], pc[1], pc[1], pc[1], pc[1]];
  fq.forEach((v, i) => assert.ok(close(v, codes[i] * s[i], 1e-6), `element ${i}: ${v} vs ${codes[i] * s[i]}`));
  const ct = quantizeWeightInt8(w, pt);
  assert.deepEqual([...ct], [127, -50, 0, 0, -25, 0, 0, 10]); // 0.254 / 0.01 = 25.4, 0.0031 / 0.01 = 0.31
  // values beyond the scale's range clamp to [-128, 127]
  const big = quantizeWeightInt8(torch.tensor([[3, -3]]), Float32Array.of(0.01));
  assert.deepEqual([...big], [127, -128]);
  // 4-bit weights: scale max|w| / 7, codes in [-8, 7]
  const s4 = weightScales(w, true, 4);
  assert.ok(close(s4[0], 1.27 / 7) && close(s4[1], 0.254 / 7));
  assert.deepEqual([...quantizeWeightInt8(w, s4, 4)], [7, -3, 0, 0, -7, 0, 0, 3]); // -0.5/0.1814 = -2.76, 0.1/0.03629 = 2.76
  assert.deepEqual([...quantizeWeightInt8(torch.tensor([[3, -3]]), Float32Array.of(0.1), 4)], [7, -8]);
  assert.throws(() => weightScales(w, true, 9), /weight bits must be an integer in \[2, 8\]/);
  // per-channel is never worse than per-tensor on the channel with the small range
  const err = (sc: Float32Array) => torch.tidy(() => fakeQuantWeight(w, sc).sub(w).narrow(0, 1, 1).abs().sum().item());
  assert.ok(err(pc) < err(pt));
});

test('observers on hand-made data: min-max, percentile (ignores a rare outlier), MSE (clips outliers, keeps a uniform range)', () => {
  // 1,000,000 values uniform on [0, 10) and one outlier at 1000: at full range the rounding error of the
  // million (1e6 * (1000/255)^2 / 12 = 1.3e6) exceeds clipping the outlier ((1000 - 10)^2 = 9.8e5).
  const values = Array.from({ length: 1000000 }, (_, i) => (i / 1000000) * 10);
  values.push(1000);
  const h = histogramOf(values, 2048);
  assert.equal(h.lo, 0);
  assert.equal(h.hi, 1000);
  assert.equal(h.zeros, 1); // the single exact 0 is counted apart
  assert.equal(h.counts.reduce((a, b) => a + b, 0), 1000000);
  const [plo, phi] = percentileRange(h, 99.99);
  assert.equal(plo, 0);
  assert.ok(phi > 9.5 && phi < 10.5, `percentile hi ${phi}`);
  const [mlo, mhi] = mseRange(h);
  assert.equal(mlo, 0);
  assert.ok(mhi < 600, `mse hi ${mhi} should clip the outlier`);
  // with 10,000 values the outlier costs more clipped than rounded: the full range is kept
  const few = histogramOf([...values.filter((_, i) => i % 100 === 0), 1000], 2048);
  assert.equal(mseRange(few)[1], 1000);
  // without the outlier, a uniform distribution keeps (almost) its full range under MSE
  const u = histogramOf(values.slice(0, 1000000), 2048);
  const [, uhi] = mseRange(u);
  assert.ok(uhi >= 9, `mse hi ${uhi}`);
  // quantiles: exact on a symmetric set, zeros as a point mass
  const sym = histogramOf([-2, -1, 0, 0, 0, 0, 1, 2], 4);
  assert.equal(histogramQuantile(sym, 0.5), 0);
  assert.ok(histogramQuantile(sym, 1) === 2);
  const [slo, shi] = percentileRange(histogramOf(Array.from({ length: 2001 }, (_, i) => i - 1000), 2000), 99);
  assert.ok(close(slo, -980, 0.01) && close(shi, 980, 0.01), `${slo}, ${shi}`);
  assert.throws(() => percentileRange(h, 30), /percentile must be in/);
});

test('ActivationObserver on tensors: the same min/max and histogram as by hand, zeros apart (post-ReLU data)', () => {
  torch.manualSeed(5);
  const a = torch.randn([4, 3, 5, 5]).relu();
  const b = torch.randn([2, 3, 5, 5]).mul(3).relu();
  const o = new ActivationObserver(64);
  o.observeRange(a);
  o.observeRange(b);
  o.observeHistogram(a);
  o.observeHistogram(b);
  const all = [...a.toArray(), ...b.toArray()];
  assert.equal(o.min, 0);
  assert.ok(close(o.max, Math.max(...all)));
  const byHand = histogramOf(all, 64, o.min, o.max);
  assert.equal(o.hist!.zeros, byHand.zeros);
  assert.ok(o.hist!.zeros > 100);
  assert.deepEqual([...o.hist!.counts], [...byHand.counts]);
  assert.deepEqual(o.range('minmax'), [0, o.max]);
  const [, phi] = o.range('percentile', { percentile: 99 });
  assert.ok(phi < o.max && phi > 0);
  const q = o.qparams('minmax');
  assert.equal(q.zeroPoint, 0);
  assert.ok(close(q.scale, o.max / 255));
  assert.throws(() => new ActivationObserver().range('minmax'), /no calibration data/);
});

/** A tiny target model whose BN running statistics come from data (as after training), deployed. */
function tinyDeployed(seed = 0) {
  torch.manualSeed(seed);
  const m = new RepOptVGG({ numBlocks: [1, 1, 1, 1], widthMultiplier: [0.125, 0.125, 0.125, 0.125], mode: 'target', numClasses: 4, inChannels: 1, strides: [1, 1, 2, 2, 2] });
  const x = torch.randn([16, 1, 12, 12]);
  torch.noGrad(() => torch.tidy(() => {
    for (let i = 0; i < 40; i++) m.forward(x);
  }));
  m.eval();
  x.dispose();
  const d = deployVGG(m);
  m.dispose();
  return d;
}

test('calibration on a tiny set: every site observed; min-max equals the activations; INT8 close to FP32; policies', () => {
  const d = tinyDeployed(1);
  torch.manualSeed(2);
  const batches = [torch.randn([6, 1, 12, 12]), torch.randn([6, 1, 12, 12])];
  const obs = calibrate(d, batches);
  assert.deepEqual([...obs.keys()], ['input', 'stage0', 'stage1.0', 'stage2.0', 'stage3.0', 'stage4.0', 'pool']);
  const inMax = Math.max(...batches.map((b) => b.max().item()));
  assert.ok(close(obs.get('input')!.max, inMax));
  assert.ok(obs.get('stage0')!.min >= 0); // after ReLU
  const stem = torch.noGrad(() => Math.max(...batches.map((b) => d.stage0.forward(b).max().item())));
  assert.ok(close(obs.get('stage0')!.max, stem, 1e-5));

  const all = { perChannel: true, quantizeFirst: true, quantizeLast: true };
  const inner = { perChannel: true, quantizeFirst: false, quantizeLast: false };
  assert.deepEqual(activationSites(d, inner), ['stage0', 'stage1.0', 'stage2.0', 'stage3.0', 'stage4.0']);
  assert.deepEqual(quantizedLayers(d, inner), ['stage1.0.conv', 'stage2.0.conv', 'stage3.0.conv', 'stage4.0.conv']);
  assert.deepEqual(quantizedLayers(d, all), ['stage0.conv', 'stage1.0.conv', 'stage2.0.conv', 'stage3.0.conv', 'stage4.0.conv', 'linear']);
  const x = torch.randn([8, 1, 12, 12]);
  const fp = torch.noGrad(() => d.forward(x));
  for (const kind of ['minmax', 'percentile', 'mse'] as const) {
    for (const policy of [all, inner]) {
      const q = quantizeModel(d, obs, kind, policy);
      assert.equal(q.act.size, activationSites(d, policy).length);
      const y = torch.noGrad(() => q.forward(x));
      const rel = y.sub(fp).abs().max().item() / fp.abs().max().item();
      assert.ok(rel > 0 && rel < 0.25, `${kind}: INT8 vs FP32 ${rel}`);
    }
  }
  d.dispose();
});

test('QAT: gradients flow through fake quant to every weight and bias (STE); a few steps lower the loss', () => {
  const d = tinyDeployed(3);
  torch.manualSeed(4);
  const x = torch.randn([16, 1, 12, 12]);
  const y = torch.randint(0, 4, [16]);
  const q = quantizeModel(d, calibrate(d, [x]), 'minmax');
  q.train();
  const loss = torch.tidy(() => {
    const l = torch.F.crossEntropy(q.forward(x), y);
    l.backward();
    return l.item();
  });
  assert.ok(Number.isFinite(loss));
  for (const [name, p] of d.namedParameters()) {
    const g = p.grad;
    assert.ok(g, `${name} has no gradient`);
    assert.ok(Number.isFinite(g!.abs().sum().item()), `${name}: non-finite gradient`);
    if (name.endsWith('weight')) assert.ok(g!.abs().sum().item() > 0, `${name}: zero gradient`);
  }
  d.zeroGrad();
  const opt = qatOptimizer(q, 0.1);
  const losses: number[] = [];
  for (let i = 0; i < 15; i++) losses.push(qatStep(q, opt, x, y));
  assert.ok(losses[losses.length - 1] < losses[0] * 0.5, `loss ${losses[0]} -> ${losses[losses.length - 1]}`);
  opt.dispose();
  d.dispose();
});

test('weight statistics (Table 11): std overall, at the centre tap, at the surrounding taps; int8 errors', () => {
  // one output channel, one input channel: centre 1, around alternating +-0.1
  const k = torch.tensor([[[[0.1, -0.1, 0.1], [-0.1, 1, -0.1], [0.1, -0.1, 0.1]]]]);
  const k2 = torch.cat([k, k.mul(0.5)], 0); // [2, 1, 3, 3]
  const [s] = weightStats([['stage1.0', k2]]);
  const vals = k2.toArray();
  const mean = vals.reduce((a, b) => a + b, 0) / vals.length;
  const std = Math.sqrt(vals.reduce((a, b) => a + (b - mean) ** 2, 0) / (vals.length - 1));
  assert.ok(close(s.std, std, 1e-6));
  assert.ok(close(s.centreStd!, Math.SQRT1_2 * 0.5, 1e-6)); // std of [1, 0.5] (unbiased)
  const around = [0.1, -0.1, 0.1, -0.1, -0.1, 0.1, -0.1, 0.1, 0.05, -0.05, 0.05, -0.05, -0.05, 0.05, -0.05, 0.05];
  const am = around.reduce((a, b) => a + b, 0) / around.length;
  assert.ok(close(s.surroundStd!, Math.sqrt(around.reduce((a, b) => a + (b - am) ** 2, 0) / (around.length - 1)), 1e-6));
  assert.equal(s.maxAbs, 1);
  assert.ok(s.errPerChannel <= s.errPerTensor);
  assert.deepEqual(s.shape, [2, 1, 3, 3]);
  const [lin] = weightStats([['linear', torch.tensor([[1, -1], [0.5, 0.25]])]]);
  assert.equal(lin.centreStd, null);
});
