/**
 * Autograd through our tensor layer: gradients of a composed network function
 * against PyTorch on identical float64 inputs, finite differences, and the
 * graph/grad bookkeeping (retainGraph, detach, noGrad, grad setter).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as torch from '../src/torch/index.js';
import { F } from '../src/torch/index.js';
import * as nn from '../src/nn/index.js';
import { runPython, toJson, maxRelDiff, type JsonTensor } from './helpers/python.js';

type Tensor = torch.Tensor;

function assertClose(ours: Tensor, ref: Tensor | JsonTensor, tol: number, what: string): void {
  const refShape = ref instanceof torch.Tensor ? ref.shape : ref.shape;
  assert.deepEqual(ours.shape, refShape, `${what}: shape`);
  const d = maxRelDiff(ours, ref);
  assert.ok(d <= tol, `${what}: max rel diff ${d} > ${tol}`);
}

test('composed conv -> batch_norm(train) -> relu -> pool -> linear -> cross_entropy(label smoothing): loss and all grads = PyTorch (f64)', () => {
  const g = new torch.Generator(31);
  const r = (shape: number[], scale = 1) => torch.randn(shape, { generator: g, dtype: 'float64' }).mul(scale);
  // two configurations: plain 3x3 conv, and a strided, dilated grouped conv on channels-last input
  const configs = [
    { name: 'plain', x: [4, 3, 8, 8], w: [6, 3, 3, 3], stride: 1, padding: 1, dilation: 1, groups: 1, cl: false },
    { name: 'grouped', x: [3, 4, 9, 9], w: [6, 2, 3, 3], stride: 2, padding: 2, dilation: 2, groups: 2, cl: true },
  ];
  const cases = configs.map((c) => {
    const inputs = {
      x: r(c.x),
      convW: r(c.w, 0.3),
      convB: r([c.w[0]], 0.1),
      bnW: torch.rand([c.w[0]], { generator: g, dtype: 'float64' }).add(0.5),
      bnB: r([c.w[0]], 0.1),
      linW: r([5, c.w[0]], 0.5),
      linB: r([5], 0.1),
    };
    const target = torch.randint(0, 5, [c.x[0]], { generator: g });
    const rm = torch.zeros([c.w[0]], { dtype: 'float64' });
    const rv = torch.ones([c.w[0]], { dtype: 'float64' });
    for (const t of Object.values(inputs)) t.requiresGrad_(true);
    const { x, convW, convB, bnW, bnB, linW, linB } = inputs;
    const xin = c.cl ? x.toChannelsLast() : x;
    const h1 = F.conv2d(xin, convW, convB, { stride: c.stride, padding: c.padding, dilation: c.dilation, groups: c.groups });
    const h2 = F.batchNorm(h1, rm, rv, { weight: bnW, bias: bnB, training: true, momentum: 0.1, eps: 1e-5 });
    const h3 = F.relu(h2);
    const h4 = F.adaptiveAvgPool2d(h3, 1).flatten(1);
    const logits = F.linear(h4, linW, linB);
    const loss = F.crossEntropy(logits, target, { labelSmoothing: 0.1 });
    assert.equal(loss.requiresGrad, true);
    assert.equal(loss.isLeaf, false);
    assert.equal(x.isLeaf, true);
    loss.backward();
    const grads: Record<string, Tensor> = {};
    for (const [k, t] of Object.entries(inputs)) {
      const gr = t.grad;
      assert.ok(gr !== null, `${k} has a grad`);
      assert.equal(gr.dtype, 'float64');
      assert.deepEqual(gr.shape, t.shape);
      grads[k] = gr;
    }
    return { c, inputs, target, loss, grads, rm, rv };
  });

  const payload = cases.map(({ c, inputs, target }) => ({
    cfg: c,
    inputs: Object.fromEntries(Object.entries(inputs).map(([k, t]) => [k, toJson(t.detach())])),
    target: toJson(target),
  }));
  type Ref = { loss: JsonTensor; grads: Record<string, JsonTensor>; rm: JsonTensor; rv: JsonTensor };
  const refs = runPython<Ref[]>(
    `
F = torch.nn.functional
OUT = []
for case in IN:
    c = case['cfg']
    P = {k: T(v, grad=True) for k, v in case['inputs'].items()}
    target = T(case['target'])
    C = c['w'][0]
    rm = torch.zeros(C, dtype=torch.float64); rv = torch.ones(C, dtype=torch.float64)
    x = P['x'].contiguous(memory_format=torch.channels_last) if c['cl'] else P['x']
    h = F.conv2d(x, P['convW'], P['convB'], stride=c['stride'], padding=c['padding'], dilation=c['dilation'], groups=c['groups'])
    h = F.batch_norm(h, rm, rv, P['bnW'], P['bnB'], training=True, momentum=0.1, eps=1e-5)
    h = F.adaptive_avg_pool2d(F.relu(h), 1).flatten(1)
    loss = F.cross_entropy(F.linear(h, P['linW'], P['linB']), target, label_smoothing=0.1)
    loss.backward()
    OUT.append({'loss': loss, 'grads': {k: p.grad for k, p in P.items()}, 'rm': rm, 'rv': rv})
`,
    payload,
  );
  assert.equal(refs.length, cases.length);
  for (let i = 0; i < cases.length; i++) {
    const { c, loss, grads, rm, rv } = cases[i];
    const ref = refs[i];
    assert.ok(Math.abs(loss.item() - ref.loss.data[0]) <= 1e-10 * Math.abs(ref.loss.data[0]), `${c.name}: loss ${loss.item()} vs ${ref.loss.data[0]}`);
    for (const k of Object.keys(grads)) {
      // compare relative to the largest reference entry of each grad
      const refT = ref.grads[k];
      const scale = Math.max(...refT.data.map(Math.abs));
      const ours = grads[k].toArray();
      let diff = 0;
      for (let j = 0; j < ours.length; j++) diff = Math.max(diff, Math.abs(ours[j] - refT.data[j]));
      assert.deepEqual(grads[k].shape, refT.shape);
      if (k === 'convB') {
        // batch norm right after the conv removes any per-channel shift: the bias grad is zero up to rounding
        assert.ok(Math.max(...ours.map(Math.abs)) < 1e-12, `${c.name}/convB: ${ours}`);
        assert.ok(diff < 1e-12, `${c.name}/convB: differs from PyTorch by ${diff}`);
        continue;
      }
      assert.ok(scale > 1e-4, `${c.name}/${k}: non-trivial reference grad (${scale})`);
      assert.ok(diff <= 1e-10 * scale, `${c.name}/${k}: grad max diff ${diff} (scale ${scale})`);
    }
    assertClose(rm, ref.rm, 1e-12, `${c.name}: running mean`);
    assertClose(rv, ref.rv, 1e-12, `${c.name}: running var`);
  }
});

/** Central differences of a scalar f at every coordinate of x (f64). */
function numericGrad(f: (x: Tensor) => Tensor, x: Tensor, h = 1e-6): number[] {
  const base = Float64Array.from(x.toArray());
  const out: number[] = [];
  torch.noGrad(() => {
    for (let i = 0; i < base.length; i++) {
      const v = base[i];
      base[i] = v + h;
      const fp = torch.tidy(() => f(torch.fromTypedArray(base, x.shape)).item());
      base[i] = v - h;
      const fm = torch.tidy(() => f(torch.fromTypedArray(base, x.shape)).item());
      base[i] = v;
      out.push((fp - fm) / (2 * h));
    }
  });
  return out;
}

function checkFiniteDiff(name: string, f: (x: Tensor) => Tensor, x0: Tensor): void {
  torch.tidy(() => {
    const x = x0.clone().requiresGrad_(true);
    f(x).backward();
    const analytic = x.grad!.toArray();
    const numeric = numericGrad(f, x0);
    assert.equal(analytic.length, numeric.length);
    let worst = 0;
    for (let i = 0; i < analytic.length; i++) {
      const err = Math.abs(analytic[i] - numeric[i]) / Math.max(1, Math.abs(numeric[i]));
      worst = Math.max(worst, err);
    }
    assert.ok(worst < 1e-7, `${name}: finite-difference mismatch ${worst}`);
    // and the gradient is not trivially zero
    assert.ok(analytic.some((v) => Math.abs(v) > 1e-3), `${name}: gradient is non-trivial`);
  });
}

test('finite differences (f64) agree with autograd for several ops', () => {
  const g = new torch.Generator(5);
  const r = (shape: number[]) => torch.randn(shape, { generator: g, dtype: 'float64' });
  const w = r([4, 2, 3, 3]);
  const soft = F.softmax(r([4, 5]), 1);
  const bnW = r([3]);
  checkFiniteDiff('elementwise chain', (x) => x.sigmoid().mul(x.square().add(1).log()).add(x.tanh().pow(3)).sub(x.exp().div(x.abs().add(2))).sum(), r([3, 4]));
  checkFiniteDiff('reductions', (x) => x.var(1, { correction: 1 }).sqrt().sum().add(x.std(0).mean()).add(x.max().mul(2)), r([4, 5]));
  checkFiniteDiff('conv2d (strided, grouped)', (x) => F.conv2d(x, w, null, { stride: 2, padding: 1, groups: 2 }).tanh().sum(), r([2, 4, 5, 5]));
  const convIn = r([1, 2, 4, 4]);
  checkFiniteDiff('conv2d weight', (ww) => F.conv2d(convIn, ww, null, { padding: 1, dilation: 2 }).square().mean(), r([3, 2, 3, 3]));
  checkFiniteDiff('log_softmax + soft cross entropy', (x) => F.crossEntropy(x, soft, { labelSmoothing: 0.1 }).add(F.logSoftmax(x, 0).square().mean()), r([4, 5]));
  checkFiniteDiff('batch_norm (train)', (x) => F.batchNorm(x, null, null, { weight: bnW, training: true }).pow(3).sum(), r([4, 3, 2, 2]));
  checkFiniteDiff('matmul + linear', (x) => F.linear(x.matmul(x.T), x).sigmoid().sum(), r([3, 3]));
});

test('backward with retainGraph twice accumulates (2x); without it the second backward throws a JS Error', () => {
  torch.tidy(() => {
    const x = torch.tensor([1, -2, 3.5], { dtype: 'float64', requiresGrad: true });
    const y = x.mul(x).mul(3).sum();
    y.backward(undefined, { retainGraph: true });
    const g1 = x.grad!.toArray();
    assert.deepEqual(g1, [6, -12, 21]);
    y.backward();
    assert.deepEqual(x.grad!.toArray(), g1.map((v) => 2 * v));

    const z = torch.tensor([2, 3], { requiresGrad: true });
    const loss = z.pow(3).sum();
    loss.backward();
    assert.deepEqual(z.grad!.toArray(), [12, 27]);
    assert.throws(
      () => loss.backward(),
      (e: unknown) => e instanceof Error && /backward through the graph a second time/.test(e.message),
    );
    // the process survives and the grad from the first pass is intact
    assert.deepEqual(z.grad!.toArray(), [12, 27]);

    // a non-scalar output with an explicit gradient
    const v = torch.tensor([1, 2, 3], { requiresGrad: true });
    v.mul(2).backward(torch.tensor([1, 10, 100]));
    assert.deepEqual(v.grad!.toArray(), [2, 20, 200]);
    // a non-scalar output without one is an error
    assert.throws(() => v.mul(2).backward(), /grad can be implicitly created only for scalar outputs/);

    // createGraph: the grad itself is differentiable (second derivative of x^3 is 6x)
    const s = torch.tensor([1, -2], { dtype: 'float64', requiresGrad: true });
    s.pow(3).sum().backward(undefined, { createGraph: true });
    const gs = s.grad!;
    assert.deepEqual(gs.toArray(), [3, 12]);
    assert.equal(gs.requiresGrad, true);
    s.grad = null;
    gs.sum().backward();
    assert.deepEqual(s.grad!.toArray(), [6, -12]);
  });
});

test('detach stops the gradient and shares storage', () => {
  torch.tidy(() => {
    const x = torch.tensor([1, 2, 3], { dtype: 'float64', requiresGrad: true });
    const d = x.detach();
    assert.equal(d.requiresGrad, false);
    assert.equal(d.isLeaf, true);
    assert.equal(d.storageId(), x.storageId());
    assert.equal(d.mul(2).requiresGrad, false);
    // d(x * stop(x))/dx = stop(x) = x, not 2x
    x.mul(x.detach()).sum().backward();
    assert.deepEqual(x.grad!.toArray(), [1, 2, 3]);
    // a graph only through the detached branch cannot be differentiated
    assert.throws(() => x.detach().mul(2).sum().backward(), /does not require grad/);
  });
});

test('noGrad scope: results do not require grad; grad mode restored (also after throws); enableGrad inside', () => {
  torch.tidy(() => {
    const x = torch.ones([2], { requiresGrad: true });
    assert.equal(torch.isGradEnabled(), true);
    const y = torch.noGrad(() => {
      assert.equal(torch.isGradEnabled(), false);
      const inner = torch.enableGrad(() => {
        assert.equal(torch.isGradEnabled(), true);
        return x.mul(2);
      });
      assert.equal(inner.requiresGrad, true);
      assert.equal(torch.isGradEnabled(), false);
      return x.mul(2).add(1);
    });
    assert.equal(y.requiresGrad, false);
    assert.deepEqual(y.toArray(), [3, 3]);
    assert.equal(torch.isGradEnabled(), true);
    assert.equal(x.mul(2).requiresGrad, true);
    assert.throws(() => torch.noGrad(() => { throw new Error('boom'); }), /boom/);
    assert.equal(torch.isGradEnabled(), true);
    // in-place updates of a leaf are allowed under noGrad (the SGD step) and are not recorded
    torch.noGrad(() => x.add_(torch.ones([2]), -0.5));
    assert.deepEqual(x.toArray(), [0.5, 0.5]);
    assert.equal(x.isLeaf, true);
    assert.throws(() => x.add_(1), /leaf Variable that requires grad/);
  });
});

test('grad setter: null clears, a tensor replaces (and backward accumulates onto it)', () => {
  torch.tidy(() => {
    const x = torch.tensor([1, 2], { dtype: 'float64', requiresGrad: true });
    assert.equal(x.grad, null);
    x.mul(x).sum().backward();
    assert.deepEqual(x.grad!.toArray(), [2, 4]);
    x.grad = null;
    assert.equal(x.grad, null);
    x.mul(x).sum().backward();
    assert.deepEqual(x.grad!.toArray(), [2, 4], 'fresh grad after clearing, not accumulated');
    x.grad = torch.tensor([10, 20], { dtype: 'float64' });
    assert.deepEqual(x.grad!.toArray(), [10, 20]);
    x.mul(3).sum().backward();
    assert.deepEqual(x.grad!.toArray(), [13, 23]);
    x.requiresGrad = false;
    assert.equal(x.requiresGrad, false);
  });
});

test('conv2dIm2col (im2col + one matrix product) equals conv2d, forward and gradients (f64), and the Conv2d module takes it only below its pixel threshold', () => {
  const g = new torch.Generator(11);
  const r = (shape: number[]) => torch.randn(shape, { generator: g, dtype: 'float64' });
  for (const c of [
    { x: [3, 5, 4, 4], w: [7, 5, 3, 3], stride: 2, padding: 1 }, // 2x2 output, the case it is for
    { x: [2, 3, 6, 5], w: [4, 3, 3, 1], stride: 1, padding: [1, 0] as [number, number] },
  ]) {
    torch.tidy(() => {
      const x0 = r(c.x);
      const w0 = r(c.w);
      const b0 = r([c.w[0]]);
      const upstream = r(F.conv2d(x0, w0, b0, c).shape);
      const grads = (conv: typeof F.conv2d) => {
        const [x, w, b] = [x0, w0, b0].map((t) => t.clone().requiresGrad_(true));
        const y = conv(x, w, b, c);
        y.mul(upstream).sum().backward();
        return [y, x.grad!, w.grad!, b.grad!];
      };
      const ref = grads(F.conv2d);
      const ours = grads(F.conv2dIm2col);
      ['output', 'input grad', 'weight grad', 'bias grad'].forEach((what, i) => {
        assert.deepEqual(ours[i].shape, ref[i].shape, what);
        const diff = ours[i].sub(ref[i]).abs().max().item() / Math.max(1e-12, ref[i].abs().max().item());
        assert.ok(diff < 1e-12, `${what}: relative difference ${diff}`);
      });
    });
  }
  const fdIn = r([2, 3, 4, 4]);
  checkFiniteDiff('conv2dIm2col weight', (ww) => F.conv2dIm2col(fdIn, ww, null, { stride: 2, padding: 1 }).tanh().sum(), r([5, 3, 3, 3]));
  assert.throws(() => F.conv2dIm2col(r([1, 4, 4, 4]), r([4, 2, 3, 3]), null, { groups: 2 }), /groups must be 1/);
  // the module: below the threshold the im2col path (float32: a different summation order, not bit-identical), above it libtorch's
  const conv = new nn.Conv2d(8, 16, 3, { stride: 2, padding: 1, bias: false });
  const x = torch.randn([4, 8, 4, 4], { generator: g });
  const before = nn.getConvIm2colMaxPixels();
  try {
    nn.setConvIm2colMaxPixels(0);
    const lib = conv.forward(x);
    nn.setConvIm2colMaxPixels(4);
    const im = conv.forward(x);
    const direct = F.conv2dIm2col(x, conv.weight, null, { stride: 2, padding: 1 });
    assert.equal(im.sub(direct).abs().max().item(), 0, 'a 2x2 output goes through im2col');
    assert.ok(im.sub(lib).abs().max().item() < 1e-5 * lib.abs().max().item());
    nn.setConvIm2colMaxPixels(3);
    assert.equal(conv.forward(x).sub(lib).abs().max().item(), 0, 'above the threshold: libtorch\'s conv');
    assert.throws(() => nn.setConvIm2colMaxPixels(-1), /non-negative integer/);
  } finally {
    nn.setConvIm2colMaxPixels(before);
  }
  for (const t of [x, conv.weight]) t.dispose();
});
