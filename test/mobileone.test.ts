/**
 * RepOpt-MobileOne (Vasu et al., CVPR 2023) on the generic CSLA engine (issue 24):
 *   - S0-S4 as the paper: the deployed networks' parameters and MACs at 224x224 are the paper's Table
 *     (S0 2.1M / 275M ... S4 14.8M / 2.98G), and the deployed module holds exactly that many parameters;
 *   - the `mobileone` mode (MobileOne's own training form, a BN per branch, the official keys) computes
 *     what an independent PyTorch MobileOne computes, forward and gradients, in training mode (float64);
 *   - every mode fuses to the same plain deploy form (eval-mode logits equal);
 *   - the RepOpt target trained with RepSGD equals its csla twin trained with SGD (depthwise blocks with
 *     k = 2 conv branches, a 1x1 and identity: the Grad Mults of grouped convolutions).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as torch from '../src/torch/index.js';
import { SGD } from '../src/optim/index.js';
import { RepSGD, extractScales, initializeFromTwin, loadScales, repOptHandler, reparameterizeModel } from '../src/repopt/index.js';
import { MOBILEONE_CONFIGS, MobileOne, MobileOneBlock, mobileOneStats, type MobileOneMode } from '../src/models/mobileone.js';
import { familyOf, listArchs } from '../src/models/index.js';
import { assertSameForwardBackward, runPython, toJson, type PyForwardBackward } from './helpers/python.js';

/** Params (millions) and MACs (G) of the paper's Table (MobileOne, ImageNet, 224x224). */
const PAPER = { S0: [2.1, 0.275], S1: [4.8, 0.825], S2: [7.8, 1.299], S3: [10.1, 1.896], S4: [14.8, 2.978] } as const;

test('S0-S4: deployed params and MACs are the paper\'s; `repopt models` lists them with their modes', () => {
  for (const [v, [mParams, gMacs]] of Object.entries(PAPER)) {
    const s = mobileOneStats(v as keyof typeof PAPER);
    assert.equal(Math.round(s.params / 1e5) / 10, mParams, `${v} params ${s.params}`);
    assert.ok(Math.abs(s.macs / 1e9 - gMacs) < 0.0015, `${v} MACs ${s.macs}`);
    const a = listArchs().find((x) => x.name === `RepOpt-MobileOne-${v}`)!;
    assert.equal(a.family, 'RepOpt-MobileOne');
    assert.deepEqual(a.modes, ['target', 'hs', 'csla', 'mobileone']);
    assert.equal(a.params, s.params);
  }
  // The count the table gives is the module's own: S0 deployed, 1000 classes.
  const m = new MobileOne({ ...MOBILEONE_CONFIGS.S0, mode: 'target', inChannels: 3, numClasses: 1000 });
  const d = reparameterizeModel(m);
  assert.equal(d.numParameters(), mobileOneStats('S0').params);
  d.dispose();
  assert.equal(MOBILEONE_CONFIGS.S0.k, 4);
  assert.ok([1, 2, 3, 4].every((i) => MOBILEONE_CONFIGS[`S${i}` as 'S1'].k === 1));
});

// A small MobileOne: k = 2, SE in stage 3's last half and stage 4 (S4's rule), 1-1-2-1 blocks.
const SMALL = { widths: [0.25, 0.25, 0.125, 0.125], k: 2, se: true, blocks: [1, 1, 2, 1], inChannels: 3, numClasses: 5 };

const PY = `
import torch.nn as nn
import torch.nn.functional as Fn
class ConvBN(nn.Sequential):
    def __init__(s, cin, cout, k, stride, groups):
        super().__init__()
        s.add_module('conv', nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False))
        s.add_module('bn', nn.BatchNorm2d(cout))
class Block(nn.Module):  # MobileOne's training block, the official keys
    def __init__(s, b):
        super().__init__()
        s.rbr_skip = nn.BatchNorm2d(b['cin']) if b['cin'] == b['cout'] and b['stride'] == 1 else None
        s.rbr_conv = nn.ModuleList([ConvBN(b['cin'], b['cout'], b['kernel'], b['stride'], b['groups']) for _ in range(b['k'])])
        s.rbr_scale = ConvBN(b['cin'], b['cout'], 1, b['stride'], b['groups']) if b['kernel'] > 1 else None
    def forward(s, x):
        out = 0
        if s.rbr_skip is not None: out = out + s.rbr_skip(x)
        if s.rbr_scale is not None: out = out + s.rbr_scale(x)
        for c in s.rbr_conv: out = out + c(x)
        return out
class SE(nn.Module):
    def __init__(s, c):
        super().__init__()
        r = max(1, int(c * 0.0625))
        s.reduce = nn.Conv2d(c, r, 1)
        s.expand = nn.Conv2d(r, c, 1)
    def forward(s, x):
        return x * torch.sigmoid(s.expand(torch.relu(s.reduce(Fn.adaptive_avg_pool2d(x, 1)))))
class Stage(nn.Module):
    def __init__(s, blocks):
        super().__init__()
        s.n = len(blocks)
        for i, b in enumerate(blocks): s.add_module(str(i), Block(b))
        if any(b['se'] for b in blocks):
            s.se = nn.Module()
            for i, b in enumerate(blocks):
                if b['se']: s.se.add_module(str(i), SE(b['cout']))
    def forward(s, x):
        for i in range(s.n):
            x = getattr(s, str(i))(x)
            if hasattr(s, 'se') and hasattr(s.se, str(i)): x = getattr(s.se, str(i))(x)
            x = torch.relu(x)
        return x
class Net(nn.Module):
    def __init__(s, layout, classes):
        super().__init__()
        s.stages = []
        for i, st in enumerate(layout):
            s.add_module('stage%d' % i, Stage(st))
        s.linear = nn.Linear(layout[-1][-1]['cout'], classes)
    def forward(s, x):
        for i in range(5): x = getattr(s, 'stage%d' % i)(x)
        return s.linear(torch.flatten(Fn.adaptive_avg_pool2d(x, 1), 1))
net = Net(IN['layout'], IN['classes']).double()
sd = {k: T(v) for k, v in IN['sd'].items()}
keys = set(k for k in net.state_dict().keys() if not k.endswith('num_batches_tracked'))
assert keys == set(sd.keys()), keys ^ set(sd.keys())
net.load_state_dict(sd, strict=False)
x = T(IN['x']).requires_grad_(True)
y = net(x)
(y * T(IN['r'])).sum().backward()
OUT = {'y': y, 'gx': x.grad, 'grads': {k: p.grad for k, p in net.named_parameters()}}
`;

function layoutOf(m: MobileOne): object[][] {
  return m.stages.map((s) => s.blocks.map((b, i) => {
    const info = (b as MobileOneBlock).info;
    return { ...info, se: s.se[i] !== null };
  }));
}

test('mode mobileone = an independent PyTorch MobileOne with the official block keys, forward and gradients (float64, training mode)', () => {
  torch.tidy(() => {
    torch.manualSeed(5);
    const m = new MobileOne({ ...SMALL, mode: 'mobileone', dtype: 'float64' });
    torch.noGrad(() => {
      for (const [name, t] of m.namedParameters()) if (name.includes('bn') || name.includes('rbr_skip')) t.copy_(torch.rand(t.shape, { dtype: 'float64' }).add(0.5));
    });
    const sd = m.stateDict();
    for (const k of ['stage0.0.rbr_conv.0.conv.weight', 'stage0.0.rbr_scale.bn.running_var', 'stage1.0.rbr_conv.1.bn.weight', 'stage1.1.rbr_conv.0.conv.weight', 'stage3.2.rbr_skip.weight', 'stage3.se.3.reduce.weight', 'stage4.se.0.expand.bias']) {
      assert.ok(sd.has(k), `${k} in ${[...sd.keys()].slice(0, 12).join(', ')}`);
    }
    assert.ok(!sd.has('stage3.se.0.reduce.weight'), 'SE only in the last half of stage 3');
    const x = torch.randn([3, 3, 32, 32], { dtype: 'float64' }).requiresGrad_(true);
    const r = torch.randn([3, 5], { dtype: 'float64' });
    const y = m.forward(x);
    y.mul(r).sum().backward();
    const py = runPython<PyForwardBackward>(PY, {
      sd: Object.fromEntries([...sd].filter(([k]) => !k.endsWith('num_batches_tracked')).map(([k, t]) => [k, toJson(t)])),
      layout: layoutOf(m), classes: 5, x: toJson(x), r: toJson(r),
    });
    assertSameForwardBackward(m, y, x, py);
  });
});

test('every mode fuses to the same plain deploy form; eval-mode logits equal within float64 rounding', () => {
  torch.tidy(() => {
    let keys: string | null = null;
    for (const mode of ['mobileone', 'target', 'hs', 'csla'] as MobileOneMode[]) {
      torch.manualSeed(6);
      const m = new MobileOne({ ...SMALL, mode, dtype: 'float64' });
      torch.noGrad(() => {
        // non-trivial scales and BN statistics
        for (const [name, t] of [...m.namedParameters(), ...m.namedBuffers()]) if (/scale|bn|rbr_skip/.test(name) && t.dtype === 'float64') t.copy_(torch.rand(t.shape, { dtype: 'float64' }).add(0.5));
      });
      for (let i = 0; i < 2; i++) torch.noGrad(() => m.forward(torch.randn([6, 3, 32, 32], { dtype: 'float64' })));
      m.eval();
      const x = torch.randn([4, 3, 32, 32], { dtype: 'float64' });
      const before = torch.noGrad(() => m.forward(x));
      const d = reparameterizeModel(m);
      const after = torch.noGrad(() => d.forward(x));
      const rel = after.sub(before).abs().max().item() / before.abs().max().item();
      assert.ok(rel < 1e-10, `${mode}: fused vs trained ${rel}`);
      const k = [...d.stateDict().keys()].join();
      assert.ok(k.includes('stage1.0.weight') && k.includes('stage1.0.bias') && !k.includes('rbr_'), k.slice(0, 200));
      keys ??= k;
      assert.equal(k, keys, `${mode}: the same deploy keys as the others`);
    }
  });
});

test('RepOpt target with RepSGD = its csla twin with SGD (depthwise k-branch blocks), and the family round-trips scales by name', () => {
  torch.tidy(() => {
    torch.manualSeed(7);
    const cfg = { ...SMALL, se: false };
    const hs = new MobileOne({ ...cfg, mode: 'hs' });
    const scales = torch.noGrad(() => new Map([...extractScales(hs)].map(([k, t]) => [k, torch.keep(t.mul(torch.rand(t.shape).add(0.5)))])));
    assert.ok(scales.has('stage1.0.branches.2.scale.weight') && !scales.has('stage1.0.branches.3.scale.weight') && scales.has('stage3.2.branches.3.scale.weight'), 'dw blocks: 2 x 3x3, 1x1 [, identity at stride 1]');
    const twin = new MobileOne({ ...cfg, mode: 'csla' });
    loadScales(twin, scales);
    const target = new MobileOne({ ...cfg, mode: 'target' });
    initializeFromTwin(target, twin);
    const hyper = { lr: 0.05, momentum: 0.9, weightDecay: 0 };
    const optT = new RepSGD(target.namedParameters(), hyper, repOptHandler(target, scales).gradMults('sgd'));
    const optC = new SGD(twin.namedParameters(), hyper);
    for (let i = 0; i < 4; i++) {
      const x = torch.randn([8, 3, 32, 32]);
      const yl = torch.randint(0, 5, [8]);
      for (const [net, opt] of [[target, optT], [twin, optC]] as const) {
        opt.zeroGrad();
        const loss = torch.F.crossEntropy(net.forward(x), yl);
        loss.backward();
        opt.step();
      }
    }
    target.eval();
    twin.eval();
    const x = torch.randn([4, 3, 32, 32]);
    const a = torch.noGrad(() => target.forward(x));
    const b = torch.noGrad(() => twin.forward(x));
    const rel = a.sub(b).abs().max().item() / b.abs().max().item();
    assert.ok(rel < 1e-4, `target vs twin after 4 steps: ${rel}`);
    // The family (generic) reads the same scales back by block name.
    const family = familyOf({ arch: 'RepOpt-MobileOne-S0', inChannels: 3, numClasses: 5 });
    assert.equal(family.name, 'RepOpt-MobileOne');
    assert.equal(family.baselineMode, 'mobileone');
  });
});

test('scale files by architecture name: a RepOpt-MobileOne-S0 search\'s scales load with loadScaleFile and `repopt scales`; another family\'s name is refused', async () => {
  const { loadScaleFile } = await import('../src/models/scales.js');
  const { spawnSync } = await import('node:child_process');
  const fs = await import('node:fs');
  const os = await import('node:os');
  const path = await import('node:path');
  const { REPO_ROOT } = await import('./helpers/paths.js');
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'repopt-mobileone-'));
  try {
    const spec = { arch: 'RepOpt-MobileOne-S0', inChannels: 3, numClasses: 10 };
    const family = familyOf(spec);
    const hs = family.create(spec, 'hs');
    const scales = torch.noGrad(() => new Map([...family.extractScales(hs)].map(([k, t]) => [k, torch.keep(t.mul(torch.rand(t.shape).add(0.5)))])));
    const file = path.join(dir, 's0.pth');
    family.saveScales(file, scales, hs, 'RepOpt-MobileOne-S0');
    const back = loadScaleFile(file, 'RepOpt-MobileOne-S0');
    assert.deepEqual([...back.keys()], [...scales.keys()]);
    for (const [k, t] of scales) assert.deepEqual(back.get(k)!.toArray(), t.toArray(), k);
    // The CLI's Grad Mult report: one site per block; the stem's (3x3 + 1x1, dense, 3 input channels) by hand.
    const r = spawnSync(process.execPath, [path.join(REPO_ROOT, 'dist/src/cli/main.js'), 'scales', file, '--arch', 'RepOpt-MobileOne-S0', '--json'], { encoding: 'utf8' });
    assert.equal(r.status, 0, r.stderr);
    const rep = JSON.parse(r.stdout) as { params: { name: string; gradMult: { sum: number } }[] };
    assert.equal(rep.params.length, 1 + 2 * (2 + 8 + 10 + 1));
    const s = scales.get('stage0.0.branches.0.scale.weight')!.toArray();
    const t = scales.get('stage0.0.branches.1.scale.weight')!.toArray();
    const stem = s.reduce((sum, v, c) => sum + 9 * 3 * v * v + 3 * t[c] * t[c], 0);
    const got = rep.params.find((p) => p.name === 'stage0.0.conv.weight')!.gradMult.sum;
    assert.ok(Math.abs(got - stem) <= 1e-6 * stem, `${got} vs ${stem}`);
    assert.throws(() => loadScaleFile(file, 'RepOpt-VGG-A0'), /holds no RepOpt-VGG scale tensors/);
    hs.dispose();
    for (const x of [...scales.values(), ...back.values()]) x.dispose();
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
