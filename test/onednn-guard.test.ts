/**
 * libtorch 1.13's oneDNN corrupts the heap on a channels-last 1x1 stride-2 convolution with few
 * input channels on CPUs without AVX-512 (issue 23; bench/onednn_1x1_sweep.py; Debian's PyTorch
 * alone aborts). F.conv2d routes those layers through NCHW copies: the tests here check that the
 * guarded layer computes exactly what the contiguous layer computes, that a channels-last model with
 * a 1x1 stride-2 stem branch trains (the case that crashed `repopt bench --channels-last`), and
 * that none of the failing shapes reaches oneDNN any more (children under MALLOC_CHECK_=3, where
 * glibc reports heap corruption at once: without the guard they died on this AVX2-only CPU).
 */
import { spawnSync } from 'node:child_process';
import { test } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import * as torch from '../src/torch/index.js';
import { F } from '../src/torch/index.js';
import { REPO_ROOT } from './helpers/paths.js';

const same = (a: number[], b: number[]) => a.length === b.length && a.every((v, i) => Object.is(v, b[i]));

test('a channels-last 1x1 stride-2 convolution with 3 input channels equals the contiguous one bit for bit, forward and both gradients', () => {
  torch.tidy(() => {
    for (const [cin, stride, padding] of [[3, 2, 0], [1, 2, 0], [7, [2, 1], 0], [3, 2, 1]] as [number, number | [number, number], number][]) {
      const g = new torch.Generator(7);
      const x0 = torch.randn([4, cin, 16, 16], { generator: g });
      const w0 = torch.randn([16, cin, 1, 1], { generator: g });
      const dy = torch.randn(F.conv2d(x0, w0, null, { stride, padding }).shape, { generator: g });
      const run = (layout: 'contiguous' | 'channelsLast') => {
        const x = x0.contiguous(layout).detach().requiresGrad_(true);
        const w = w0.contiguous(layout).detach().requiresGrad_(true);
        const y = F.conv2d(x, w, null, { stride, padding });
        y.backward(dy);
        return { y, gx: x.grad!, gw: w.grad! };
      };
      const plain = run('contiguous');
      const cl = run('channelsLast');
      const what = `cin ${cin}, stride ${stride}, padding ${padding}`;
      assert.ok(same(cl.y.toArray(), plain.y.toArray()), `${what}: output`);
      assert.ok(same(cl.gx.toArray(), plain.gx.toArray()), `${what}: input gradient`);
      assert.ok(same(cl.gw.toArray(), plain.gw.toArray()), `${what}: weight gradient`);
      // (with one input channel both layouts are the same strides: nothing to guard, nothing to keep)
      if (cin > 1) assert.ok(cl.y.isContiguous('channelsLast'), `${what}: the output stays channels-last, as libtorch's would`);
    }
  });
});

const CHILD = `
import * as torch from ${JSON.stringify(path.join(REPO_ROOT, 'dist/src/torch/index.js'))};
import { benchTrainStep } from ${JSON.stringify(path.join(REPO_ROOT, 'dist/src/train/bench.js'))};
torch.setNumThreads(1);
const { F } = torch;
// every shape of the sweep that corrupted the heap: 1x1, stride 2, 1..7 input channels, weight or input channels-last
for (let cin = 1; cin <= 8; cin++) for (const h of [8, 16]) for (const which of ['x', 'w', 'both']) {
  torch.tidy(() => {
    for (let r = 0; r < 3; r++) {
      let x = torch.randn([4, cin, h, h]), w = torch.randn([16, cin, 1, 1]);
      if (which !== 'w') x = x.contiguous('channelsLast');
      if (which !== 'x') w = w.contiguous('channelsLast');
      x.requiresGrad_(true); w.requiresGrad_(true);
      F.conv2d(x, w, null, { stride: 2 }).sum().backward();
    }
  });
}
// the product path that crashed: a channels-last RepOpt-VGG (3-channel input, 1x1 stride-2 stem branch) training in repvgg and hs modes
const losses = [];
for (const mode of ['repvgg', 'hs']) for (const channelsLast of [true, false]) {
  const r = benchTrainStep({ model: { blocks: [1, 1, 1, 1], widths: [0.25, 0.25, 0.25, 0.25], inChannels: 3, numClasses: 10 },
    imageSize: 16, mode, optimizer: 'repsgd', batch: 4, warmup: 1, steps: 3, threads: 1, channelsLast, seed: 0 });
  losses.push(r.finalLoss);
}
console.log(JSON.stringify(losses));
`;

test('none of the shapes that corrupted the heap reaches oneDNN: a child under MALLOC_CHECK_=3 runs them all, and channels-last RepOpt-VGG trains like the contiguous one', () => {
  const r = spawnSync(process.execPath, ['--input-type=module', '-e', CHILD], { encoding: 'utf8', env: { ...process.env, MALLOC_CHECK_: '3' }, timeout: 300_000 });
  assert.equal(r.status, 0, `child exit ${r.status} signal ${r.signal}: ${r.stderr}`);
  const [repvggCl, repvgg, hsCl, hs] = JSON.parse(r.stdout.trim().split('\n').pop()!) as number[];
  // channels-last and contiguous oneDNN kernels sum in other orders: equal within float rounding,
  // amplified over 4 steps (the loss of 4 memorised images is ~1e-3: 1e-3 relative plus 1e-6)
  for (const [a, b, mode] of [[repvggCl, repvgg, 'repvgg'], [hsCl, hs, 'hs']] as [number, number, string][]) {
    assert.ok(Number.isFinite(a) && Math.abs(a - b) <= 1e-3 * Math.abs(b) + 1e-6, `${mode}: channels-last loss ${a} vs contiguous ${b}`);
  }
});
