/**
 * QARepVGG (Chu et al., "Make RepVGG Greater Again", AAAI 2024), the quantization-friendly RepVGG
 * baseline of the study (issue 25), as RepOpt-VGG's `qarepvgg` mode: the same computation in our
 * model and in an independent PyTorch model with the official release's keys (rbr_dense.conv /
 * rbr_dense.bn, a bare rbr_1x1, the BN after the sum), forward and backward, in training mode; the
 * fused deploy form equals the eval-mode model; and a run trains through `runTraining`.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import * as torch from '../src/torch/index.js';
import { RepOptVGG, QARepVGGBlock } from '../src/models/repoptvgg.js';
import { reparameterizeModel } from '../src/repopt/index.js';
import { modeOfStateDict } from '../src/deploy/fuse.js';
import { runTraining } from '../src/train/run.js';
import { loadForDeploy } from '../src/deploy/study.js';
import { assertSameForwardBackward, runPython, toJson, type JsonTensor, type PyForwardBackward } from './helpers/python.js';

const CFG = { numBlocks: [1, 2, 1, 1], widthMultiplier: [0.25, 0.25, 0.25, 0.25], inChannels: 3, numClasses: 7, strides: [2, 1, 2, 2, 2] };

const PY = `
import torch.nn as nn
class Block(nn.Module):
    def __init__(s, cin, cout, stride):
        super().__init__()
        s.rbr_dense = nn.Sequential()
        s.rbr_dense.add_module('conv', nn.Conv2d(cin, cout, 3, stride, 1, bias=False))
        s.rbr_dense.add_module('bn', nn.BatchNorm2d(cout))
        s.rbr_1x1 = nn.Conv2d(cin, cout, 1, stride, 0, bias=False)
        s.identity = cin == cout and stride == 1
        s.bn = nn.BatchNorm2d(cout)
    def forward(s, x):
        y = s.rbr_dense(x) + s.rbr_1x1(x)
        if s.identity:
            y = y + x
        return torch.relu(s.bn(y))
sd = {k: T(v) for k, v in IN['sd'].items()}
layout = IN['layout']
blocks = nn.ModuleList([Block(b['in'], b['out'], b['stride']) for b in layout])
linear = nn.Linear(layout[-1]['out'], IN['classes'])
# the official names: stage0, stageX.Y
class Net(nn.Module):
    def __init__(s):
        super().__init__()
        for b, m in zip(layout, blocks):
            parent = s
            parts = b['name'].split('.')
            for p in parts[:-1]:
                if not hasattr(parent, p):
                    parent.add_module(p, nn.Module())
                parent = getattr(parent, p)
            parent.add_module(parts[-1], m)
        s.linear = linear
    def forward(s, x):
        for m in blocks:
            x = m(x)
        return s.linear(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))
net = Net().double()
missing = set(k for k in net.state_dict().keys() if not k.endswith('num_batches_tracked')) ^ set(sd.keys())
assert not missing, missing
net.load_state_dict({k: v.double() for k, v in sd.items()}, strict=False)
x = T(IN['x']).double().requires_grad_(True)
y = net(x)
(y * T(IN['r']).double()).sum().backward()
OUT = {'y': y, 'gx': x.grad, 'grads': {k: p.grad for k, p in net.named_parameters()}}
`;

test('QARepVGG mode = an independent PyTorch QARepVGG with the official keys, forward and gradients (float64, training mode)', () => {
  torch.tidy(() => {
    torch.manualSeed(3);
    const m = new RepOptVGG({ ...CFG, mode: 'qarepvgg', dtype: 'float64' });
    assert.ok(m.blocks.every((b) => b instanceof QARepVGGBlock));
    // non-trivial BN parameters, so every term of the block shows
    torch.noGrad(() => {
      for (const [name, t] of m.namedParameters()) if (name.includes('bn')) t.copy_(torch.rand(t.shape, { dtype: 'float64' }).add(0.5));
    });
    const sd = m.stateDict();
    assert.equal(modeOfStateDict(sd.keys()), 'qarepvgg');
    for (const k of ['stage0.rbr_dense.conv.weight', 'stage0.rbr_dense.bn.running_var', 'stage0.rbr_1x1.weight', 'stage0.bn.weight', 'stage2.1.bn.num_batches_tracked']) assert.ok(sd.has(k), k);
    const x = torch.randn([4, 3, 16, 16], { dtype: 'float64' }).requiresGrad_(true);
    const r = torch.randn([4, 7], { dtype: 'float64' });
    const y = m.forward(x);
    y.mul(r).sum().backward();
    const py = runPython<PyForwardBackward>(PY, {
      sd: Object.fromEntries([...sd].filter(([k]) => !k.endsWith('num_batches_tracked')).map(([k, t]) => [k, toJson(t)])),
      layout: m.layout.map((b) => ({ name: b.name, in: b.inChannels, out: b.outChannels, stride: b.stride })),
      classes: 7, x: toJson(x), r: toJson(r),
    });
    assertSameForwardBackward(m, y, x, py);
  });
});

test('QARepVGG fuses to the plain deploy net: eval-mode logits equal within float64 rounding', () => {
  torch.tidy(() => {
    torch.manualSeed(4);
    const m = new RepOptVGG({ ...CFG, mode: 'qarepvgg', dtype: 'float64' });
    // train-mode passes give the BNs real running statistics
    for (let i = 0; i < 3; i++) m.forward(torch.randn([8, 3, 16, 16], { dtype: 'float64' }));
    m.eval();
    const x = torch.randn([5, 3, 16, 16], { dtype: 'float64' });
    const before = torch.noGrad(() => m.forward(x));
    const deployed = reparameterizeModel(m);
    const after = torch.noGrad(() => deployed.forward(x));
    const err = after.sub(before).abs().max().item() / before.abs().max().item();
    assert.ok(err < 1e-12, `relative error ${err}`);
  });
});

test('repopt train --mode qarepvgg through runTraining: the run trains, logs QARepVGG and its checkpoint reloads in that mode', async () => {
  const out = fs.mkdtempSync(path.join(os.tmpdir(), 'repopt-qa-'));
  try {
    const r = await runTraining({ data: 'synthetic:256', model: { blocks: [1, 1, 1, 1], widths: [0.25, 0.25, 0.25, 0.25] }, mode: 'qarepvgg', epochs: 1, batchSize: 32, out, quiet: true, threads: 1, workers: 0 });
    assert.equal(r.config.mode, 'qarepvgg');
    assert.equal(r.state.epoch, 1);
    const m = loadForDeploy({ checkpoint: path.join(out, 'final.pth') });
    try {
      assert.equal(m.mode, 'qarepvgg');
      assert.ok(m.fuseError < 1e-4, `deployed vs trained ${m.fuseError}`);
    } finally {
      m.trained?.dispose();
      m.deployed.dispose();
    }
  } finally {
    fs.rmSync(out, { recursive: true, force: true });
  }
});

const PY_L2 = `
total = 0
grads = {}
sd = {k: T(v) for k, v in IN['sd'].items()}
for b in IN['layout']:
    k3 = sd[b['name'] + '.rbr_dense.conv.weight'].clone().requires_grad_(True)
    k1 = sd[b['name'] + '.rbr_1x1.weight'].clone().requires_grad_(True)
    g, v = sd[b['name'] + '.rbr_dense.bn.weight'], sd[b['name'] + '.rbr_dense.bn.running_var']
    t3 = (g / (v + 1e-5).sqrt()).reshape(-1, 1, 1, 1)
    tmp = k3 * t3
    circle = (tmp ** 2).sum() - (tmp[:, :, 1:2, 1:2] ** 2).sum()
    eq = k3[:, :, 1:2, 1:2] * t3 + k1
    if b['in'] == b['out'] and b['stride'] == 1:
        eq = eq + torch.eye(b['out'], dtype=eq.dtype).reshape(b['out'], b['out'], 1, 1)
    l = (eq ** 2).sum() + circle
    l.backward()
    total = total + l.item()
    grads[b['name'] + '.rbr_dense.conv.weight'] = k3.grad
    grads[b['name'] + '.rbr_1x1.weight'] = k1.grad
OUT = {'total': total, 'grads': grads}
`;

test('QARepVGG custom L2 = the official recipe computed by an independent PyTorch script (value and gradients); training with it drops weight decay on those kernels', async () => {
  const { setupRun } = await import('../src/train/setup.js');
  torch.tidy(() => {
    torch.manualSeed(8);
    const m = new RepOptVGG({ ...CFG, mode: 'qarepvgg', dtype: 'float64' });
    torch.noGrad(() => {
      for (const [name, t] of [...m.namedParameters(), ...m.namedBuffers()]) if (name.includes('rbr_dense.bn') && t.dtype === 'float64') t.copy_(torch.rand(t.shape, { dtype: 'float64' }).add(0.5));
    });
    const blocks = m.blocks as QARepVGGBlock[];
    const total = blocks.reduce((s: torch.Tensor | null, b) => (s ? s.add(b.customL2()) : b.customL2()), null)!;
    total.backward();
    const sd = m.stateDict();
    const py = runPython<{ total: number; grads: Record<string, JsonTensor> }>(PY_L2, {
      sd: Object.fromEntries([...sd].filter(([k]) => !k.endsWith('num_batches_tracked')).map(([k, t]) => [k, toJson(t)])),
      layout: m.layout.map((b) => ({ name: b.name, in: b.inChannels, out: b.outChannels, stride: b.stride })),
    });
    assert.ok(Math.abs(total.item() - py.total) <= 1e-10 * py.total, `${total.item()} vs ${py.total}`);
    const params = new Map(m.namedParameters());
    assert.equal(Object.keys(py.grads).length, 2 * blocks.length);
    for (const [k, g] of Object.entries(py.grads)) {
      params.get(k)!.grad!.toArray().forEach((v, i) => assert.ok(Math.abs(v - g.data[i]) <= 1e-10 * (1 + Math.abs(g.data[i])), `d ${k}[${i}]`));
    }
  });
  // In a run: those kernels leave the decayed group, the penalty joins the loss; other modes refuse it.
  const spec = { blocks: CFG.numBlocks, widths: CFG.widthMultiplier, strides: CFG.strides, inChannels: 3, numClasses: 7 };
  const opt = { kind: 'sgd' as const, lr: 0.1, momentum: 0.9, nesterov: false, weightDecay: 1e-3 };
  const run = setupRun({ model: spec, mode: 'qarepvgg', optimizer: opt, customL2: true });
  const decayed = run.optimizer.stateDict().groups.find((g) => (g.hyper as unknown as { weightDecay: number }).weightDecay > 0)!.names;
  assert.ok(decayed.includes('linear.weight') && !decayed.some((n) => n.endsWith('rbr_dense.conv.weight') || n.endsWith('rbr_1x1.weight')), decayed.join());
  const penalty = torch.tidy(() => run.regularizer!().item());
  const byHand = torch.tidy(() => (run.model as RepOptVGG).blocks.reduce((s, b) => s + (b as QARepVGGBlock).customL2().item(), 0) * 1e-3 / 2);
  assert.ok(Math.abs(penalty - byHand) <= 1e-6 * byHand);
  run.model.dispose();
  assert.throws(() => setupRun({ model: spec, mode: 'repvgg', optimizer: opt, customL2: true }), /custom L2 is QARepVGG's \(mode qarepvgg\)/);
});
