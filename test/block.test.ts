/**
 * Generic re-parameterization from one block description (CslaBlock, src/repopt/block.ts), on a
 * user-style block (3x3 + 1x3 + 3x1 + identity, per-channel scales) and a depthwise one:
 * - the csla form's forward and gradients equal an independent PyTorch model of the same block;
 * - the target trained with RepSGD / RepAdamW ends with the kernels of the csla twin trained in PyTorch
 *   with plain SGD / AdamW (Rule of Initialization from the twin, Grad Mults from the scales);
 * - every form fuses (reparameterize / reparameterizeModel) to a Conv2d computing the same eval output;
 * - scales are read out of an hs model by block name and loaded back, with clear errors.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as torch from '../src/torch/index.js';
import { F, type Tensor } from '../src/torch/index.js';
import { Conv2d, Linear, Module } from '../src/nn/index.js';
import { SGD, AdamW } from '../src/optim/index.js';
import {
  CslaBlock, extractScales, initializeFromTwin, loadScales, repOptHandler, repOptSites, RepSGD, RepAdamW, reparameterizeModel,
  type CslaMode, type CslaSpec,
} from '../src/repopt/index.js';
import { maxRelDiff, runPython, toJson, type JsonTensor } from './helpers/python.js';

torch.setNumThreads(1);
const DT = 'float64' as const;

const acnet = (c: number, scales: number[][]): CslaSpec => ({
  inChannels: c, outChannels: c, kernel: 3,
  branches: [
    { kind: 'conv', kernel: 3, scale: scales[0] },
    { kind: 'conv', kernel: [1, 3], scale: scales[1] },
    { kind: 'conv', kernel: [3, 1], scale: scales[2] },
    { kind: 'identity' },
  ],
});

/** The user's network: two blocks (the second depthwise with a stride-1 identity), ReLU, pool, linear. */
class Net extends Module {
  readonly a: CslaBlock;
  readonly b: CslaBlock;
  readonly head: Linear;
  constructor(mode: CslaMode, c = 3) {
    super();
    const s = (k: number) => Array.from({ length: c }, (_, i) => 0.5 + 0.3 * k + 0.1 * i);
    this.a = this.registerModule('a', new CslaBlock(acnet(c, [s(0), s(1), s(2)]), { mode, dtype: DT }));
    const dw: CslaSpec = { inChannels: c, outChannels: c, kernel: 3, groups: c, branches: [{ kind: 'conv', kernel: 3, scale: s(3) }, { kind: 'identity' }] };
    this.b = this.registerModule('b', new CslaBlock(dw, { mode, dtype: DT }));
    this.head = this.registerModule('head', new Linear(c, 4, { dtype: DT }));
  }
  forward(x: Tensor): Tensor {
    const y = F.relu(this.b.forward(F.relu(this.a.forward(x))));
    return this.head.forward(F.adaptiveAvgPool2d(y, 1).flatten(1));
  }
}

/** Searched scales made different from the init (and one negative, to exercise |s| vs s^2). */
function searchedScales(c = 3): Map<string, Tensor> {
  torch.manualSeed(11);
  const hs = new Net('hs', c);
  torch.noGrad(() => {
    for (const [k, p] of hs.namedParameters()) if (k.includes('scale')) p.uniform_(-1.2, 1.6);
  });
  const scales = extractScales(hs);
  hs.dispose();
  return scales;
}

const PY_NET = `
import torch.nn.functional as Fn
def fwd(P, x, c):
    def block(prefix, x, specs, groups):
        y = 0
        for i, (kh, kw) in enumerate(specs):
            if kh == 0:
                y = y + x * P[prefix + f'branches.{i}.scale.weight'].view(1, -1, 1, 1)
            else:
                y = y + Fn.conv2d(x, P[prefix + f'branches.{i}.conv.weight'], None, 1, ((kh - 1) // 2, (kw - 1) // 2), 1, groups) \\
                      * P[prefix + f'branches.{i}.scale.weight'].view(1, -1, 1, 1)
        y = Fn.batch_norm(y, P[prefix + 'bn.running_mean'], P[prefix + 'bn.running_var'], P[prefix + 'bn.weight'], P[prefix + 'bn.bias'], True, 0.1, 1e-5)
        return torch.relu(y)
    y = block('a.', x, [(3, 3), (1, 3), (3, 1), (0, 0)], 1)
    y = block('b.', y, [(3, 3), (0, 0)], c)
    return Fn.linear(y.mean((2, 3)), P['head.weight'], P['head.bias'])
def fused(P, prefix, specs, c):
    k = 0
    for i, (kh, kw) in enumerate(specs):
        s = P[prefix + f'branches.{i}.scale.weight'].view(-1, 1, 1, 1)
        if kh == 0:
            per = P[prefix + 'branches.0.conv.weight'].shape[1]
            e = torch.zeros(c, per, 3, 3, dtype=torch.float64)
            for ch in range(c): e[ch, ch % per, 1, 1] = 1
            k = k + e * s
        else:
            w = P[prefix + f'branches.{i}.conv.weight']
            k = k + Fn.pad(w, ((3 - kw) // 2, (3 - kw) // 2, (3 - kh) // 2, (3 - kh) // 2)) * s
    return k
`;

test('csla form: forward and gradients equal an independent PyTorch model of the same blocks', () => {
  torch.manualSeed(3);
  const net = new Net('csla');
  const scales = searchedScales();
  loadScales(net, scales);
  const x = torch.randn([2, 3, 7, 7], { dtype: DT });
  const loss = net.forward(x).pow(2).mean();
  loss.backward();
  const P = Object.fromEntries([...net.namedParameters(), ...net.namedBuffers()].filter(([k]) => !k.includes('num_batches')).map(([k, t]) => [k, toJson(t)]));
  const r = runPython<{ loss: number; grads: Record<string, JsonTensor> }>(
    `${PY_NET}
P = {k: T(v, grad=('scale' not in k or 'branches.3' in k or 'b.branches.1' in k) and 'running' not in k) for k, v in IN['P'].items()}
loss = fwd(P, T(IN['x']), 3).pow(2).mean()
loss.backward()
OUT = {'loss': loss.item(), 'grads': {k: v.grad for k, v in P.items() if v.grad is not None}}`,
    { P, x: toJson(x) },
  );
  assert.ok(Math.abs(loss.item() - r.loss) < 1e-12 * Math.max(1, Math.abs(r.loss)), `loss ${loss.item()} vs ${r.loss}`);
  const grads = new Map(net.namedParameters().filter(([, p]) => p.grad).map(([k, p]) => [k, p.grad!]));
  assert.deepEqual([...grads.keys()].sort(), Object.keys(r.grads).sort(), 'the trainable set: kernels, identity weights, BN, head; not the conv scales');
  for (const [k, g] of grads) assert.ok(maxRelDiff(g, r.grads[k]) < 1e-12, `grad ${k}`);
  net.dispose();
});

for (const rule of ['sgd', 'adamw'] as const) {
  test(`target + Rep${rule === 'sgd' ? 'SGD' : 'AdamW'} ends with the fused kernels of the csla twin trained by PyTorch's ${rule === 'sgd' ? 'SGD' : 'AdamW'}`, () => {
    torch.manualSeed(4);
    const scales = searchedScales();
    const twin = new Net('csla');
    loadScales(twin, scales);
    const target = new Net('target');
    initializeFromTwin(target, twin);
    const handler = repOptHandler(target, scales);
    const mults = handler.gradMults(rule, { dtype: DT });
    const hyper = { lr: rule === 'sgd' ? 0.05 : 0.01, weightDecay: 0.1 };
    const opt = rule === 'sgd' ? new RepSGD(target.namedParameters(), { ...hyper, momentum: 0.9, nesterov: true }, mults) : new RepAdamW(target.namedParameters(), { ...hyper, eps: 1e-14 }, mults);
    for (const m of mults.values()) m.dispose(); // ours to free: the optimizer keeps its own references
    const xs = Array.from({ length: 6 }, () => torch.randn([3, 3, 6, 6], { dtype: DT }));
    const P0 = Object.fromEntries([...twin.namedParameters(), ...twin.namedBuffers()].filter(([k]) => !k.includes('num_batches')).map(([k, t]) => [k, toJson(t)]));
    for (const x of xs) {
      torch.tidy(() => {
        opt.zeroGrad();
        target.forward(x).pow(2).mean().backward();
        opt.step();
      });
    }
    const r = runPython<Record<string, JsonTensor>>(
      `${PY_NET}
P = {k: T(v, grad=('scale' not in k or 'branches.3' in k or 'b.branches.1' in k) and 'running' not in k) for k, v in IN['P'].items()}
train = [v for v in P.values() if v.requires_grad]
opt = torch.optim.SGD(train, lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.1) if IN['rule'] == 'sgd' else torch.optim.AdamW(train, lr=0.01, weight_decay=0.1, eps=1e-14)
for x in IN['xs']:
    opt.zero_grad()
    fwd(P, T(x), 3).pow(2).mean().backward()
    opt.step()
OUT = {'a.conv.weight': fused(P, 'a.', [(3, 3), (1, 3), (3, 1), (0, 0)], 3), 'b.conv.weight': fused(P, 'b.', [(3, 3), (0, 0)], 3),
       'a.bn.running_var': P['a.bn.running_var'], 'head.weight': P['head.weight']}`,
      { P: P0, xs: xs.map(toJson), rule },
    );
    const mine = new Map([...target.namedParameters(), ...target.namedBuffers()]);
    for (const [k, want] of Object.entries(r)) {
      const e = maxRelDiff(mine.get(k)!, want);
      assert.ok(e < 1e-10, `${rule} ${k}: ${e}`);
    }
    opt.dispose();
    for (const m of [twin, target]) m.dispose();
    for (const t of scales.values()) t.dispose();
  });
}

test('every form fuses to one Conv2d with the same eval output (block and whole model, in place)', () => {
  for (const mode of ['hs', 'csla', 'target'] as const) {
    torch.manualSeed(6);
    const net = new Net(mode);
    torch.noGrad(() => {
      for (const [k, t] of [...net.namedParameters(), ...net.namedBuffers()]) {
        if (k.endsWith('running_var')) t.uniform_(0.4, 2);
        else if (k.endsWith('running_mean') || k.endsWith('bn.bias')) t.normal_(0, 0.3);
        else if (t.ndim === 1 && k.endsWith('.weight')) t.uniform_(-1.5, 1.5);
      }
    });
    net.eval();
    const x = torch.randn([2, 3, 8, 8], { dtype: DT });
    const want = torch.noGrad(() => net.forward(x));
    const conv = net.a.reparameterize();
    assert.ok(conv instanceof Conv2d && conv.bias !== null && conv.weight.shape.join() === '3,3,3,3');
    const blockWant = torch.noGrad(() => net.a.forward(x));
    assert.ok(maxRelDiff(torch.noGrad(() => conv.forward(x)), blockWant) < 1e-12, `${mode} block`);
    conv.dispose();
    reparameterizeModel(net);
    assert.ok(net.a instanceof Conv2d && net.b instanceof Conv2d, mode);
    assert.deepEqual([...net.stateDict().keys()], ['a.weight', 'a.bias', 'b.weight', 'b.bias', 'head.weight', 'head.bias']);
    assert.ok(maxRelDiff(torch.noGrad(() => net.forward(x)), want) < 1e-12, `${mode} model`);
    net.dispose();
  }
});

test('scales by block name: extract from hs, load into csla, sites for the target; clear errors', () => {
  const scales = searchedScales();
  assert.deepEqual([...scales.keys()], [
    'a.branches.0.scale.weight', 'a.branches.1.scale.weight', 'a.branches.2.scale.weight', 'a.branches.3.scale.weight',
    'b.branches.0.scale.weight', 'b.branches.1.scale.weight',
  ]);
  const twin = new Net('csla');
  loadScales(twin, scales);
  const back = extractScales(twin);
  for (const [k, t] of scales) assert.equal(maxRelDiff(back.get(k)!, t), 0, k);
  const target = new Net('target');
  const sites = repOptSites(target, scales);
  assert.deepEqual(sites.map((s) => s.param), ['a.conv.weight', 'b.conv.weight']);
  // identity init: the searched identity scale (release) or 1 (paper)
  assert.deepEqual(sites[0].identityInit, [scales.get('a.branches.3.scale.weight')!.toArray()]);
  assert.deepEqual(repOptSites(target, scales, { identityInit: 'one' })[1].identityInit, [[1, 1, 1]]);
  // SGD Grad Mult at a centre tap of block a, channel 0 -> input 0: s3^2 + s13^2 + s31^2 + 1 (by hand)
  const [s3, s13, s31] = [0, 1, 2].map((i) => scales.get(`a.branches.${i}.scale.weight`)!.toArray()[0]);
  const m = repOptHandler(target, scales).gradMults('sgd', { dtype: DT }).get('a.conv.weight')!;
  const mv = m.toArray();
  assert.ok(Math.abs(mv[4] - (s3 * s3 + s13 * s13 + s31 * s31 + 1)) < 1e-12); // [0,0,1,1]
  assert.ok(Math.abs(mv[1] - (s3 * s3 + s31 * s31)) < 1e-12); // [0,0,0,1] (row 0, centre column): 3x3 and 3x1 cover it
  assert.ok(Math.abs(mv[3] - (s3 * s3 + s13 * s13)) < 1e-12); // [0,0,1,0] (centre row, column 0): 3x3 and 1x3
  assert.ok(Math.abs(mv[0] - s3 * s3) < 1e-12); // [0,0,0,0]: only the 3x3
  m.dispose();

  const missing = new Map(scales);
  missing.delete('b.branches.1.scale.weight');
  assert.throws(() => loadScales(twin, missing), /no scale 'b\.branches\.1\.scale\.weight'/);
  assert.throws(() => repOptSites(target, new Map([...scales, ['c.branches.0.scale.weight', scales.get('a.branches.0.scale.weight')!]])), /blocks this model does not have: c\.branches/);
  assert.throws(() => loadScales(twin, new Map([...scales, ['a.branches.0.scale.weight', torch.ones([5], { dtype: DT })]])), /shape \[5\], the block has 3 output channels/);
  assert.throws(() => repOptSites(twin, scales), /block 'a' is in 'csla' form; expected 'target'/);
  assert.throws(() => extractScales(target), /block 'a' is in 'target' form/);
  assert.throws(() => extractScales(new Linear(2, 2)), /Linear has no CslaBlock/);
  assert.throws(() => new CslaBlock({ inChannels: 2, outChannels: 3, kernel: 3, branches: [{ kind: 'identity' }] }), /identity needs in == out/);
  // the Rule of Initialization refuses a trained target
  torch.noGrad(() => target.a.bn!.weight!.fill_(2));
  assert.throws(() => initializeFromTwin(target, twin), /not fresh/);
  for (const m2 of [twin, target]) m2.dispose();
  for (const t of [...scales.values(), ...back.values()]) t.dispose();
});

test('gradMults ownership: the caller may dispose the map after building RepSGD; opt.dispose() frees the optimizer\'s references', () => {
  const scales = searchedScales();
  const target = new Net('target');
  const handler = repOptHandler(target, scales);
  const mults = handler.gradMults('sgd', { dtype: DT });
  const want = mults.get('a.conv.weight')!.toArray();
  const opt = new RepSGD(target.namedParameters(), { lr: 0.1 }, mults);
  const live = torch.liveTensors();
  for (const m of mults.values()) m.dispose();
  assert.equal(live - torch.liveTensors(), 2, 'the caller\'s two mults freed');
  // the optimizer's own references still hold the values and are used by step()
  assert.deepEqual(opt.gradMult('a.conv.weight')!.toArray(), want);
  torch.tidy(() => target.forward(torch.randn([2, 3, 5, 5], { dtype: DT })).sum().backward());
  const before = torch.tidy(() => target.a.conv!.weight.detach().clone());
  const g = torch.tidy(() => target.a.conv!.weight.grad!.clone());
  opt.step();
  const step = torch.tidy(() => before.sub(target.a.conv!.weight).div(0.1));
  assert.ok(maxRelDiff(step, torch.tidy(() => g.mul(torch.tensor(want, { dtype: DT }).view([3, 3, 3, 3])))) < 1e-12);
  for (const t of [before, g, step]) t.dispose();
  target.zeroGrad();
  const beforeDispose = torch.liveTensors();
  opt.dispose();
  assert.equal(beforeDispose - torch.liveTensors(), 2, 'the optimizer\'s two references freed by opt.dispose()');
  target.dispose();
  for (const t of scales.values()) t.dispose();
});

test('a naming map registers branches directly on the block; every generic function reads the block\'s own keys', () => {
  const spec: CslaSpec = {
    inChannels: 3, outChannels: 3, kernel: 3,
    branches: [{ kind: 'conv', kernel: 3, scale: 0.5 }, { kind: 'conv', kernel: 1, scale: 2 }, { kind: 'identity', scale: 1 }],
  };
  const names = { branches: [{ conv: 'conv', scale: 'scale_conv' }, { conv: 'conv_1x1', scale: 'scale_1x1' }, { scale: 'scale_identity' }] };
  class Net extends Module {
    readonly a: CslaBlock;
    constructor(mode: CslaMode, frozenScales?: 'buffer' | 'parameter') {
      super();
      this.a = this.registerModule('a', new CslaBlock(spec, { mode, dtype: DT, names, frozenScales }));
    }
    forward(x: Tensor): Tensor {
      return this.a.forward(x);
    }
  }
  torch.manualSeed(5);
  const hs = new Net('hs');
  assert.deepEqual([...hs.stateDict().keys()].filter((k) => !k.includes('.bn.')), [
    'a.conv.weight', 'a.scale_conv.weight', 'a.conv_1x1.weight', 'a.scale_1x1.weight', 'a.scale_identity.weight',
  ]);
  const scales = extractScales(hs);
  assert.deepEqual([...scales.keys()], ['a.scale_conv.weight', 'a.scale_1x1.weight', 'a.scale_identity.weight']);
  // csla: frozen conv scales are buffers by default, parameters with requiresGrad off on request (same state dict).
  const csla = new Net('csla');
  const cslaP = new Net('csla', 'parameter');
  assert.deepEqual([...csla.stateDict().keys()], [...cslaP.stateDict().keys()]);
  assert.deepEqual(csla.namedParameters().map(([k]) => k).filter((k) => k.includes('scale')), ['a.scale_identity.weight']);
  assert.deepEqual(cslaP.namedParameters().filter(([k]) => k.includes('scale')).map(([k, p]) => [k, p.requiresGrad]), [
    ['a.scale_conv.weight', false], ['a.scale_1x1.weight', false], ['a.scale_identity.weight', true],
  ]);
  loadScales(cslaP, scales);
  assert.throws(() => loadScales(cslaP, new Map([...scales, ['a.branches.0.scale.weight', scales.get('a.scale_conv.weight')!]])), /blocks this model does not have: a\.branches\.0/);
  const target = new Net('target');
  assert.deepEqual([...target.stateDict().keys()].filter((k) => !k.includes('.bn.')), ['a.conv.weight']);
  const sites = repOptSites(target, scales);
  assert.deepEqual(sites.map((s) => s.param), ['a.conv.weight']);
  initializeFromTwin(target, cslaP);
  const x = torch.randn([2, 3, 6, 6], { dtype: DT });
  cslaP.eval();
  target.eval();
  assert.ok(maxRelDiff(torch.noGrad(() => target.forward(x)), torch.noGrad(() => cslaP.forward(x))) < 1e-12);
  const conv = cslaP.a.reparameterize();
  assert.ok(maxRelDiff(torch.noGrad(() => conv.forward(x)), torch.noGrad(() => cslaP.forward(x))) < 1e-12);
  assert.throws(() => new CslaBlock(spec, { names: { branches: names.branches.slice(0, 2) } }), /names has 2 branches, the spec 3/);
  assert.throws(() => new CslaBlock(spec, { names: { branches: [{ conv: 'conv', scale: 's' }, { conv: 'conv', scale: 't' }, { scale: 'u' }] } }), /distinct/);
  for (const t of scales.values()) t.dispose();
  for (const m of [hs, csla, cslaP, target, conv]) m.dispose();
});
