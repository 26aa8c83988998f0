/**
 * Scale files: the release's four RepOpt-VGG files as they are, hyper-search
 * checkpoints, errors (missing key, wrong shape, wrong architecture, other
 * family), our own files (PyTorch checkpoint + JSON summary, read by PyTorch),
 * and `repopt scales --json` against values computed here from the tensors.
 */
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import path from 'node:path';
import * as torch from '../src/torch/index.js';
import '../src/models/families.js'; // registers the families with their architectures and scale schemes
import { loadPth, savePth } from '../src/io/pth.js';
import { PyOrderedDict, type PyValue } from '../src/io/pickle.js';
import { checkScales, loadScaleFile, saveScaleFile, summarizeScales, summaryPath, type ScaleMap } from '../src/models/scales.js';
import { vggScaleScheme } from '../src/models/repoptvgg-handler.js';
import { createModel } from '../src/models/registry.js';
import { extractVggScales, type RepOptVGG } from '../src/models/repoptvgg.js';
import { REPO_ROOT, scaleFile } from './helpers/paths.js';
import { runPythonScript } from './helpers/python.js';
import type { ScalesReport } from '../src/cli/scales.js';

torch.setNumThreads(1);

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'scales-'));
after(() => fs.rmSync(tmp, { recursive: true, force: true }));

const B1 = scaleFile('RepOpt-VGG-B1-scales.pth');
const dispose = (m: ScaleMap) => m.forEach((t) => t.dispose());

test('the release\'s files load by name for their architectures, in model order; B1 public totals', () => {
  for (const [file, arch, n] of [
    ['RepOpt-VGG-B1-scales.pth', 'RepOpt-VGG-B1', 79],
    ['RepOpt-VGG-B2-scales.pth', 'RepOpt-VGG-B2', 79],
    ['RepOpt-VGG-L1-scales.pth', 'RepOpt-VGG-L1', 139],
    ['RepOpt-VGG-L2-scales.pth', 'RepOpt-VGG-L2', 139],
  ] as const) {
    const s = loadScaleFile(scaleFile(file), arch);
    assert.equal(s.size, n, file);
    assert.deepEqual([...s.keys()], [...vggScaleScheme.expected(arch).keys()], `${file}: model order`);
    dispose(s);
  }
  const s = loadScaleFile(B1, 'RepOpt-VGG-B1');
  const sum = summarizeScales(s, 'RepOpt-VGG-B1');
  assert.equal(sum.tensors, 79);
  assert.equal(sum.floats, 34_048);
  assert.ok(Math.abs(sum.sum - 19610.035966) < 1e-3, `sum ${sum.sum}`);
  const t = s.get('stage0.scale_1x1.weight')!.toArray().slice(0, 4);
  [1.1733118, 0.3190754, 1.296756, 0.5509108].forEach((v, i) => assert.ok(Math.abs(t[i] - v) < 1e-6));
  dispose(s);
});

function writeVariant(name: string, edit: (sd: PyOrderedDict) => void, wrap = false): string {
  const sd = loadPth(B1) as PyOrderedDict;
  edit(sd);
  const file = path.join(tmp, name);
  savePth(file, wrap ? new Map<PyValue, PyValue>([['model', sd], ['epoch', 240]]) : sd);
  return file;
}

test('errors: a missing key or a wrong shape names the key and the expected shape; a wrong architecture says which fits', () => {
  const missing = writeVariant('missing.pth', (sd) => sd.delete('stage3.7.scale_identity.weight'));
  assert.throws(() => loadScaleFile(missing, 'RepOpt-VGG-B1'), /missing\.pth.*missing scale 'stage3\.7\.scale_identity\.weight' \(expected shape \[512\]\)/);
  const shaped = writeVariant('shaped.pth', (sd) => sd.set('stage2.1.scale_1x1.weight', torch.ones([255])));
  assert.throws(() => loadScaleFile(shaped, 'RepOpt-VGG-B1'), /scale 'stage2\.1\.scale_1x1\.weight' has shape \[255\], expected \[256\]/);
  assert.throws(() => loadScaleFile(B1, 'RepOpt-VGG-B2'), /do not match RepOpt-VGG-B2: scale 'stage1\.0\.scale_conv\.weight' has shape \[128\], expected \[160\].*they fit RepOpt-VGG-B1/);
  assert.throws(() => loadScaleFile(B1, 'RepOpt-VGG-L1'), /missing scale 'stage1\.4\.scale_conv\.weight'.*they fit RepOpt-VGG-B1/);
  assert.throws(() => loadScaleFile(scaleFile('RepOpt-VGG-L1-scales.pth'), 'RepOpt-VGG-B1'), /scale keys RepOpt-VGG-B1 does not have: stage1\.4\..*they fit RepOpt-VGG-L1/);
  assert.throws(() => loadScaleFile(scaleFile('RepOptGhostNet_0_5x_scales.pth'), 'RepOpt-VGG-B1'), /no RepOpt-VGG scale tensors/);
  assert.throws(() => loadScaleFile(B1, 'RepOpt-VGG-B7'), /no scale scheme for architecture 'RepOpt-VGG-B7'/);
  const nan = writeVariant('nan.pth', (sd) => sd.set('stage0.scale_conv.weight', torch.full([64], NaN)));
  assert.throws(() => loadScaleFile(nan, 'RepOpt-VGG-B1'), /'stage0\.scale_conv\.weight' holds a non-finite value/);
});

test('hyper-search checkpoints ({"model": state_dict}, module. prefix): convs, BN and classifier ignored', () => {
  const file = writeVariant('hs-ckpt.pth', (sd) => {
    const entries = [...sd];
    sd.clear();
    sd.set('module.stage0.conv.weight', torch.zeros([64, 3, 3, 3]));
    sd.set('module.stage0.bn.running_var', torch.ones([64]));
    for (const [k, v] of entries) sd.set(`module.${k}`, v);
    sd.set('module.linear.weight', torch.zeros([100, 2048]));
    sd.set('module.linear.bias', torch.zeros([100]));
  }, true);
  const a = loadScaleFile(file, 'RepOpt-VGG-B1');
  const b = loadScaleFile(B1, 'RepOpt-VGG-B1');
  assert.deepEqual([...a.keys()], [...b.keys()]);
  for (const [k, t] of a) assert.deepEqual(t.toArray(), b.get(k)!.toArray());
  dispose(a);
  dispose(b);
});

test('our scale files: flat OrderedDict checkpoint PyTorch reads, JSON summary beside it, round trip; extracted from an hs model', () => {
  const s = loadScaleFile(B1, 'RepOpt-VGG-B1');
  const file = path.join(tmp, 'b1-ours.pth');
  const written = saveScaleFile(file, s, 'RepOpt-VGG-B1');
  assert.equal(written.summary, path.join(tmp, 'b1-ours.json'));
  const summary = JSON.parse(fs.readFileSync(written.summary, 'utf8'));
  assert.equal(summary.arch, 'RepOpt-VGG-B1');
  assert.equal(summary.tensors, 79);
  assert.equal(summary.floats, 34048);
  assert.equal(summary.scales[0].key, 'stage0.scale_conv.weight');
  const py = runPythonScript(
    `import sys, torch, collections
d = torch.load(sys.argv[1]); r = torch.load(sys.argv[2])
assert isinstance(d, collections.OrderedDict), type(d)
assert set(d) == set(r)
assert all(torch.equal(d[k], r[k]) for k in r)
print(len(d), list(d)[0])`,
    [file, B1],
  );
  assert.equal(py.trim(), '79 stage0.scale_conv.weight');
  const back = loadScaleFile(file, 'RepOpt-VGG-B1');
  for (const [k, t] of back) assert.deepEqual(t.toArray(), s.get(k)!.toArray());
  assert.throws(() => saveScaleFile(path.join(tmp, 'x.pth'), s, 'RepOpt-VGG-B2'), /do not match RepOpt-VGG-B2/);
  dispose(back);
  dispose(s);

  const hs = createModel('RepOpt-VGG-A0', { mode: 'hs', numClasses: 100 }) as RepOptVGG;
  const ex = extractVggScales(hs);
  hs.dispose();
  const a0 = path.join(tmp, 'a0.pth');
  saveScaleFile(a0, ex, 'RepOpt-VGG-A0');
  const re = loadScaleFile(a0, 'RepOpt-VGG-A0');
  assert.deepEqual([...re.keys()], [...ex.keys()]);
  assert.ok(re.get('stage3.2.scale_conv.weight')!.toArray().every((v) => v === Math.fround(1)));
  assert.ok(re.get('stage3.1.scale_1x1.weight')!.toArray().every((v) => v === Math.fround(Math.SQRT2)));
  assert.equal(summaryPath('a/b.pth'), 'a/b.json');
  dispose(ex);
  dispose(re);
});

test('checkScales on an in-memory map: model order out, same tensors', () => {
  const s = loadScaleFile(B1, 'RepOpt-VGG-B1');
  const shuffled = new Map([...s].reverse());
  const c = checkScales(shuffled, 'RepOpt-VGG-B1');
  assert.deepEqual([...c.keys()], [...s.keys()]);
  assert.equal(c.get('stage2.3.scale_conv.weight'), s.get('stage2.3.scale_conv.weight'));
  dispose(s);
});

const CLI = path.join(REPO_ROOT, 'dist/src/cli/main.js');

test('repopt scales --json for B1: per-kernel shapes and Grad Mult statistics, checked against the scale tensors', () => {
  const s = loadScaleFile(B1, 'RepOpt-VGG-B1');
  const sv = s.get('stage1.1.scale_conv.weight')!.toArray();
  const tv = s.get('stage1.1.scale_1x1.weight')!.toArray();
  dispose(s);
  for (const rule of ['sgd', 'adamw'] as const) {
    const out = execFileSync(process.execPath, [CLI, 'scales', B1, '--arch', 'RepOpt-VGG-B1', '--rule', rule, '--json'], { encoding: 'utf8' });
    const r = JSON.parse(out) as ScalesReport;
    assert.equal(r.arch, 'RepOpt-VGG-B1');
    assert.equal(r.rule, rule);
    assert.equal(r.params.length, 28);
    assert.deepEqual(r.params[0].name, 'stage0.conv.weight');
    assert.deepEqual(r.params[0].shape, [64, 3, 3, 3]);
    assert.deepEqual(r.params[27].shape, [2048, 512, 3, 3]);
    const p = r.params.find((x) => x.name === 'stage1.1.conv.weight')!;
    assert.deepEqual(p.shape, [128, 128, 3, 3]);
    // Independently: per output channel c, 128*9 taps of s^p, 128 centre taps of t^p, one identity tap of 1.
    const pw = (x: number) => (rule === 'sgd' ? x * x : Math.abs(x));
    let sum = 0;
    let sumSq = 0;
    let min = Infinity;
    let max = -Infinity;
    for (let c = 0; c < 128; c++) {
      const a = pw(sv[c]);
      const b = pw(tv[c]);
      sum += 128 * 9 * a + 128 * b + 1;
      min = Math.min(min, a, a + b);
      max = Math.max(max, a + b + 1);
    }
    for (let c = 0; c < 128; c++) {
      const a = pw(sv[c]);
      const b = pw(tv[c]);
      sumSq += 128 * 8 * a * a + 127 * (a + b) ** 2 + (a + b + 1) ** 2; // off-centre taps; centre taps off and on the diagonal
    }
    const rel = (x: number, y: number) => Math.abs(x - y) / Math.abs(y);
    assert.ok(rel(p.gradMult.sum, sum) < 1e-12, `${rule} sum ${p.gradMult.sum} vs ${sum}`);
    assert.ok(rel(p.gradMult.sumSq, sumSq) < 1e-12, `${rule} sumSq ${p.gradMult.sumSq} vs ${sumSq}`);
    assert.ok(rel(p.gradMult.min, min) < 1e-12 && rel(p.gradMult.max, max) < 1e-12);
    const br = p.branches.map((b) => b.branch);
    assert.deepEqual(br, ['3x3', '1x1', 'identity']);
  }
  const text = execFileSync(process.execPath, [CLI, 'scales', B1, '--arch', 'RepOpt-VGG-B1'], { encoding: 'utf8' });
  assert.match(text, /79 scale tensors, 34,048 floats, sum 19610\.0359/);
  assert.match(text, /stage1\.1\.conv\.weight +\[128, 128, 3, 3\]/);
  const wrong = spawnSync(process.execPath, [CLI, 'scales', B1, '--arch', 'RepOpt-VGG-B2', '--json'], { encoding: 'utf8' });
  assert.equal(wrong.status, 1);
  assert.match(wrong.stderr, /do not match RepOpt-VGG-B2.*they fit RepOpt-VGG-B1/);
  const usage = spawnSync(process.execPath, [CLI, 'scales', B1], { encoding: 'utf8' });
  assert.equal(usage.status, 2);
  assert.match(usage.stderr, /--arch ARCH is required/);
  const rule = spawnSync(process.execPath, [CLI, 'scales', B1, '--arch', 'RepOpt-VGG-B1', '--rule', 'adam'], { encoding: 'utf8' });
  assert.equal(rule.status, 2);
});

