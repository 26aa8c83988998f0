/**
 * RepOpt-VGG: layout and keys per mode, parameter counts and MACs of the nine
 * released variants, forward shapes, hs/csla == fused target, the handler
 * (public check values, Rule of Initialization, fresh-model guard), strict
 * loading, and checkpoints both ways with a PyTorch model of our own definition.
 */
import { test, describe, after } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import path from 'node:path';
import * as torch from '../src/torch/index.js';
import '../src/models/families.js'; // registers the families with their architectures and scale schemes
import type { Tensor } from '../src/torch/index.js';
import { BatchNorm2d, type Module } from '../src/nn/index.js';
import { fuseKernel, gradMult } from '../src/repopt/csla.js';
import { RepOptHandler } from '../src/repopt/handler.js';
import { createModel, getArch, listArchs } from '../src/models/registry.js';
import {
  REPOPT_VGG_CONFIGS,
  RepOptVGG,
  extractVggScales,
  vggBlockLayout,
  vggTargetStats,
  type LinearAddBlock,
  type RepOptVGGConfig,
  type RepOptVGGMode,
  type TargetBlock,
} from '../src/models/repoptvgg.js';
import { repOptVggHandler, repOptVggSites } from '../src/models/repoptvgg-handler.js';
import { extractScales, initializeFromTwin, loadScales, repOptSites } from '../src/repopt/block.js';
import { loadScaleFile } from '../src/models/scales.js';
import { loadPth, savePth, extractStateDict } from '../src/io/pth.js';
import { PyOrderedDict } from '../src/io/pickle.js';
import { scaleFile } from './helpers/paths.js';
import { runPythonScript } from './helpers/python.js';

torch.setNumThreads(1); // tiny tensors: threads only add synchronisation cost

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'repoptvgg-'));
after(() => fs.rmSync(tmp, { recursive: true, force: true }));

/** A small net: widths 16, 32, 64, 128 (stem 16); identity branches in stages 1-3 only. */
const SMALL: RepOptVGGConfig = { numBlocks: [2, 3, 1, 1], widthMultiplier: [0.25, 0.25, 0.25, 0.25] };

const maxAbs = (a: Tensor, b: Tensor) => torch.tidy(() => (a.sub(b).abs().max() as Tensor).item());

function randomizeBN(model: Module, seed: number): void {
  torch.manualSeed(seed);
  torch.noGrad(() =>
    torch.tidy(() => {
      for (const [, m] of model.namedModules()) {
        if (!(m instanceof BatchNorm2d)) continue;
        const c = m.numFeatures;
        m.weight!.copy_(torch.rand([c], { dtype: m.weight!.dtype }).add(0.5));
        m.bias!.copy_(torch.randn([c], { dtype: m.weight!.dtype }).mul(0.1));
        m.runningMean!.copy_(torch.randn([c], { dtype: m.weight!.dtype }).mul(0.1));
        m.runningVar!.copy_(torch.rand([c], { dtype: m.weight!.dtype }).add(0.5));
      }
    }),
  );
}

describe('layout and keys', () => {
  test('block layout: stem min(64, 64a), stage widths, strides, identity where in == out and stride 1, scale init', () => {
    const l = vggBlockLayout(REPOPT_VGG_CONFIGS.B1);
    assert.equal(l.length, 1 + 4 + 6 + 16 + 1);
    assert.deepEqual(l[0], { name: 'stage0', inChannels: 3, outChannels: 64, stride: 2, identity: false, scaleInit: 1 });
    assert.deepEqual(l[1], { name: 'stage1.0', inChannels: 64, outChannels: 128, stride: 2, identity: false, scaleInit: 1 });
    assert.deepEqual(l[2], { name: 'stage1.1', inChannels: 128, outChannels: 128, stride: 1, identity: true, scaleInit: Math.SQRT2 });
    assert.equal(l[3].scaleInit, 1);
    assert.equal(l[4].scaleInit, Math.sqrt(2 / 3));
    assert.deepEqual(l[l.length - 1], { name: 'stage4.0', inChannels: 512, outChannels: 2048, stride: 2, identity: false, scaleInit: 1 });
    const a0 = vggBlockLayout(REPOPT_VGG_CONFIGS.A0, { inChannels: 1, strides: [1, 1, 2, 2, 2] });
    assert.deepEqual(a0[0], { name: 'stage0', inChannels: 1, outChannels: 48, stride: 1, identity: false, scaleInit: 1 });
    assert.equal(a0[1].identity, true, 'stage1.0 48 -> 48 with stride 1 has an identity');
    assert.equal(vggBlockLayout(REPOPT_VGG_CONFIGS.A2).at(-1)!.outChannels, 1408);
    assert.throws(() => vggBlockLayout({ numBlocks: [1, 2, 3], widthMultiplier: [1, 1, 1, 1] }), /numBlocks must be 4/);
    assert.throws(() => vggBlockLayout(SMALL, { strides: [2, 2] }), /strides must be 5/);
  });

  test('state-dict keys per mode follow the release', () => {
    const keys = (mode: RepOptVGGMode, postSE = false) => {
      const m = new RepOptVGG({ ...SMALL, mode, numClasses: 10, postSE });
      const k = [...m.stateDict().keys()];
      m.dispose();
      return k;
    };
    const bn = (p: string) => ['weight', 'bias', 'running_mean', 'running_var', 'num_batches_tracked'].map((s) => `${p}.${s}`);
    const target = keys('target');
    assert.deepEqual(target.slice(0, 6), ['stage0.conv.weight', ...bn('stage0.bn')]);
    assert.ok(target.includes('stage1.1.conv.weight') && !target.some((k) => k.includes('conv.bias')));
    assert.deepEqual(target.slice(-2), ['linear.weight', 'linear.bias']);
    const hs = keys('hs');
    assert.deepEqual(hs.slice(0, 5), ['stage0.conv.weight', 'stage0.scale_conv.weight', 'stage0.conv_1x1.weight', 'stage0.scale_1x1.weight', 'stage0.bn.weight']);
    assert.deepEqual(hs.filter((k) => k.startsWith('stage1.1.')).slice(0, 6), [
      'stage1.1.conv.weight', 'stage1.1.scale_conv.weight', 'stage1.1.conv_1x1.weight', 'stage1.1.scale_1x1.weight', 'stage1.1.scale_identity.weight', 'stage1.1.bn.weight',
    ]);
    assert.ok(!hs.includes('stage1.0.scale_identity.weight') && !hs.includes('stage0.scale_identity.weight'));
    assert.deepEqual(keys('csla'), hs, 'csla keeps the hs keys');
    const rep = keys('repvgg');
    assert.deepEqual(rep.filter((k) => k.startsWith('stage1.1.') && k.endsWith('.weight')), [
      'stage1.1.conv_3x3.weight', 'stage1.1.bn_3x3.weight', 'stage1.1.conv_1x1.weight', 'stage1.1.bn_1x1.weight', 'stage1.1.bn_identity.weight',
    ]);
    const se = keys('target', true);
    assert.deepEqual(se.filter((k) => k.startsWith('stage1.0.post_se')), ['stage1.0.post_se.down.weight', 'stage1.0.post_se.down.bias', 'stage1.0.post_se.up.weight', 'stage1.0.post_se.up.bias']);
  });

  test('hs init: s, t = 1 in the stem and block 0, sqrt(2/i) in block i; identity 1; csla freezes s, t only', () => {
    const hs = new RepOptVGG({ ...SMALL, mode: 'hs', numClasses: 10 });
    const sd = hs.stateDict();
    const first = (k: string) => sd.get(k)!.toArray();
    assert.ok(first('stage0.scale_conv.weight').every((v) => v === 1));
    assert.ok(first('stage2.0.scale_1x1.weight').every((v) => v === 1));
    assert.ok(first('stage2.1.scale_conv.weight').every((v) => Math.abs(v - Math.SQRT2) < 1e-7));
    assert.ok(first('stage2.2.scale_1x1.weight').every((v) => v === 1));
    assert.ok(first('stage1.1.scale_identity.weight').every((v) => v === 1));
    const scales = extractVggScales(hs);
    assert.deepEqual([...scales.keys()].slice(0, 7), [
      'stage0.scale_conv.weight', 'stage0.scale_1x1.weight', 'stage1.0.scale_conv.weight', 'stage1.0.scale_1x1.weight',
      'stage1.1.scale_conv.weight', 'stage1.1.scale_1x1.weight', 'stage1.1.scale_identity.weight',
    ]);
    for (const t of scales.values()) t.dispose();
    const csla = new RepOptVGG({ ...SMALL, mode: 'csla', numClasses: 10 });
    const grads = new Map(csla.namedParameters().map(([n, p]) => [n, p.requiresGrad]));
    assert.equal(grads.get('stage1.1.scale_conv.weight'), false);
    assert.equal(grads.get('stage1.1.scale_1x1.weight'), false);
    assert.equal(grads.get('stage1.1.scale_identity.weight'), true);
    assert.equal(grads.get('stage1.1.conv.weight'), true);
    assert.equal(csla.numParameters(), hs.numParameters());
    hs.dispose();
    csla.dispose();
  });
});

test('parameter counts (target, 1000 classes) and MACs at 224 match the table for all nine variants', () => {
  const table: Record<string, [number, number]> = {
    A0: [8.31, 1.36], A1: [12.8, 2.36], A2: [25.51, 5.12], B0: [14.35, 3.06], B1: [51.84, 11.82],
    B2: [80.33, 18.38], B3: [110.98, 26.21], L1: [76.04, 21.06], L2: [118.13, 32.83],
  };
  assert.deepEqual(listArchs().filter((a) => a.family === 'RepOpt-VGG').map((a) => a.name), Object.keys(table).map((n) => `RepOpt-VGG-${n}`));
  for (const [name, [mParams, gMacs]] of Object.entries(table)) {
    const arch = getArch(`RepOpt-VGG-${name}`);
    const m = createModel(arch.name);
    const n = m.numParameters();
    m.dispose();
    assert.equal(n, arch.params, `${name}: built ${n}, listed ${arch.params}`);
    assert.equal(Math.round(n / 1e4) / 100, mParams, `${name}: ${n} params`);
    assert.equal(Math.round(arch.macs! / 1e7) / 100, gMacs, `${name}: ${arch.macs} MACs`);
    if (name === 'B1') assert.equal(n, 51_841_832);
  }
  assert.equal(vggTargetStats(REPOPT_VGG_CONFIGS.B1, { numClasses: 100 }).params, 51_841_832 - 900 * 2048 - 900);
});

describe('forward', () => {
  for (const mode of ['target', 'hs', 'csla', 'repvgg'] as const) {
    test(`${mode}: output shapes for RGB and grey inputs, other strides, post-SE; createModel passes options`, () => {
      torch.tidy(() => {
        const m = new RepOptVGG({ ...SMALL, mode, numClasses: 7 });
        assert.deepEqual(m.forward(torch.randn([2, 3, 32, 32])).shape, [2, 7]);
        m.dispose();
        const g = new RepOptVGG({ ...SMALL, mode, numClasses: 5, inChannels: 1, strides: [1, 1, 2, 2, 1], postSE: true });
        assert.deepEqual(g.stage0.forward(torch.randn([1, 1, 8, 8])).shape, [1, 16, 8, 8]);
        assert.deepEqual(g.forward(torch.randn([3, 1, 16, 16])).shape, [3, 5]);
        g.eval();
        assert.deepEqual(g.forward(torch.randn([1, 1, 16, 16])).shape, [1, 5]);
        g.dispose();
      });
    });
  }
  test('createModel: unknown mode is an error; options reach the model', () => {
    assert.throws(() => createModel('RepOpt-VGG-A0', { mode: 'rep' }), /no mode 'rep'/);
    const m = createModel('RepOpt-VGG-A0', { mode: 'hs', numClasses: 10, inChannels: 1 }) as RepOptVGG;
    assert.equal(m.mode, 'hs');
    assert.deepEqual(m.stateDict().get('stage0.conv.weight')!.shape, [48, 1, 3, 3]);
    assert.deepEqual(m.linear.weight.shape, [10, 1280]);
    m.dispose();
  });
});

/** Random scales for a layout (some negative), as a scale file would hold them. */
function randomScales(model: RepOptVGG, seed: number, dtype: torch.DType = 'float32'): Map<string, Tensor> {
  torch.manualSeed(seed);
  const out = new Map<string, Tensor>();
  for (const b of model.layout) {
    const c = b.outChannels;
    out.set(`${b.name}.scale_conv.weight`, torch.keep(torch.randn([c], { dtype }).add(0.8)));
    out.set(`${b.name}.scale_1x1.weight`, torch.keep(torch.randn([c], { dtype }).mul(0.5).add(1)));
    if (b.identity) out.set(`${b.name}.scale_identity.weight`, torch.keep(torch.rand([c], { dtype }).add(0.3)));
  }
  return out;
}

test('hs (scales loaded) and csla forward equal the target with fused kernels, BN in eval (float64)', () => {
  const dtype = 'float64';
  for (const mode of ['hs', 'csla'] as const) {
    torch.manualSeed(11);
    const hs = new RepOptVGG({ ...SMALL, mode, numClasses: 10, dtype, postSE: mode === 'csla' });
    const scales = randomScales(hs, 5, dtype);
    hs.loadStateDict(scales, false);
    randomizeBN(hs, 7);
    const target = new RepOptVGG({ ...SMALL, mode: 'target', numClasses: 10, dtype, postSE: mode === 'csla' });
    const sites = repOptVggSites(target, scales);
    // Everything but the kernels is shared by name (BN, SE, classifier); each kernel is the block fused.
    const tsd = new Map([...hs.stateDict()].filter(([k]) => target.stateDict().has(k)));
    torch.noGrad(() =>
      torch.tidy(() => {
        hs.blocks.forEach((b, i) => {
          const blk = b as LinearAddBlock;
          const ids = blk.scaleIdentity ? [blk.scaleIdentity.weight] : [];
          tsd.set(sites[i].param, fuseKernel(sites[i].spec, { convKernels: [blk.conv.weight, blk.conv1x1.weight], identityWeights: ids }));
        });
        target.loadStateDict(tsd);
      }),
    );
    hs.eval();
    target.eval();
    torch.tidy(() => {
      const x = torch.randn([2, 3, 32, 32], { dtype });
      const a = hs.forward(x);
      const b = target.forward(x);
      assert.ok(maxAbs(a, b) < 1e-10 * Math.max(1, (b.abs().max() as Tensor).item()), `${mode}: ${maxAbs(a, b)}`);
    });
    for (const t of scales.values()) t.dispose();
    hs.dispose();
    target.dispose();
  }
});

describe('handler', () => {
  test('public check values through the handler: B1 stage1.1 channel 0 Grad Mults (s^2 + t^2 + 1 by hand from the file s, t)', () => {
    const scales = loadScaleFile(scaleFile('RepOpt-VGG-B1-scales.pth'), 'RepOpt-VGG-B1');
    const sites = repOptVggSites(vggBlockLayout(REPOPT_VGG_CONFIGS.B1), scales);
    assert.equal(sites.length, 28);
    const site = sites.find((s) => s.param === 'stage1.1.conv.weight')!;
    const handler = new RepOptHandler([site]);
    const at = (m: Tensor, o: number, i: number, y: number, x: number) => m.narrow(0, o, 1).narrow(1, i, 1).narrow(2, y, 1).narrow(3, x, 1).item();
    const sgd = handler.gradMults('sgd').get('stage1.1.conv.weight')!;
    assert.deepEqual(sgd.shape, [128, 128, 3, 3]);
    assert.ok(Math.abs(at(sgd, 0, 0, 1, 1) - 4.5919304) < 1e-6);
    assert.ok(Math.abs(at(sgd, 0, 1, 1, 1) - 3.5919306) < 1e-6);
    assert.ok(Math.abs(at(sgd, 0, 0, 0, 0) - 1.2364552) < 1e-6);
    const adam = handler.gradMults('adamw').get('stage1.1.conv.weight')!;
    assert.ok(Math.abs(at(adam, 0, 0, 1, 1) - 3.6467156) < 1e-6);
    assert.ok(Math.abs(at(adam, 0, 1, 1, 1) - 2.6467159) < 1e-6);
    assert.ok(Math.abs(at(adam, 0, 0, 0, 0) - 1.1119601) < 1e-6);
    // Identity init: the searched scale_identity by default, 1 on request.
    assert.deepEqual(site.identityInit, [scales.get('stage1.1.scale_identity.weight')!.toArray()]);
    assert.deepEqual(repOptVggSites(vggBlockLayout(REPOPT_VGG_CONFIGS.B1), scales, { identityInit: 'one' })[2].identityInit, [1]);
    assert.equal(sites[0].identityInit, undefined);
    for (const t of [sgd, adam, ...scales.values()]) t.dispose();
  });

  test('Rule of Initialization on a target model: s = t = 0 leaves exactly the identity; gradMults cover every kernel', () => {
    torch.manualSeed(1);
    const model = new RepOptVGG({ ...SMALL, mode: 'target', numClasses: 10, dtype: 'float64' });
    const scales = randomScales(model, 2);
    for (const [k, t] of scales) if (!k.includes('identity')) torch.noGrad(() => t.zero_());
    for (const init of ['searched', 'one'] as const) {
      repOptVggHandler(model, scales, { identityInit: init }).reinitialize(model);
      const blk = model.blocks[2] as TargetBlock; // stage1.1, 16 -> 16
      assert.equal(blk.info.name, 'stage1.1');
      const w = blk.conv.weight.toArray();
      const v = scales.get('stage1.1.scale_identity.weight')!.toArray();
      for (let o = 0; o < 16; o++)
        for (let i = 0; i < 16; i++)
          for (let k = 0; k < 9; k++) {
            const want = o === i && k === 4 ? (init === 'searched' ? v[o] : 1) : 0;
            assert.ok(Math.abs(w[(o * 16 + i) * 9 + k] - want) < 1e-7);
          }
      assert.ok((model.blocks[1] as TargetBlock).conv.weight.toArray().every((x) => x === 0), 'stage1.0 has no identity');
    }
    const h = repOptVggHandler(model, randomScales(model, 3));
    h.reinitialize(model);
    const mults = h.gradMults('sgd');
    assert.deepEqual([...mults.keys()], model.layout.map((b) => `${b.name}.conv.weight`));
    const params = new Map(model.namedParameters());
    for (const [k, m] of mults) assert.deepEqual(m.shape, params.get(k)!.shape);
    // The mult of one block equals the CSLA description's, directly.
    const direct = gradMult(h.sites[3].spec, 'sgd');
    assert.equal(maxAbs(direct, mults.get('stage2.0.conv.weight')!), 0);
    model.dispose();
  });

  test('reinitialize refuses a trained model (BN weight != 1) unless forced; the handler wants a target model and matching scales', () => {
    const model = new RepOptVGG({ ...SMALL, mode: 'target', numClasses: 10 });
    const scales = randomScales(model, 4);
    const h = repOptVggHandler(model, scales);
    torch.noGrad(() => (model.blocks[3] as TargetBlock).bn.weight!.fill_(2));
    assert.throws(() => h.reinitialize(model), /not fresh.*stage2\.0\.bn/);
    const before = (model.blocks[3] as TargetBlock).conv.weight.clone();
    h.reinitialize(model, { force: true });
    assert.ok(maxAbs(before, (model.blocks[3] as TargetBlock).conv.weight) > 0);
    const hs = new RepOptVGG({ ...SMALL, mode: 'hs', numClasses: 10 });
    assert.throws(() => repOptVggHandler(hs, scales), /'hs' mode/);
    const missing = new Map(scales);
    missing.delete('stage2.1.scale_1x1.weight');
    assert.throws(() => repOptVggHandler(model, missing), /missing scale 'stage2\.1\.scale_1x1\.weight' \(expected shape \[32\]\)/);
    const bad = new Map(scales);
    bad.set('stage0.scale_conv.weight', torch.ones([3]));
    assert.throws(() => repOptVggHandler(model, bad), /'stage0\.scale_conv\.weight' has shape \[3\], expected \[16\]/);
    model.dispose();
    hs.dispose();
  });
});

test('strict loading: keys of another mode, missing keys and shape mismatches are errors naming the key', () => {
  const target = new RepOptVGG({ ...SMALL, mode: 'target', numClasses: 10 });
  const hs = new RepOptVGG({ ...SMALL, mode: 'hs', numClasses: 10 });
  assert.throws(() => target.loadStateDict(hs.stateDict()), /unexpected keys: .*stage0\.scale_conv\.weight/);
  assert.throws(() => hs.loadStateDict(target.stateDict()), /missing keys: .*stage0\.scale_conv\.weight/);
  const wide = new RepOptVGG({ ...SMALL, mode: 'target', numClasses: 11 });
  assert.throws(() => target.loadStateDict(wide.stateDict()), /shape mismatch for 'linear\.weight'/);
  for (const m of [target, hs, wide]) m.dispose();
});

// ------------------------------------------------------------ PyTorch both ways

const PY_MODEL = String.raw`
import sys, math, torch, torch.nn as nn, torch.nn.functional as F

class Scale(nn.Module):
    def __init__(self, c, v, trainable=True):
        super().__init__()
        self.weight = nn.Parameter(torch.full((c,), float(v)), requires_grad=trainable)
    def forward(self, x):
        return x * self.weight.view(1, -1, 1, 1)

class SE(nn.Module):
    def __init__(self, c, k):
        super().__init__()
        self.down = nn.Conv2d(c, k, 1, bias=True)
        self.up = nn.Conv2d(k, c, 1, bias=True)
    def forward(self, x):
        return x * torch.sigmoid(self.up(F.relu(self.down(F.adaptive_avg_pool2d(x, 1)))))

class Block(nn.Module):
    def __init__(self, mode, cin, cout, stride, init, se):
        super().__init__()
        self.mode = mode
        self.ident = cin == cout and stride == 1
        if mode == 'target':
            self.conv = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn = nn.BatchNorm2d(cout)
        elif mode == 'repvgg':
            self.conv_3x3 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn_3x3 = nn.BatchNorm2d(cout)
            self.conv_1x1 = nn.Conv2d(cin, cout, 1, stride, 0, bias=False)
            self.bn_1x1 = nn.BatchNorm2d(cout)
            if self.ident:
                self.bn_identity = nn.BatchNorm2d(cout)
        else:
            self.conv = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.scale_conv = Scale(cout, init, mode == 'hs')
            self.conv_1x1 = nn.Conv2d(cin, cout, 1, stride, 0, bias=False)
            self.scale_1x1 = Scale(cout, init, mode == 'hs')
            if self.ident:
                self.scale_identity = Scale(cout, 1.0)
            self.bn = nn.BatchNorm2d(cout)
        self.post_se = SE(cout, cout // 4) if se else nn.Identity()
    def forward(self, x):
        if self.mode == 'target':
            y = self.bn(self.conv(x))
        elif self.mode == 'repvgg':
            y = self.bn_3x3(self.conv_3x3(x)) + self.bn_1x1(self.conv_1x1(x))
            if self.ident:
                y = y + self.bn_identity(x)
        else:
            y = self.scale_conv(self.conv(x)) + self.scale_1x1(self.conv_1x1(x))
            if self.ident:
                y = y + self.scale_identity(x)
            y = self.bn(y)
        return self.post_se(F.relu(y))

class Net(nn.Module):
    def __init__(self, mode, blocks, widths, classes, in_ch=3, strides=(2, 2, 2, 2, 2), se=False):
        super().__init__()
        cin = min(64, int(64 * widths[0]))
        self.stage0 = Block(mode, in_ch, cin, strides[0], 1.0, se)
        for s, (base, n) in enumerate(zip((64, 128, 256, 512), blocks)):
            cout = int(base * widths[s])
            layers = []
            for i in range(n):
                layers.append(Block(mode, cin, cout, strides[s + 1] if i == 0 else 1, 1.0 if i == 0 else math.sqrt(2.0 / i), se))
                cin = cout
            setattr(self, 'stage%d' % (s + 1), nn.Sequential(*layers))
        self.linear = nn.Linear(cin, classes)
    def forward(self, x):
        for s in range(5):
            x = getattr(self, 'stage%d' % s)(x)
        return self.linear(F.adaptive_avg_pool2d(x, 1).flatten(1))

CASES = [('target', False), ('hs', False), ('csla', True), ('repvgg', True)]
def build(mode, se):
    return Net(mode, (2, 3, 1, 1), (0.25, 0.25, 0.25, 0.25), 10, 3, (2, 2, 2, 2, 2), se)
`;

const CASES: [RepOptVGGMode, boolean][] = [['target', false], ['hs', false], ['csla', true], ['repvgg', true]];

test('our state dicts load strictly into a PyTorch model of the same naming; outputs equal', () => {
  const outputs: Record<string, Tensor> = {};
  torch.manualSeed(21);
  const x = torch.keep(torch.randn([2, 3, 32, 32]));
  for (const [mode, se] of CASES) {
    const m = new RepOptVGG({ ...SMALL, mode, numClasses: 10, postSE: se });
    randomizeBN(m, 22);
    if (mode === 'hs' || mode === 'csla') m.loadStateDict(randomScales(m, 23), false);
    m.eval();
    savePth(path.join(tmp, `ours-${mode}.pth`), m.stateDict());
    outputs[mode] = torch.keep(torch.noGrad(() => m.forward(x)));
    m.dispose();
  }
  const io = new PyOrderedDict();
  io.set('x', x);
  for (const [k, v] of Object.entries(outputs)) io.set(k, v);
  savePth(path.join(tmp, 'ours-io.pth'), io);
  const out = runPythonScript(
    `${PY_MODEL}
d = sys.argv[1]
io = torch.load(d + '/ours-io.pth')
for mode, se in CASES:
    net = build(mode, se)
    net.load_state_dict(torch.load(d + '/ours-%s.pth' % mode), strict=True)
    net.eval()
    with torch.no_grad():
        y = net(io['x'])
    print(mode, float((y - io[mode]).abs().max()), float(io[mode].abs().max()))
`,
    [tmp],
  );
  const lines = out.trim().split('\n');
  assert.equal(lines.length, CASES.length);
  for (const line of lines) {
    const [mode, diff, scale] = line.split(' ');
    assert.ok(Number(diff) <= 1e-5 * Math.max(1, Number(scale)), `${mode}: PyTorch differs by ${diff}`);
  }
});

test('release-format state dicts saved by PyTorch ({"model": ...} and flat) load strictly into ours; outputs equal', () => {
  runPythonScript(
    `${PY_MODEL}
d = sys.argv[1]
torch.manual_seed(0)
x = torch.randn(2, 3, 32, 32)
io = {'x': x}
for mode, se in CASES:
    net = build(mode, se)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 1.5); m.bias.data.normal_(0, 0.1)
            m.running_mean.normal_(0, 0.1); m.running_var.uniform_(0.5, 1.5); m.num_batches_tracked.fill_(7)
        if isinstance(m, Scale):
            m.weight.data.normal_(1, 0.3)
    net.eval()
    with torch.no_grad():
        io[mode] = net(x)
    if mode in ('target', 'csla'):
        torch.save({'model': net.state_dict(), 'epoch': 3}, d + '/py-%s.pth' % mode)
    else:
        torch.save(net.state_dict(), d + '/py-%s.pth' % mode)
torch.save(io, d + '/py-io.pth')
`,
    [tmp],
  );
  const io = loadPth(path.join(tmp, 'py-io.pth')) as Map<string, Tensor>;
  for (const [mode, se] of CASES) {
    const m = new RepOptVGG({ ...SMALL, mode, numClasses: 10, postSE: se });
    m.loadStateDict(extractStateDict(loadPth(path.join(tmp, `py-${mode}.pth`))));
    m.eval();
    torch.tidy(() => {
      const y = torch.noGrad(() => m.forward(io.get('x')!));
      const want = io.get(mode)!;
      assert.ok(maxAbs(y, want) <= 1e-5 * Math.max(1, (want.abs().max() as Tensor).item()), `${mode}: ${maxAbs(y, want)}`);
    });
    m.dispose();
  }
});

test('RepOpt-VGG blocks are CslaBlocks with the release\'s names: the generic engine reads and writes their keys', () => {
  const dtype = 'float64' as const;
  torch.manualSeed(21);
  const hs = new RepOptVGG({ ...SMALL, mode: 'hs', numClasses: 10, dtype });
  const scales = randomScales(hs, 4, dtype);
  loadScales(hs, scales);
  const ex = extractScales(hs);
  assert.deepEqual([...ex.keys()], [...scales.keys()], 'generic extractScales gives the scale-file keys in model order');
  assert.ok([...ex].every(([k, t]) => maxAbs(t, scales.get(k)!) === 0));
  const twin = new RepOptVGG({ ...SMALL, mode: 'csla', numClasses: 10, dtype, postSE: true });
  loadScales(twin, scales);
  randomizeBN(twin, 8);
  // the release's csla: frozen scales stay parameters (requiresGrad off), the identity scale trains
  const frozen = twin.namedParameters().filter(([, p]) => !p.requiresGrad).map(([k]) => k);
  assert.ok(frozen.length > 0 && frozen.every((k) => /scale_(conv|1x1)\.weight$/.test(k)));
  const target = new RepOptVGG({ ...SMALL, mode: 'target', numClasses: 10, dtype, postSE: true });
  // The generic sites are the RepOpt-VGG handler's: same params, same Grad Mults.
  const generic = new RepOptHandler(repOptSites(target, scales)).gradMults('sgd');
  const vgg = repOptVggHandler(target, scales).gradMults('sgd');
  assert.deepEqual([...generic.keys()], [...vgg.keys()]);
  for (const [k, m] of generic) assert.equal(maxAbs(m, vgg.get(k)!), 0, k);
  // Rule of Initialization from the twin: target and csla twin compute the same function.
  initializeFromTwin(target, twin);
  twin.eval();
  target.eval();
  torch.tidy(() => {
    const x = torch.randn([2, 3, 32, 32], { dtype });
    const a = twin.forward(x);
    const b = target.forward(x);
    assert.ok(maxAbs(a, b) < 1e-10 * Math.max(1, (b.abs().max() as Tensor).item()), `${maxAbs(a, b)}`);
  });
  for (const t of [...scales.values(), ...ex.values(), ...generic.values(), ...vgg.values()]) t.dispose();
  for (const m of [hs, twin, target]) m.dispose();
});
