/**
 * The fused CPU kernels (native/kernels.cc, issue 13): training-mode BatchNorm [+ ReLU] and the SGD
 * step with Grad Mults. Each must give libtorch's own numbers to the last bit (BN: forward, running
 * statistics, gradients of input, weight and bias; SGD: parameters and momentum buffers), under each
 * of libtorch's CPU kernel sets (ATEN_CPU_CAPABILITY), and against PyTorch itself; everything outside
 * what they cover must go to ATen's ops unchanged.
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import * as torch from '../src/torch/index.js';
import { F } from '../src/torch/index.js';
import * as nn from '../src/nn/index.js';
import { SGD } from '../src/optim/index.js';
import { RepSGD } from '../src/repopt/index.js';
import { runPython, toJson, type JsonTensor } from './helpers/python.js';
import { cpuCapabilities } from './helpers/cpu.js';

type Tensor = torch.Tensor;

interface Case {
  shape: number[];
  relu: boolean;
  affine: boolean;
  running: boolean;
}

// Planes shorter than a vector (2x2), with a vector tail (7x5), long (28x28), one channel-plane per
// thread task or many, with and without the affine parameters and the running statistics.
const CASES: Case[] = [
  { shape: [6, 16, 28, 28], relu: true, affine: true, running: true },
  { shape: [6, 16, 28, 28], relu: false, affine: true, running: true },
  { shape: [8, 96, 2, 2], relu: true, affine: true, running: true },
  { shape: [5, 3, 7, 5], relu: false, affine: false, running: true },
  { shape: [4, 6, 9, 9], relu: true, affine: true, running: false },
  { shape: [3, 5, 4, 17], relu: true, affine: false, running: false },
];

interface Result {
  y: number[];
  dx: number[];
  dw: number[] | null;
  db: number[] | null;
  rm: number[] | null;
  rv: number[] | null;
}

/** One forward + backward of BN [+ ReLU] in training on fixed inputs (seeded), fused or ATen. */
function runCase(c: Case, fused: boolean): Result {
  const before = torch.getFusedKernels();
  torch.setFusedKernels(fused);
  try {
    return torch.tidy(() => {
      const g = new torch.Generator(7);
      const C = c.shape[1];
      // an offset mean and a spread, so the centred sums and the ReLU mask both matter
      const x = torch.randn(c.shape, { generator: g }).mul(2.5).add(0.75).requiresGrad_(true);
      const w = c.affine ? torch.rand([C], { generator: g }).add(0.5).requiresGrad_(true) : null;
      const b = c.affine ? torch.randn([C], { generator: g }).requiresGrad_(true) : null;
      const rm = c.running ? torch.randn([C], { generator: g }) : null;
      const rv = c.running ? torch.rand([C], { generator: g }).add(0.5) : null;
      const dy = torch.randn(c.shape, { generator: g });
      const opts = { weight: w, bias: b, training: true, momentum: 0.1, eps: 1e-5 };
      const y = c.relu ? F.batchNormRelu(x, rm, rv, opts) : F.batchNorm(x, rm, rv, opts);
      y.backward(dy);
      return {
        y: y.toArray(),
        dx: x.grad!.toArray(),
        dw: w ? w.grad!.toArray() : null,
        db: b ? b.grad!.toArray() : null,
        rm: rm ? rm.toArray() : null,
        rv: rv ? rv.toArray() : null,
      };
    });
  } finally {
    torch.setFusedKernels(before);
  }
}

/** The positions where two arrays differ in any bit (NaN never occurs here). */
function mismatches(a: number[] | null, b: number[] | null): number {
  assert.equal(a === null, b === null);
  if (a === null || b === null) return 0;
  assert.equal(a.length, b.length);
  let n = 0;
  for (let i = 0; i < a.length; i++) if (!Object.is(a[i], b[i])) n++;
  return n;
}

function assertSame(ours: Result, ref: Result, what: string): void {
  for (const k of ['y', 'dx', 'dw', 'db', 'rm', 'rv'] as const) {
    assert.equal(mismatches(ours[k], ref[k]), 0, `${what}: ${k} differs from libtorch's in ${mismatches(ours[k], ref[k])} element(s)`);
  }
}

const caseName = (c: Case) => `${c.shape.join('x')}${c.relu ? ' +ReLU' : ''}${c.affine ? '' : ' no affine'}${c.running ? '' : ' no running stats'}`;

test('fused BatchNorm [+ ReLU] in training = ATen batch_norm [+ relu] bit for bit: output, running stats, d input, d weight, d bias', (ctx) => {
  for (const c of CASES) assertSame(runCase(c, true), runCase(c, false), caseName(c));
  const model = torch.fusedKernelModel();
  ctx.diagnostic(`libtorch kernels reproduced: ${JSON.stringify(model)}`);
  if (model === null) return; // another libtorch: the kernels stand down, ATen ran both sides
  // and the fused path really ran: its graph node, not ATen's
  torch.tidy(() => {
    const x = torch.randn([2, 3, 4, 4]).requiresGrad_(true);
    const y = F.batchNormRelu(x, null, null, { training: true });
    assert.ok(y.gradFnName?.includes('BatchNormReluTrainBackward'), `grad_fn ${y.gradFnName}`);
  });
});

// libtorch picks its kernels (and so its order of float operations) by CPU; ATEN_CPU_CAPABILITY
// selects them, and the fused kernels must follow: their instruction set (fusedKernelModel().isa)
// is libtorch's, so forcing avx2 or default on a bigger CPU runs, and tests, those variants of ours
// too. A child process per setting; settings the CPU lacks are skipped (libtorch would die there).
const CHILD = `
import * as torch from ${JSON.stringify(new URL('../src/torch/index.js', import.meta.url).href)};
const { F } = torch;
const out = [];
for (const shape of [[6, 16, 28, 28], [8, 96, 2, 2], [5, 3, 7, 5]]) for (const relu of [true, false]) {
  const r = [];
  for (const fused of [true, false]) {
    torch.setFusedKernels(fused);
    r.push(torch.tidy(() => {
      const g = new torch.Generator(3);
      const x = torch.randn(shape, { generator: g }).mul(2).add(0.5).requiresGrad_(true);
      const w = torch.rand([shape[1]], { generator: g }).add(0.5).requiresGrad_(true);
      const b = torch.randn([shape[1]], { generator: g }).requiresGrad_(true);
      const rm = torch.zeros([shape[1]]), rv = torch.ones([shape[1]]);
      const o = { weight: w, bias: b, training: true };
      const y = relu ? F.batchNormRelu(x, rm, rv, o) : F.batchNorm(x, rm, rv, o);
      y.backward(torch.randn(shape, { generator: g }));
      return [y, x.grad, w.grad, b.grad, rm, rv].map((t) => t.toArray());
    }));
  }
  let diff = 0;
  r[0].forEach((a, k) => a.forEach((v, i) => { if (!Object.is(v, r[1][k][i])) diff++; }));
  out.push(diff);
}
// the tiny-output convolution's weight gradient: its first backward checks the chain against
// libtorch, the second takes the chain kernel where that check passed
const convGrads = (fused, times) => {
  torch.setFusedKernels(fused);
  return torch.tidy(() => {
    let gw;
    for (let t = 0; t < times; t++) {
      const g = new torch.Generator(5);
      const x = torch.randn([8, 64, 4, 4], { generator: g });
      const w = torch.randn([128, 64, 3, 3], { generator: g }).requiresGrad_(true);
      F.conv2d(x, w, null, { stride: 2, padding: 1 }).backward(torch.randn([8, 128, 2, 2], { generator: g }));
      gw = w.grad.toArray();
    }
    return gw;
  });
};
const chained = convGrads(true, 2), reference = convGrads(false, 1);
out.push(chained.filter((v, i) => !Object.is(v, reference[i])).length);
console.log(JSON.stringify({ isa: torch.fusedKernelModel()?.isa ?? null, diffs: out, conv: torch.convSmallOutputProblems() }));
`;

/**
 * Runs a module script in a child process under each of libtorch's CPU kernel sets, as subtests of
 * `t`; a set this CPU lacks is a skipped subtest that says so. `check` gets the child's last output line, parsed.
 */
async function underEachCapability(t: TestContext, script: string, check: (cap: string, out: unknown) => void): Promise<void> {
  const caps = cpuCapabilities();
  for (const cap of ['default', 'avx2', 'avx512']) {
    const skip = caps.has(cap) ? false : `this CPU lacks ${cap === 'avx512' ? 'AVX-512 (F, BW, VL, DQ)' : 'AVX2 with FMA'}: ATEN_CPU_CAPABILITY=${cap} cannot run here`;
    await t.test(`ATEN_CPU_CAPABILITY=${cap}`, { skip }, () => {
      const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], {
        env: { ...process.env, ATEN_CPU_CAPABILITY: cap },
        encoding: 'utf8',
        cwd: fileURLToPath(new URL('.', import.meta.url)),
      });
      assert.equal(r.status, 0, `child exit ${r.status} signal ${r.signal}: ${r.stderr}`);
      check(cap, JSON.parse(r.stdout.trim().split('\n').pop()!));
    });
  }
}

test('bit for bit under every libtorch CPU kernel set this CPU runs (default, avx2, avx512), each with our own variant of that instruction set', async (t) => {
  await underEachCapability(t, CHILD, (cap, out) => {
    const { isa, diffs, conv } = out as { isa: string | null; diffs: number[]; conv: { chain: number; libtorch: number } };
    if (isa !== null) assert.equal(isa, cap, 'our kernels run the instruction set libtorch runs');
    assert.deepEqual(diffs, diffs.map(() => 0), `ATEN_CPU_CAPABILITY=${cap}: elements differing per case (6 BatchNorm cases, then the conv) ${diffs}`);
    t.diagnostic(`${cap}: conv problems checked ${JSON.stringify(conv)}`);
  });
});

test('fused BatchNorm + ReLU = PyTorch relu(batch_norm(...)) bit for bit, forward and backward', () => {
  torch.tidy(() => {
    const g = new torch.Generator(11);
    const shape = [4, 8, 10, 10];
    const x = torch.randn(shape, { generator: g }).mul(3).sub(1);
    const w = torch.rand([8], { generator: g }).add(0.5);
    const b = torch.randn([8], { generator: g });
    const rm = torch.randn([8], { generator: g });
    const rv = torch.rand([8], { generator: g }).add(1);
    const dy = torch.randn(shape, { generator: g });
    const ref = runPython<Record<string, JsonTensor>>(
      `
x = T(IN['x'], True); w = T(IN['w'], True); b = T(IN['b'], True); rm = T(IN['rm']); rv = T(IN['rv'])
y = torch.relu(torch.nn.functional.batch_norm(x, rm, rv, w, b, True, 0.1, 1e-5))
y.backward(T(IN['dy']))
OUT = {'y': y, 'dx': x.grad, 'dw': w.grad, 'db': b.grad, 'rm': rm, 'rv': rv}
`,
      { x: toJson(x), w: toJson(w), b: toJson(b), rm: toJson(rm), rv: toJson(rv), dy: toJson(dy) },
    );
    const xs = x.clone().requiresGrad_(true);
    const ws = w.clone().requiresGrad_(true);
    const bs = b.clone().requiresGrad_(true);
    const y = F.batchNormRelu(xs, rm, rv, { weight: ws, bias: bs, training: true });
    y.backward(dy);
    const ours: Record<string, Tensor> = { y, dx: xs.grad!, dw: ws.grad!, db: bs.grad!, rm, rv };
    for (const k of Object.keys(ours)) {
      const a = ours[k].toArray();
      assert.equal(mismatches(a, ref[k].data), 0, `${k}: ${mismatches(a, ref[k].data)} element(s) differ from PyTorch`);
    }
  });
});

test('outside the kernel (channels-last, float64, 1x1 planes, eval) ATen runs, with its own errors; a bad call is an Error', () => {
  torch.tidy(() => {
    const opts = (C: number, dtype: torch.DType = 'float32') => ({ weight: torch.ones([C], { dtype }), bias: torch.zeros([C], { dtype }), training: true });
    const cl = torch.randn([2, 3, 4, 4]).toChannelsLast().requiresGrad_(true);
    assert.ok(!F.batchNormRelu(cl, null, null, opts(3)).gradFnName?.includes('Train'), 'channels-last goes to ATen');
    const f64 = torch.randn([2, 3, 4, 4], { dtype: 'float64' }).requiresGrad_(true);
    assert.ok(!F.batchNorm(f64, null, null, opts(3, 'float64')).gradFnName?.includes('Train'), 'float64 goes to ATen');
    const pix = torch.randn([5, 3, 1, 1]).requiresGrad_(true);
    assert.ok(!F.batchNorm(pix, null, null, opts(3)).gradFnName?.includes('Train'), '1x1 planes go to ATen');
    // a weight of the wrong size: ATen's message, as a JS Error, the process alive
    assert.throws(() => F.batchNorm(torch.randn([2, 3, 4, 4]), null, null, { weight: torch.ones([4]), training: true }), /size|shape|4|3/);
    // one value per channel in training: ATen's error
    assert.throws(() => F.batchNorm(torch.randn([1, 3, 1, 1]), null, null, { training: true }), /more than 1 value per channel/);
  });
});

test('the fused output saved for backward is guarded: modifying it in place makes backward an error, not wrong gradients', () => {
  torch.tidy(() => {
    const x = torch.randn([2, 3, 4, 4]).requiresGrad_(true);
    const y = F.batchNormRelu(x, null, null, { training: true });
    torch.noGrad(() => y.mul_(2));
    assert.throws(() => y.sum().backward(), /modified by an inplace operation/);
  });
});

test('no grad: statistics still update, no graph; BatchNorm2d.forwardRelu and Sequential(BN, ReLU) fuse and equal forward + relu', () => {
  torch.tidy(() => {
    const x = torch.randn([4, 3, 5, 5]).mul(2).add(1);
    const bn = new nn.BatchNorm2d(3);
    const y = torch.noGrad(() => bn.forwardRelu(x));
    assert.equal(y.requiresGrad, false);
    assert.equal(bn.numBatchesTracked!.item(), 1);
    assert.ok(bn.runningMean!.abs().sum().item() > 0, 'running mean moved');
    // a second module with the same state: forward then ReLU through ATen
    const ref = new nn.BatchNorm2d(3);
    torch.setFusedKernels(false);
    try {
      const y2 = torch.noGrad(() => F.relu(ref.forward(x)));
      assert.equal(mismatches(y.toArray(), y2.toArray()), 0);
      assert.equal(mismatches(bn.runningVar!.toArray(), ref.runningVar!.toArray()), 0);
    } finally {
      torch.setFusedKernels(true);
    }
    const seq = new nn.Sequential(new nn.Conv2d(3, 4, 3, { padding: 1 }), new nn.BatchNorm2d(4), new nn.ReLU());
    const out = seq.forward(x.requiresGrad_(true));
    if (torch.fusedKernelModel()) assert.ok(out.gradFnName?.includes('BatchNormReluTrainBackward'), `Sequential fused: ${out.gradFnName}`);
  });
});

// ------------------------------------------------------------------ SGD

interface SgdCase {
  name: string;
  hyper: { lr: number; momentum?: number; dampening?: number; nesterov?: boolean; weightDecay?: number };
  mults: boolean;
}

const SGD_CASES: SgdCase[] = [
  { name: 'plain', hyper: { lr: 0.1 }, mults: false },
  { name: 'momentum + wd (the trainer)', hyper: { lr: 0.05, momentum: 0.9, weightDecay: 1e-4 }, mults: false },
  { name: 'Grad Mults + momentum + wd (RepSGD)', hyper: { lr: 0.05, momentum: 0.9, weightDecay: 1e-4 }, mults: true },
  { name: 'Grad Mults + dampening', hyper: { lr: 0.02, momentum: 0.8, dampening: 0.1, weightDecay: 5e-3 }, mults: true },
  { name: 'nesterov + Grad Mults', hyper: { lr: 0.05, momentum: 0.9, nesterov: true, weightDecay: 4e-5 }, mults: true },
  { name: 'Grad Mults, no momentum, no wd', hyper: { lr: 0.3 }, mults: true },
];

// a conv kernel (one channels-last), a vector, a matrix whose size is no multiple of a vector
const SGD_SHAPES = [[6, 4, 3, 3], [6, 4, 3, 3], [6], [7, 5]];

/** Five steps on fixed float32 parameters, gradients and mults; the parameters and buffers after them. */
function runSgd(c: SgdCase, fused: boolean): number[][] {
  const before = torch.getFusedKernels();
  torch.setFusedKernels(fused);
  try {
    return torch.tidy(() => {
      const g = new torch.Generator(5);
      const ps = SGD_SHAPES.map((s, i) => {
        const p = torch.randn(s, { generator: g });
        return (i === 1 ? p.toChannelsLast() : p).requiresGrad_(true);
      });
      const named = ps.map((p, i): [string, Tensor] => [`p${i}`, p]);
      const opt = c.mults
        ? new RepSGD(named, c.hyper, new Map(named.map(([n, p]) => [n, torch.rand(p.shape, { generator: g }).mul(3)])))
        : new SGD(named, c.hyper);
      for (let t = 0; t < 5; t++) {
        // gradients in their parameter's layout, as autograd makes them
        ps.forEach((p, i) => {
          const grad = torch.randn(p.shape, { generator: g });
          p.grad = i === 1 ? grad.toChannelsLast() : grad;
        });
        opt.step();
      }
      const bufs = [...opt.stateDict().state.values()].map((s) => s.get('momentum_buffer')!.toArray());
      const out = [...ps.map((p) => p.toArray()), ...bufs];
      opt.dispose();
      return out;
    });
  } finally {
    torch.setFusedKernels(before);
  }
}

test('fused SGD step = the composed foreach step bit for bit: parameters and momentum buffers, with and without Grad Mults', () => {
  for (const c of SGD_CASES) {
    const fused = runSgd(c, true);
    const composed = runSgd(c, false);
    assert.equal(fused.length, composed.length, `${c.name}: state tensors`);
    fused.forEach((a, k) => assert.equal(mismatches(a, composed[k]), 0, `${c.name}: tensor ${k} differs in ${mismatches(a, composed[k])} element(s)`));
  }
});

test('fused SGD = PyTorch torch.optim.SGD (float32) bit for bit over 5 steps; float64 parameters take the composed path', () => {
  torch.tidy(() => {
    const g = new torch.Generator(9);
    const ps = [torch.randn([8, 4, 3, 3], { generator: g }), torch.randn([8], { generator: g })];
    const grads = Array.from({ length: 5 }, () => ps.map((p) => torch.randn(p.shape, { generator: g })));
    const ref = runPython<JsonTensor[]>(
      `
ps = [T(p).clone().requires_grad_(True) for p in IN['ps']]
opt = torch.optim.SGD(ps, lr=0.05, momentum=0.9, weight_decay=1e-4, nesterov=True)
for step in IN['grads']:
    for p, g in zip(ps, step):
        p.grad = T(g)
    opt.step()
OUT = ps
`,
      { ps: ps.map(toJson), grads: grads.map((s) => s.map(toJson)) },
    );
    const mine = ps.map((p) => p.clone().requiresGrad_(true));
    const opt = new SGD(mine.map((p, i): [string, Tensor] => [`p${i}`, p]), { lr: 0.05, momentum: 0.9, weightDecay: 1e-4, nesterov: true });
    for (const step of grads) {
      mine.forEach((p, i) => (p.grad = step[i].clone()));
      opt.step();
    }
    mine.forEach((p, i) => assert.equal(mismatches(p.toArray(), ref[i].data), 0, `param ${i} differs from PyTorch`));
    opt.dispose();
    // float64: not the kernel's, still right (the composed ops)
    const p64 = torch.ones([3], { dtype: 'float64' }).requiresGrad_(true);
    const o64 = new SGD([['w', p64]], { lr: 0.5, momentum: 0.9 });
    p64.grad = torch.ones([3], { dtype: 'float64' });
    o64.step();
    assert.deepEqual(p64.toArray(), [0.5, 0.5, 0.5]);
    o64.dispose();
  });
});

const SGD_CHILD = `
import * as torch from ${JSON.stringify(new URL('../src/torch/index.js', import.meta.url).href)};
import { RepSGD } from ${JSON.stringify(new URL('../src/repopt/index.js', import.meta.url).href)};
const run = (fused) => {
  torch.setFusedKernels(fused);
  return torch.tidy(() => {
    const g = new torch.Generator(4);
    const p = torch.randn([37, 5], { generator: g }).requiresGrad_(true);
    const opt = new RepSGD([['w', p]], { lr: 0.05, momentum: 0.9, nesterov: true, weightDecay: 1e-3 }, new Map([['w', torch.rand([37, 5], { generator: g })]]));
    for (let t = 0; t < 3; t++) { p.grad = torch.randn([37, 5], { generator: g }); opt.step(); }
    return p.toArray();
  });
};
const a = run(true), b = run(false);
console.log(JSON.stringify(a.filter((v, i) => !Object.is(v, b[i])).length));
`;

test('fused SGD bit for bit under every libtorch CPU kernel set this CPU runs (fused multiply-adds or not)', async (t) => {
  await underEachCapability(t, SGD_CHILD, (cap, out) => assert.equal(out, 0, `ATEN_CPU_CAPABILITY=${cap}: elements differing`));
});

test('a parameter saved by a live graph: the fused step bumps its version, so a later backward is an error as in PyTorch', () => {
  torch.tidy(() => {
    const w = torch.randn([4, 4]).requiresGrad_(true);
    const y = w.mul(w).sum(); // saves w
    const opt = new SGD([['w', w]], { lr: 0.1, momentum: 0.9 });
    w.grad = torch.onesLike(w);
    opt.step();
    assert.throws(() => y.backward(), /modified by an inplace operation/);
    opt.dispose();
  });
});

// ------------------------------------------------------------------ tiny-output convolutions

// [N, C, O, H, stride, kernel]: the bench model's last layer (192 -> 1280, 4x4 -> 2x2) at a small
// batch, 1x1 outputs, a 5x5 kernel, and 8 input channels (where oneDNN sums in another order)
const CONV_CASES = [
  [8, 192, 1280, 4, 2, 3],
  [16, 128, 128, 2, 2, 3],
  [6, 64, 96, 2, 1, 3],
  [4, 16, 24, 2, 1, 5],
  [7, 8, 64, 2, 1, 3],
];

/** conv2d forward and backward on fixed data; the backward seed picks the upstream gradient. */
function convRun([N, C, O, H, s, k]: number[], fused: boolean, seed: number) {
  const before = torch.getFusedKernels();
  torch.setFusedKernels(fused);
  try {
    return torch.tidy(() => {
      const g = new torch.Generator(1);
      const x = torch.randn([N, C, H, H], { generator: g }).requiresGrad_(true);
      const w = torch.randn([O, C, k, k], { generator: g }).mul(0.1).requiresGrad_(true);
      const y = F.conv2d(x, w, null, { stride: s, padding: Math.floor(k / 2) });
      y.backward(torch.randn(y.shape, { generator: new torch.Generator(seed) }));
      return { name: y.gradFnName, y: y.toArray(), gx: x.grad!.toArray(), gw: w.grad!.toArray() };
    });
  } finally {
    torch.setFusedKernels(before);
  }
}

test('tiny-output conv2d: forward, input and weight gradients = libtorch bit for bit, at 1 and 2 threads; checked per problem on its first backward', (ctx) => {
  const threads = torch.getNumThreads();
  try {
    for (const t of [1, 2]) {
      torch.setNumThreads(t);
      const before = torch.convSmallOutputProblems();
      for (const c of CONV_CASES) {
        const first = convRun(c, true, 5); // the first backward of this problem also runs libtorch's, to compare
        assert.equal(first.name, 'ConvSmallOutputBackward', `${c}: the addon's node`);
        const ours = convRun(c, true, 2);
        const ref = convRun(c, false, 2);
        assert.equal(ref.name, 'ConvolutionBackward0');
        for (const k of ['y', 'gx', 'gw'] as const) assert.equal(mismatches(ours[k], ref[k]), 0, `${c} at ${t} thread(s): ${k} differs in ${mismatches(ours[k], ref[k])}`);
      }
      const after = torch.convSmallOutputProblems();
      assert.equal(after.chain + after.libtorch - before.chain - before.libtorch, CONV_CASES.length, 'one verdict per problem');
      // Which problems take the chain depends on oneDNN's kernels for this CPU (here, an AVX-512
      // Xeon: all but the 8-channel one at 1 thread); the numbers above are libtorch's either way.
      ctx.diagnostic(`${t} thread(s): ${after.chain - before.chain} problems on the chain kernel, ${after.libtorch - before.libtorch} on libtorch's`);
    }
  } finally {
    torch.setNumThreads(threads);
  }
});

test('tiny-output conv2d weight gradient = PyTorch conv2d bit for bit (the bench layer 192 -> 1280, 2x2 output)', () => {
  const threads = torch.getNumThreads();
  torch.setNumThreads(1); // as the Python side
  try {
    torch.tidy(() => {
      const g = new torch.Generator(21);
      const x = torch.randn([8, 192, 4, 4], { generator: g });
      const w = torch.randn([1280, 192, 3, 3], { generator: g }).mul(0.05);
      const gy = torch.randn([8, 1280, 2, 2], { generator: g });
      const ref = runPython<JsonTensor>(
        `
w = T(IN['w'], True)
torch.nn.functional.conv2d(T(IN['x']), w, stride=2, padding=1).backward(T(IN['gy']))
OUT = w.grad
`,
        { x: toJson(x), w: toJson(w), gy: toJson(gy) },
      );
      let gw: number[] = [];
      for (let pass = 0; pass < 2; pass++) {
        const wl = w.clone().requiresGrad_(true);
        F.conv2d(x, wl, null, { stride: 2, padding: 1 }).backward(gy);
        gw = wl.grad!.toArray();
      }
      assert.equal(mismatches(gw, ref.data), 0, `${mismatches(gw, ref.data)} weight-gradient elements differ from PyTorch`);
    });
  } finally {
    torch.setNumThreads(threads);
  }
});

test('tiny-output conv2d is ordinary conv2d without grad, for a frozen weight, with a bias, or for larger outputs', () => {
  torch.tidy(() => {
    const x = torch.randn([2, 64, 4, 4]);
    const w = torch.randn([96, 64, 3, 3]).requiresGrad_(true);
    assert.equal(torch.noGrad(() => F.conv2d(x, w, null, { stride: 2, padding: 1 })).gradFnName, null);
    assert.equal(F.conv2d(x, torch.randn([96, 64, 3, 3]), null, { stride: 2, padding: 1 }).gradFnName, null);
    assert.equal(F.conv2d(x, w, torch.zeros([96]).requiresGrad_(true), { stride: 2, padding: 1 }).gradFnName, 'ConvolutionBackward0');
    assert.equal(F.conv2d(x, w, null, { padding: 1 }).gradFnName, 'ConvolutionBackward0'); // 16 output pixels
  });
});

test('end to end: `repopt bench` trains the bench model to the same loss, bit for bit, with the fused kernels on and off', () => {
  const cli = fileURLToPath(new URL('../src/cli/main.js', import.meta.url));
  const args = ['bench', '--json', '--image-size', '64', '--blocks', '1,2,2,1', '--widths', '0.5,0.5,0.5,1', '--strides', '2,2,2,2,2', '--classes', '10',
    '--mode', 'target', '--batch', '8', '--warmup', '1', '--steps', '3'];
  const loss = (fused: boolean) => {
    const r = spawnSync(process.execPath, [cli, ...args], { env: { ...process.env, REPOPT_FUSED_KERNELS: fused ? '1' : '0' }, encoding: 'utf8' });
    assert.equal(r.status, 0, r.stderr);
    const result = JSON.parse(r.stdout.trim().split('\n').pop()!) as { finalLoss: number; fusedKernels: boolean };
    assert.equal(result.fusedKernels, fused, 'the result says whether the fused kernels were on');
    return result.finalLoss;
  };
  const on = loss(true);
  assert.ok(Number.isFinite(on));
  assert.equal(on, loss(false));
});

test('higher derivatives through the fused nodes: backward with createGraph gives libtorch\'s differentiable gradients (BN + ReLU, tiny-output conv)', () => {
  const second = (fused: boolean) => {
    const before = torch.getFusedKernels();
    torch.setFusedKernels(fused);
    try {
      return torch.tidy(() => {
        const g = new torch.Generator(13);
        const x = torch.randn([4, 16, 4, 4], { generator: g }).requiresGrad_(true);
        const w = torch.randn([64, 16, 3, 3], { generator: g }).mul(0.1).requiresGrad_(true);
        const gamma = torch.rand([64], { generator: g }).add(0.5).requiresGrad_(true);
        const c = torch.randn([4, 64, 2, 2], { generator: g });
        const h = F.batchNormRelu(F.conv2d(x, w, null, { stride: 2, padding: 1 }), null, null, { weight: gamma, training: true });
        assert.equal(h.gradFnName, fused && torch.fusedKernelModel() ? 'BatchNormReluTrainBackward' : 'ReluBackward0');
        h.mul(c).sum().backward(undefined, { createGraph: true });
        const gx = x.grad!;
        assert.ok(gx.requiresGrad, 'the first-order gradient is differentiable');
        const penalty = gx.pow(2).sum().add(w.grad!.pow(2).sum());
        x.grad = null;
        w.grad = null;
        gamma.grad = null;
        penalty.backward();
        return [x.grad!.toArray(), w.grad!.toArray(), gamma.grad!.toArray()];
      });
    } finally {
      torch.setFusedKernels(before);
    }
  };
  second(true); // the tiny conv's first backward (its check) is behind us
  const ours = second(true);
  const ref = second(false);
  ours.forEach((a, k) => assert.equal(mismatches(a, ref[k]), 0, `second-order gradient ${k} differs in ${mismatches(a, ref[k])} element(s)`));
});
