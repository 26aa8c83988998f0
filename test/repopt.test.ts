/**
 * The method: every equivalence case of `repopt check-equivalency` (CSLA block
 * trained plainly vs one kernel trained with the Grad Mult), the Grad Mult and
 * Rule of Initialization on hand-computed values, and the public B1 check values.
 */
import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import * as torch from '../src/torch/index.js';
import { CASES, runCase, gradMult, fuseKernel, initKernel, normalizeSpec, type CslaSpec } from '../src/repopt/index.js';
import { loadPth, extractStateDict } from '../src/io/pth.js';
import { scaleFile } from './helpers/paths.js';

torch.setNumThreads(1); // tiny tensors: threads only add synchronisation cost

describe('equivalence cases (f32 and f64)', () => {
  for (const c of CASES) {
    test(c.name, () => {
      for (const dtype of ['float32', 'float64'] as const) {
        const r = runCase(c, dtype);
        if (c.expect === 'equivalent') {
          assert.ok(r.relL1 <= r.tolerance, `${dtype}: relative L1 ${r.relL1} > ${r.tolerance}`);
        } else {
          // Known-broken cases must really differ (otherwise the case shows nothing).
          assert.ok(r.relL1 > 1e-3, `${dtype}: expected a visible break, got ${r.relL1}`);
        }
      }
    });
  }
});

test('release settings reproduce the release\'s reported f32 differences (1.3e-6 SGD, 2.8e-6 AdamW) in magnitude', () => {
  const sgd = runCase(CASES.find((c) => c.name.startsWith('release settings: SGD'))!, 'float32');
  const adamw = runCase(CASES.find((c) => c.name.startsWith('release settings: AdamW'))!, 'float32');
  // "In magnitude": within 10x of the release's figures either way (float32 round-off of the same 50 steps;
  // measured here 1.5e-6 and 2.5e-6). Far below: the run was not float32; far above: the rule is off.
  assert.ok(sgd.relL1 > 1.3e-7 && sgd.relL1 < 1.3e-5, `SGD ${sgd.relL1}`);
  assert.ok(adamw.relL1 > 2.8e-7 && adamw.relL1 < 2.8e-5, `AdamW ${adamw.relL1}`);
});

const vggLike: CslaSpec = {
  inChannels: 2,
  outChannels: 2,
  kernel: 3,
  branches: [
    { kind: 'conv', kernel: 3, scale: [2, -3] },
    { kind: 'conv', kernel: 1, scale: [0.5, 4] },
    { kind: 'identity' },
  ],
};

test('Grad Mult by hand: SGD squares, AdamW |s| or signed, identity +1 on the diagonal centre', () => {
  const at = (m: torch.Tensor, o: number, i: number, y: number, x: number) => (m.toArray()[((o * 2 + i) * 3 + y) * 3 + x]);
  const sgd = gradMult(vggLike, 'sgd', { dtype: 'float64' });
  assert.deepEqual(sgd.shape, [2, 2, 3, 3]);
  assert.equal(at(sgd, 0, 0, 0, 0), 4);
  assert.equal(at(sgd, 0, 1, 1, 1), 4 + 0.25);
  assert.equal(at(sgd, 0, 0, 1, 1), 4 + 0.25 + 1);
  assert.equal(at(sgd, 1, 0, 1, 1), 9 + 16);
  assert.equal(at(sgd, 1, 1, 1, 1), 9 + 16 + 1);
  assert.equal(at(sgd, 1, 1, 2, 0), 9);
  const adam = gradMult(vggLike, 'adamw', { dtype: 'float64' });
  assert.equal(at(adam, 1, 1, 1, 1), 3 + 4 + 1);
  assert.equal(at(adam, 1, 0, 0, 1), 3);
  const signed = gradMult(vggLike, 'adamw', { dtype: 'float64', signed: true });
  assert.equal(at(signed, 1, 1, 1, 1), -3 + 4 + 1);
  assert.equal(at(signed, 1, 0, 0, 1), -3);
});

test('Grad Mult: asymmetric and depthwise branches, frozen identity adds nothing', () => {
  const ac = gradMult({ inChannels: 1, outChannels: 1, kernel: 3, branches: [{ kind: 'conv', kernel: 3, scale: 1 }, { kind: 'conv', kernel: [1, 3], scale: 2 }, { kind: 'conv', kernel: [3, 1], scale: 3 }] }, 'sgd', { dtype: 'float64' });
  assert.deepEqual(ac.toArray(), [1, 10, 1, 5, 14, 5, 1, 10, 1]);
  const dw = gradMult({ inChannels: 3, outChannels: 3, kernel: 3, groups: 3, branches: [{ kind: 'conv', kernel: 3, scale: [1, 2, 3] }, { kind: 'identity' }] }, 'sgd', { dtype: 'float64' });
  assert.deepEqual(dw.shape, [3, 1, 3, 3]);
  assert.deepEqual(dw.toArray().filter((_, i) => i % 9 === 4), [2, 5, 10]);
  const frozen = gradMult({ inChannels: 1, outChannels: 1, kernel: 3, branches: [{ kind: 'conv', kernel: 3, scale: 1 }, { kind: 'identity', trainable: false }] }, 'sgd', { dtype: 'float64' });
  assert.deepEqual(frozen.toArray(), [1, 1, 1, 1, 1, 1, 1, 1, 1]);
});

test('Rule of Initialization: fused kernel = s * W3 + t * pad(W1) + identity on the diagonal centre', () => {
  const w3 = torch.randn([2, 2, 3, 3], { dtype: 'float64' });
  const w1 = torch.randn([2, 2, 1, 1], { dtype: 'float64' });
  const fused = fuseKernel(vggLike, { convKernels: [w3, w1], identityWeights: [[0.7, 1.3]] });
  const W3 = w3.toArray();
  const W1 = w1.toArray();
  const F = fused.toArray();
  const s = [2, -3];
  const t = [0.5, 4];
  const id = [0.7, 1.3];
  for (let o = 0; o < 2; o++)
    for (let i = 0; i < 2; i++)
      for (let k = 0; k < 9; k++) {
        let want = s[o] * W3[(o * 2 + i) * 9 + k];
        if (k === 4) want += t[o] * W1[o * 2 + i] + (o === i ? id[o] : 0);
        assert.ok(Math.abs(F[(o * 2 + i) * 9 + k] - want) < 1e-12);
      }
});

test('Rule of Initialization from fresh kernels uses PyTorch\'s default conv init bound 1/sqrt(fan_in)', () => {
  torch.manualSeed(3);
  const spec: CslaSpec = { inChannels: 16, outChannels: 16, kernel: 3, branches: [{ kind: 'conv', kernel: 3, scale: 1 }] };
  const w = initKernel(spec, { dtype: 'float64' });
  const bound = 1 / Math.sqrt(16 * 9);
  const vals = w.toArray();
  assert.ok(vals.every((v) => Math.abs(v) <= bound));
  assert.ok(Math.max(...vals.map(Math.abs)) > 0.9 * bound);
});

test('bad block descriptions are clear errors', () => {
  assert.throws(() => normalizeSpec({ inChannels: 2, outChannels: 4, kernel: 3, branches: [{ kind: 'identity' }] }), /identity needs in == out/);
  assert.throws(() => normalizeSpec({ inChannels: 2, outChannels: 2, kernel: 3, branches: [{ kind: 'conv', kernel: 5, scale: 1 }] }), /does not pad to the target/);
  assert.throws(() => normalizeSpec({ inChannels: 2, outChannels: 2, kernel: 4, branches: [{ kind: 'conv', kernel: 3, scale: 1 }] }), /odd sizes/);
  assert.throws(() => normalizeSpec({ inChannels: 2, outChannels: 2, kernel: 3, branches: [{ kind: 'conv', kernel: 3, scale: [1, 2, 3] }] }), /3 scales for 2 output channels/);
  assert.throws(() => normalizeSpec({ inChannels: 2, outChannels: 2, kernel: 3, stride: 2, branches: [{ kind: 'identity' }] }), /stride 1/);
});

test('public check values: B1 scale file, block stage1.1 channel 0 Grad Mults (s^2 + t^2 + 1 by hand from the file s, t)', () => {
  const sd = extractStateDict(loadPth(scaleFile('RepOpt-VGG-B1-scales.pth')));
  const s = sd.get('stage1.1.scale_conv.weight')!;
  const t = sd.get('stage1.1.scale_1x1.weight')!;
  assert.ok(Math.abs(s.toArray()[0] - 1.11196005) < 1e-7);
  assert.ok(Math.abs(t.toArray()[0] - 1.53475583) < 1e-7);
  const c = s.shape[0];
  const spec: CslaSpec = {
    inChannels: c,
    outChannels: c,
    kernel: 3,
    branches: [{ kind: 'conv', kernel: 3, scale: s }, { kind: 'conv', kernel: 1, scale: t }, { kind: 'identity' }],
  };
  const idx = (o: number, i: number, y: number, x: number) => ((o * c + i) * 3 + y) * 3 + x;
  const sgd = gradMult(spec, 'sgd').narrow(0, 0, 1).toArray();
  assert.ok(Math.abs(sgd[idx(0, 0, 1, 1)] - 4.5919304) < 1e-6);
  assert.ok(Math.abs(sgd[idx(0, 1, 1, 1)] - 3.5919306) < 1e-6);
  assert.ok(Math.abs(sgd[idx(0, 0, 0, 0)] - 1.2364552) < 1e-6);
  const adam = gradMult(spec, 'adamw').narrow(0, 0, 1).toArray();
  assert.ok(Math.abs(adam[idx(0, 0, 1, 1)] - 3.6467156) < 1e-6);
  assert.ok(Math.abs(adam[idx(0, 1, 1, 1)] - 2.6467159) < 1e-6);
  assert.ok(Math.abs(adam[idx(0, 0, 0, 0)] - 1.1119601) < 1e-6);
  // The B1 scales hold negative entries: the signed AdamW rule differs there.
  let negatives = 0;
  for (const [k, v] of sd) if (/scale_(conv|1x1)/.test(k)) negatives += v.toArray().filter((x) => x < 0).length;
  assert.equal(negatives, 156);
});
