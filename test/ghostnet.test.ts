/**
 * RepOpt-GhostNet: the stage table against the release's 0.5x scale file, every mode's forward,
 * parameter counts, scale loading by name (and its errors), the handler's Grad Mults and Rule of
 * Initialization, and hs == target with the fused kernel.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as torch from '../src/torch/index.js';
import '../src/models/families.js'; // registers the families with their architectures and scale schemes
import { loadPth, extractStateDict } from '../src/io/pth.js';
import { freshBranchKernels, kernelShape, RepSGD } from '../src/repopt/index.js';
import { SGD } from '../src/optim/index.js';
import { normalizeSpec } from '../src/repopt/csla.js';
import { cslaBlocks, extractScales, initializeFromTwin, repOptSites } from '../src/repopt/block.js';
import { F } from '../src/torch/index.js';
import { createModel, getArch } from '../src/models/registry.js';
import {
  GhostNet,
  GHOSTNET_MODES,
  GHOSTNET_PARAMS,
  GHOSTNET_WIDTHS,
  ghostnetArchName,
  ghostnetHandler,
  ghostnetHsToTarget,
  ghostnetLayout,
  ghostnetMacs,
  ghostnetScaleShapes,
  ghostnetSites,
  extractGhostnetScales,
  loadGhostnetScales,
  pickGhostnetScales,
} from '../src/models/ghostnet.js';
import { scaleFile } from './helpers/paths.js';

torch.setNumThreads(1); // tiny tensors: threads only add synchronisation cost

const FILE = scaleFile('RepOptGhostNet_0_5x_scales.pth');

function releaseScales(): Map<string, torch.Tensor> {
  return extractStateDict(loadPth(FILE), FILE);
}

function maxAbsDiff(a: torch.Tensor, b: torch.Tensor): number {
  return torch.tidy(() => a.sub(b).abs().max().item());
}

test('0.5x stage table: the Ghost modules\' widths are the release\'s scale-file channels', () => {
  const m = new GhostNet({ width: 0.5 });
  const w = new Map(m.ghostSites().map((s) => [s.prefix, s.channels]));
  const expect: [string, number, number][] = [
    ['0.0', 4, 8], ['1.0', 12, 12], ['2.0', 20, 12], ['3.0', 20, 20], ['4.0', 32, 20], ['5.0', 60, 40],
    ['6.0', 52, 40], ['6.1', 60, 40], ['6.2', 60, 40], ['6.3', 120, 56], ['6.4', 168, 56], ['7.0', 168, 80],
    ['8.0', 240, 80], ['8.1', 240, 80], ['8.2', 240, 80], ['8.3', 240, 80],
  ];
  assert.equal(w.size, expect.length * 2);
  assert.deepEqual(ghostnetLayout(0.5), m.ghostSites());
  for (const [b, g1, g2] of expect) {
    assert.equal(w.get(`blocks.${b}.ghost1`), g1, `blocks.${b}.ghost1`);
    assert.equal(w.get(`blocks.${b}.ghost2`), g2, `blocks.${b}.ghost2`);
  }
  // ... and the file's keys and shapes are exactly the model's scale keys.
  const sd = releaseScales();
  const want = ghostnetScaleShapes(m);
  assert.equal(sd.size, 64);
  assert.deepEqual([...sd.keys()].sort(), [...want.keys()].sort());
  for (const [k, s] of want) assert.deepEqual(sd.get(k)!.shape, s, k);
  m.dispose();
});

test('0.5x builds in every mode with the right names and a [2, 10] forward on [2, 3, 32, 32]', () => {
  torch.manualSeed(0);
  const x = torch.keep(torch.randn([2, 3, 32, 32]));
  for (const mode of GHOSTNET_MODES) {
    const m = createModel('RepOpt-GhostNet-0.5x', { mode, numClasses: 10 });
    const params = new Map(m.namedParameters());
    const sd = m.stateDict();
    const g = 'blocks.0.0.ghost1';
    assert.deepEqual(params.get(`${g}.cheap_operation.0.weight`)?.shape, [4, 1, 3, 3], mode);
    assert.deepEqual(params.get(`${g}.primary_conv.0.weight`)?.shape, [4, 8, 1, 1], mode);
    assert.ok(params.has('conv_stem.weight') && params.has('conv_head.bias') && params.has('classifier.weight'), mode);
    assert.ok(params.has('blocks.3.0.se.conv_reduce.weight') && params.has('blocks.1.0.conv_dw.weight') && params.has('blocks.1.0.shortcut.2.weight'), mode);
    assert.ok(params.has('blocks.9.0.conv.weight') && params.has('blocks.9.0.bn1.weight'), mode);
    // The release's names: final_bn after the cheap op (target, hs, csla), a BN at cheap_operation.1 and
    // fusion_bn (a BN, not a Sequential) in rep; scales at cheap_operation.1 and fusion_scale in hs/csla.
    assert.equal(sd.has(`${g}.final_bn.running_mean`), mode !== 'rep', mode);
    assert.equal(sd.has(`${g}.fusion_bn.running_var`), mode === 'rep', mode);
    assert.equal(sd.has(`${g}.cheap_operation.1.running_mean`), mode === 'rep', mode);
    assert.equal(params.has(`${g}.fusion_scale.weight`), mode === 'hs' || mode === 'csla', mode);
    if (mode === 'target') assert.ok(![...sd.keys()].some((k) => k.includes('cheap_operation.1')));
    if (mode === 'hs' || mode === 'csla') {
      // hs trains the cheap scale; csla holds it frozen under the same key.
      assert.equal(params.has(`${g}.cheap_operation.1.weight`), mode === 'hs', mode);
      assert.deepEqual(sd.get(`${g}.cheap_operation.1.weight`)?.shape, [4], mode);
    }
    for (const t of sd.values()) t.dispose();
    for (const train of [true, false]) {
      m.train(train);
      torch.tidy(() => {
        const y = m.forward(x);
        assert.deepEqual(y.shape, [2, 10], `${mode} train=${train}`);
        assert.ok(Number.isFinite(y.abs().sum().item()), `${mode} train=${train}`);
      });
    }
    m.dispose();
  }
  x.dispose();
});

test('registered widths: names, modes, target parameter counts (1000 classes) and MACs', () => {
  for (const w of GHOSTNET_WIDTHS) {
    const name = ghostnetArchName(w);
    const a = getArch(name);
    assert.deepEqual(a.modes, ['target', 'hs', 'csla', 'rep']);
    const m = a.create();
    assert.equal(m.numParameters(), GHOSTNET_PARAMS[name], name);
    assert.equal(a.params, GHOSTNET_PARAMS[name]);
    m.dispose();
  }
  assert.ok(getArch('RepOpt-GhostNet-1.0x') && getArch('RepOpt-GhostNet-2.0x') && getArch('RepOpt-GhostNet-0.58x'));
  // RepGhostNet's published sizes: 0.5x 2.3M params / 43M MACs, 1.0x 4.1M / 142M, 2.0x 9.8M / 516M.
  assert.equal(Math.round(GHOSTNET_PARAMS['RepOpt-GhostNet-0.5x'] / 1e5), 23);
  assert.equal(Math.round(ghostnetMacs(0.5) / 1e6), 43);
  assert.equal(Math.round(ghostnetMacs(1.0) / 1e6), 142);
  assert.equal(Math.round(ghostnetMacs(2.0) / 1e6), 516);
});

test('release 0.5x scales load by name into the handler: every key matched, shapes = the model\'s', () => {
  const target = new GhostNet({ width: 0.5, numClasses: 10 });
  const scales = loadGhostnetScales(FILE, target);
  assert.equal(scales.size, 64);
  const params = new Map(target.namedParameters());
  const sites = ghostnetSites(scales, { model: target });
  assert.equal(sites.length, 32);
  assert.deepEqual(sites.map((s) => s.param), target.ghostSites().map((s) => `${s.prefix}.cheap_operation.0.weight`));
  for (const s of sites) {
    const p = params.get(s.param);
    assert.ok(p, s.param);
    assert.deepEqual(kernelShape(s.spec), p.shape, s.param);
    assert.equal(s.spec.groups, p.shape[0]);
  }
  // Without the model: same sites, in the names' natural order.
  assert.deepEqual(ghostnetSites(scales).map((s) => s.param), sites.map((s) => s.param));
  // An hs checkpoint (all its weights) yields the same scales by name.
  const hs = new GhostNet({ width: 0.5, mode: 'hs', numClasses: 10 });
  hs.loadStateDict(scales, false);
  const hsSd = hs.stateDict();
  const picked = pickGhostnetScales(hsSd, target);
  for (const [k, t] of scales) assert.equal(maxAbsDiff(picked.get(k)!, t), 0, k);
  const extracted = extractGhostnetScales(hs);
  assert.deepEqual([...extracted.keys()], [...ghostnetScaleShapes(target).keys()]);
  for (const [k, t] of scales) assert.equal(maxAbsDiff(extracted.get(k)!, t), 0, k);
  assert.throws(() => extractGhostnetScales(target), /mode 'target'/);
  assert.throws(() => ghostnetHandler(scales, hs), /'hs' mode/);
  assert.deepEqual(ghostnetSites(scales, { width: 0.5, identityInit: 'one' })[5].identityInit, [1]);
  assert.deepEqual(ghostnetSites(scales, { width: 0.5 })[0].identityInit, [scales.get('blocks.0.0.ghost1.fusion_scale.weight')!.toArray()]);
  for (const t of [...scales.values(), ...hsSd.values(), ...extracted.values()]) t.dispose();
  hs.dispose();
  target.dispose();
});

test('hs init of the cheap scales reproduces the release\'s untouched late-stage values (sqrt(2/(k+1)))', () => {
  const hs = new GhostNet({ width: 0.5, mode: 'hs', numClasses: 10 });
  const sd = hs.stateDict();
  const file = releaseScales();
  const late = ['7.0.ghost2', '8.0.ghost1', '8.0.ghost2', '8.1.ghost1', '8.1.ghost2', '8.2.ghost1', '8.2.ghost2', '8.3.ghost1', '8.3.ghost2'];
  late.forEach((g, i) => {
    const k = `blocks.${g}.cheap_operation.1.weight`;
    const init = sd.get(k)!.toArray()[0];
    assert.ok(Math.abs(init - Math.sqrt(2 / (i + 3))) < 1e-7, k);
    const got = file.get(k)!.toArray() as number[];
    for (const v of got) assert.ok(Math.abs(v - init) < 1e-2, `${k}: release ${v} vs init ${init}`);
    assert.equal(sd.get(`blocks.${g}.fusion_scale.weight`)!.toArray()[0], 1);
  });
  for (const t of [...sd.values(), ...file.values()]) t.dispose();
  hs.dispose();
});

test('Grad Mult: centre s^2 + 1 (SGD), |s| + 1 (AdamW); off-centre s^2, |s|', () => {
  const scales = releaseScales();
  const handler = ghostnetHandler(scales);
  let negatives = 0;
  for (const rule of ['sgd', 'adamw'] as const) {
    const mults = handler.gradMults(rule, { dtype: 'float64' });
    assert.equal(mults.size, 32);
    for (const site of ['blocks.2.0.ghost1', 'blocks.0.0.ghost2', 'blocks.8.3.ghost1']) {
      const s = scales.get(`${site}.cheap_operation.1.weight`)!.toArray() as number[];
      const m = mults.get(`${site}.cheap_operation.0.weight`)!;
      assert.deepEqual(m.shape, [s.length, 1, 3, 3]);
      const v = m.toArray() as number[];
      s.forEach((sc, c) => {
        if (sc < 0) negatives++;
        const p = rule === 'sgd' ? sc * sc : Math.abs(sc);
        for (let t = 0; t < 9; t++) {
          const want = t === 4 ? p + 1 : p;
          assert.ok(Math.abs(v[c * 9 + t] - want) <= 1e-12 * want, `${rule} ${site}[${c}] tap ${t}: ${v[c * 9 + t]} vs ${want}`);
        }
      });
    }
    for (const t of mults.values()) t.dispose();
  }
  assert.ok(negatives > 0, 'the checked site should include negative scales');
  for (const t of scales.values()) t.dispose();
});

test('Rule of Initialization: target kernel = s * W_fresh + fusion at the centre', () => {
  const scales = releaseScales();
  const target = new GhostNet({ width: 0.5, numClasses: 10 });
  const handler = ghostnetHandler(scales, target);
  torch.manualSeed(123);
  handler.reinitialize(target);
  torch.manualSeed(123);
  const params = new Map(target.namedParameters());
  for (const site of handler.sites) {
    const prefix = site.param.slice(0, -'.cheap_operation.0.weight'.length);
    const [fresh] = freshBranchKernels(site.spec);
    const s = scales.get(`${prefix}.cheap_operation.1.weight`)!;
    const f = scales.get(`${prefix}.fusion_scale.weight`)!;
    const c = s.shape[0];
    torch.tidy(() => {
      const want = fresh.mul(s.view([c, 1, 1, 1]));
      const centre = want.narrow(2, 1, 1).narrow(3, 1, 1);
      centre.add_(f.view([c, 1, 1, 1]));
      const got = params.get(site.param)!;
      assert.ok(maxAbsDiff(got, want) <= 1e-6, `${site.param}: ${maxAbsDiff(got, want)}`);
      // The kernel really was replaced (not left at its default init): the centre carries fusion.
      assert.ok(maxAbsDiff(got.narrow(2, 1, 1).narrow(3, 1, 1).flatten(), fresh.mul(s.view([c, 1, 1, 1])).narrow(2, 1, 1).narrow(3, 1, 1).flatten()) > 0.1);
    });
    fresh.dispose();
  }
  // A trained model is refused.
  torch.noGrad(() => target.namedParameters().find(([n]) => n === 'bn1.weight')![1].fill_(2));
  assert.throws(() => handler.reinitialize(target), /not fresh/);
  for (const t of scales.values()) t.dispose();
  target.dispose();
});

for (const mode of ['hs', 'csla'] as const) test(`${mode} forward (BN eval, release scales) equals the target forward with the fused kernels (float64)`, () => {
  torch.manualSeed(7);
  const hs = new GhostNet({ width: 0.5, mode, numClasses: 10, dtype: 'float64' });
  const scales = loadGhostnetScales(FILE, hs);
  hs.loadStateDict(scales, false);
  // Non-trivial BN statistics and affine parameters everywhere.
  torch.noGrad(() =>
    torch.tidy(() => {
      for (const [n, t] of [...hs.namedParameters(), ...hs.namedBuffers()]) {
        if (/(running_var)$/.test(n)) t.copy_(torch.rand(t.shape, { dtype: 'float64' }).add(0.5));
        else if (/running_mean$/.test(n) || (/\.(final_bn|bn1|bn_dw|primary_conv\.1|shortcut\.[13])\.bias$/.test(n))) {
          t.copy_(torch.randn(t.shape, { dtype: 'float64' }).mul(0.1));
        } else if (/\.(final_bn|bn1|bn_dw|primary_conv\.1|shortcut\.[13])\.weight$/.test(n) || n === 'bn1.weight') {
          t.copy_(torch.rand(t.shape, { dtype: 'float64' }).add(0.5));
        }
      }
    }),
  );
  hs.eval();
  const target = new GhostNet({ width: 0.5, mode: 'target', numClasses: 10, dtype: 'float64' });
  const fused = ghostnetHsToTarget(hs);
  target.loadStateDict(fused); // strict: every target key present, none left over
  target.eval();
  // The fused kernel by hand for one module: s * W + f at the centre.
  const g = 'blocks.6.3.ghost1';
  const hsParams = new Map([...hs.namedParameters(), ...hs.namedBuffers()]);
  torch.tidy(() => {
    const w = hsParams.get(`${g}.cheap_operation.0.weight`)!;
    const s = hsParams.get(`${g}.cheap_operation.1.weight`)!.view([120, 1, 1, 1]);
    const f = hsParams.get(`${g}.fusion_scale.weight`)!.view([120, 1, 1, 1]);
    const want = w.mul(s);
    want.narrow(2, 1, 1).narrow(3, 1, 1).add_(f);
    assert.ok(maxAbsDiff(fused.get(`${g}.cheap_operation.0.weight`)!, want) < 1e-15);
  });
  torch.tidy(() => {
    const x = torch.randn([2, 3, 32, 32], { dtype: 'float64' });
    const a = hs.forward(x);
    const b = target.forward(x);
    const scale = a.abs().max().item();
    assert.ok(scale > 1e-3, 'output should not vanish');
    assert.ok(maxAbsDiff(a, b) <= 1e-10 * scale, `hs vs target: ${maxAbsDiff(a, b)} (scale ${scale})`);
    // Sanity: the unfused kernel gives something else.
    const plain = new GhostNet({ width: 0.5, mode: 'target', numClasses: 10, dtype: 'float64' });
    const sd = new Map(fused);
    const raw = hs.stateDict();
    for (const k of sd.keys()) if (k.endsWith('.cheap_operation.0.weight')) sd.set(k, raw.get(k)!);
    plain.loadStateDict(sd);
    plain.eval();
    assert.ok(maxAbsDiff(plain.forward(x), a) > 1e-3 * scale);
    plain.dispose();
    for (const t of raw.values()) t.dispose();
  });
  for (const t of [...scales.values(), ...fused.values()]) t.dispose();
  hs.dispose();
  target.dispose();
});

test('scale errors name the missing, unexpected or mis-shaped keys', () => {
  const m05 = new GhostNet({ width: 0.5, numClasses: 10 });
  const scales = releaseScales();
  const missing = new Map(scales);
  missing.delete('blocks.6.2.ghost2.fusion_scale.weight');
  missing.delete('blocks.0.0.ghost1.cheap_operation.1.weight');
  assert.throws(
    () => pickGhostnetScales(missing, m05, 'my.pth'),
    (e: Error) =>
      /my\.pth/.test(e.message) &&
      /missing scale keys: blocks\.0\.0\.ghost1\.cheap_operation\.1\.weight, blocks\.6\.2\.ghost2\.fusion_scale\.weight/.test(e.message),
  );
  assert.throws(() => ghostnetSites(missing), /missing scale keys: .*blocks\.0\.0\.ghost1\.cheap_operation\.1\.weight/);
  const extra = new Map(scales);
  extra.set('blocks.8.4.ghost1.fusion_scale.weight', scales.get('blocks.8.3.ghost1.fusion_scale.weight')!);
  assert.throws(() => pickGhostnetScales(extra, m05), /unexpected scale keys: blocks\.8\.4\.ghost1\.fusion_scale\.weight/);
  assert.throws(() => ghostnetSites(new Map([...scales, ['linear.weight', scales.get('blocks.0.0.ghost1.fusion_scale.weight')!]])), /not GhostNet scales: linear\.weight/);
  // The 0.5x file against a 1.0x model: shapes differ, each named with both shapes.
  const m10 = new GhostNet({ width: 1.0, numClasses: 10 });
  assert.throws(() => loadGhostnetScales(FILE, m10), /mis-shaped scale keys: blocks\.0\.0\.ghost1\.fusion_scale\.weight \[4\] \(model: \[8\]\)/);
  // A target checkpoint is not taken for scales (it has neither scale key).
  const tsd = m05.stateDict();
  assert.throws(() => pickGhostnetScales(tsd, m05), /missing scale keys: blocks\.0\.0\.ghost1\.fusion_scale\.weight/);
  for (const t of [...scales.values(), ...tsd.values()]) t.dispose();
  m05.dispose();
  m10.dispose();
});

test('whole 0.5x network, float64: csla trained by SGD and target trained by RepSGD (Grad Mults) stay one function', () => {
  torch.manualSeed(40);
  const csla = new GhostNet({ width: 0.5, mode: 'csla', numClasses: 10, dtype: 'float64' });
  const scales = loadGhostnetScales(FILE, csla);
  csla.loadStateDict(scales, false); // the release's constant scales and identity init
  const target = new GhostNet({ width: 0.5, mode: 'target', numClasses: 10, dtype: 'float64' });
  const start = ghostnetHsToTarget(csla);
  target.loadStateDict(start); // the Rule of Initialization, from this very csla model
  const startKernel = torch.keep(start.get('blocks.6.3.ghost1.cheap_operation.0.weight')!.clone());
  for (const t of start.values()) t.dispose();
  const mults = ghostnetHandler(scales, target).gradMults('sgd', { dtype: 'float64' });
  const opts = { lr: 0.05, momentum: 0.9, nesterov: true };
  const pairs: [GhostNet, SGD][] = [
    [csla, new SGD(csla.namedParameters(), opts)],
    [target, new RepSGD(target.namedParameters(), opts, mults)],
  ];
  for (let step = 0; step < 3; step++) {
    const x = torch.randn([8, 3, 64, 64], { dtype: "float64" });
    const y = torch.randint(0, 10, [8]);
    for (const [m, opt] of pairs) {
      torch.manualSeed(100 + step); // the same dropout mask for both (64x64, batch 8: BN over 1x1 maps of 4 images amplifies rounding to 1e-8)
      opt.zeroGrad();
      torch.tidy(() => F.crossEntropy(m.forward(x), y).backward());
      opt.step();
    }
    x.dispose();
    y.dispose();
  }
  const fused = ghostnetHsToTarget(csla);
  const trained = target.stateDict();
  for (const [k, t] of trained) {
    const d = torch.tidy(() => fused.get(k)!.double().sub(t.double()).abs().max().item() / Math.max(1, t.double().abs().max().item()));
    assert.ok(d <= 1e-11, `${k}: csla (fused) and target differ by ${d}`);
  }
  // training moved the kernels (the check is not vacuous)
  const moved = maxAbsDiff(trained.get('blocks.6.3.ghost1.cheap_operation.0.weight')!, startKernel);
  assert.ok(moved > 1e-4, `kernel moved by ${moved}`);
  for (const t of [...scales.values(), ...fused.values(), ...trained.values(), ...mults.values(), startKernel]) t.dispose();
  for (const [m, opt] of pairs) {
    opt.dispose();
    m.dispose();
  }
});

test('the Ghost modules are generic CslaBlocks (hosted): extractScales, repOptSites and initializeFromTwin agree with the GhostNet functions', () => {
  torch.tidy(() => {
    torch.manualSeed(3);
    const hs = new GhostNet({ width: 0.5, mode: 'hs', numClasses: 10, dtype: 'float64' });
    torch.noGrad(() => { for (const [k, t] of hs.namedParameters()) if (/(fusion_scale|cheap_operation\.1)\.weight$/.test(k)) t.copy_(torch.randn(t.shape, { dtype: 'float64' }).mul(0.3).add(0.8)); });
    const blocks = cslaBlocks(hs);
    assert.deepEqual(blocks.map(([n]) => n), hs.ghostSites().map((s) => s.prefix));
    const generic = extractScales(hs);
    const own = extractGhostnetScales(hs);
    assert.deepEqual([...generic.keys()].sort(), [...own.keys()].sort());
    for (const [k, t] of own) assert.deepEqual(generic.get(k)!.toArray(), t.toArray(), k);
    const target = new GhostNet({ width: 0.5, mode: 'target', numClasses: 10, dtype: 'float64' });
    const a = repOptSites(target, own);
    const b = ghostnetSites(own, { model: target });
    const norm = (x: typeof a) => JSON.parse(JSON.stringify(x.map((site) => ({ param: site.param, identityInit: site.identityInit, spec: normalizeSpec(site.spec) }))));
    assert.deepEqual(norm(a), norm(b));
    initializeFromTwin(target, hs);
    const want = ghostnetHsToTarget(hs);
    const got = target.stateDict();
    assert.deepEqual([...got.keys()], [...want.keys()]);
    for (const [k, t] of want) assert.ok(got.get(k)!.sub(t).abs().max().item() < 1e-12, k);
  });
});
