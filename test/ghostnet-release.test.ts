/**
 * RepOpt-GhostNet against an independent PyTorch model with the release's state-dict names
 * (test/py/ghostnet_reference.py): the same keys, shapes, order and Hyper-Search scale inits for every
 * width and mode; PyTorch's `torch.save(model.state_dict())` files load strictly into ours and give the
 * same eval-mode logits; ours load strictly into PyTorch and give the same logits there.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { execFileSync } from 'node:child_process';
import * as torch from '../src/torch/index.js';
import { loadPth, extractStateDict, savePth } from '../src/io/pth.js';
import { PyOrderedDict } from '../src/io/pickle.js';
import { GhostNet, GHOSTNET_MODES, GHOSTNET_WIDTHS, type GhostNetMode } from '../src/models/ghostnet.js';
import { PYTHON } from './helpers/python.js';
import { REPO_ROOT } from './helpers/paths.js';

torch.setNumThreads(1);
const REF = path.join(REPO_ROOT, 'test/py/ghostnet_reference.py');
const CLASSES = 10;
let tmp = '';

before(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'repopt-ghostnet-'));
});
after(() => fs.rmSync(tmp, { recursive: true, force: true }));

function reference(args: string[]): string {
  return execFileSync(PYTHON, [REF, ...args, '--classes', String(CLASSES)], { encoding: 'utf8', maxBuffer: 512 * 1024 * 1024 });
}

const spec = (w: number, mode: GhostNetMode) => `${w}:${mode}`;
const stem = (w: number, mode: GhostNetMode) => `${w}_${mode}`;

/** max |a - b| / max |b| over two flat arrays (the logits' own scale). */
function relDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  assert.equal(a.length, b.length);
  let diff = 0;
  let scale = 0;
  for (let i = 0; i < a.length; i++) {
    diff = Math.max(diff, Math.abs(a[i] - b[i]));
    scale = Math.max(scale, Math.abs(b[i]));
  }
  assert.ok(scale > 1e-3, 'logits should not vanish');
  return diff / scale;
}

test('every width and mode: keys, shapes, key order and hs scale inits are the release\'s', () => {
  const specs = GHOSTNET_WIDTHS.flatMap((w) => GHOSTNET_MODES.map((m) => spec(w, m)));
  const ref = JSON.parse(reference(['layout', ...specs])) as Record<string, [string, number[], number[]?][]>;
  for (const w of GHOSTNET_WIDTHS) {
    for (const mode of GHOSTNET_MODES) {
      const want = ref[spec(w, mode)];
      const m = new GhostNet({ width: w, mode, numClasses: CLASSES });
      const sd = m.stateDict();
      assert.deepEqual([...sd.keys()], want.map(([k]) => k), `${w}x ${mode}: keys`);
      for (const [k, shape, values] of want) {
        const t = sd.get(k)!;
        assert.deepEqual(t.shape, shape, `${w}x ${mode}: ${k}`);
        if (values && mode === 'hs') {
          const got = t.toArray() as number[];
          got.forEach((v, i) => assert.ok(Math.abs(v - values[i]) < 1e-7, `${w}x hs: ${k}[${i}] = ${v}, release init ${values[i]}`));
        }
      }
      for (const t of sd.values()) t.dispose();
      m.dispose();
    }
  }
});

// The logit checks: every mode at 0.5x (the released width) and at an odd width, 1.11x.
const LOGIT_CASES: [number, GhostNetMode][] = [
  ...GHOSTNET_MODES.map((m): [number, GhostNetMode] => [0.5, m]),
  ...GHOSTNET_MODES.map((m): [number, GhostNetMode] => [1.11, m]),
];

test('PyTorch state dicts (release naming, random weights and BN statistics) load strictly; eval logits equal', () => {
  const dir = fs.mkdtempSync(path.join(tmp, 'py-'));
  reference(['make', dir, ...LOGIT_CASES.map(([w, m]) => spec(w, m)), '--seed', '11']);
  for (const [w, mode] of LOGIT_CASES) {
    const file = path.join(dir, `${stem(w, mode)}.pth`);
    const sd = extractStateDict(loadPth(file), file);
    const io = extractStateDict(loadPth(path.join(dir, `${stem(w, mode)}.io.pth`)));
    const m = new GhostNet({ width: w, mode, numClasses: CLASSES });
    m.loadStateDict(sd); // strict: no key missing or left over
    m.eval();
    torch.tidy(() => {
      const y = torch.noGrad(() => m.forward(io.get('x')!));
      const want = io.get('logits')!;
      assert.deepEqual(y.shape, want.shape);
      const d = relDiff(y.toArray() as number[], want.toArray() as number[]);
      assert.ok(d <= 1e-5, `${w}x ${mode}: logits differ from PyTorch by ${d} (relative)`);
      // Not a vacuous match: with the cheap kernels zeroed the logits change.
      if (mode === 'target' && w === 0.5) {
        const zeroed = new Map(sd);
        for (const k of sd.keys()) if (k.endsWith('cheap_operation.0.weight')) zeroed.set(k, torch.zerosLike(sd.get(k)!));
        const other = new GhostNet({ width: w, mode, numClasses: CLASSES });
        other.loadStateDict(zeroed);
        other.eval();
        assert.ok(relDiff(torch.noGrad(() => other.forward(io.get('x')!)).toArray() as number[], want.toArray() as number[]) > 1e-2);
        other.dispose();
      }
    });
    for (const t of [...sd.values(), ...io.values()]) t.dispose();
    m.dispose();
  }
});

test('our state dicts load strictly into the PyTorch model; its eval logits equal ours', () => {
  const dir = fs.mkdtempSync(path.join(tmp, 'ours-'));
  const ours = new Map<string, number[]>();
  torch.manualSeed(5);
  for (const [w, mode] of LOGIT_CASES) {
    const m = new GhostNet({ width: w, mode, numClasses: CLASSES });
    // Non-trivial BN statistics and affines, scales off their init (hs and csla).
    torch.noGrad(() =>
      torch.tidy(() => {
        for (const [n, t] of [...m.namedParameters(), ...m.namedBuffers()]) {
          if (n.endsWith('running_var')) t.copy_(torch.rand(t.shape).add(0.5));
          else if (n.endsWith('running_mean')) t.copy_(torch.randn(t.shape).mul(0.2));
          else if (n.endsWith('num_batches_tracked')) t.fill_(3);
          else if (t.ndim === 1 && /(bn\w*|primary_conv\.1|shortcut\.[13]|fusion_bn|final_bn|cheap_operation\.1)\.weight$/.test(n)) t.copy_(torch.rand(t.shape).add(0.5));
          else if (/(fusion_scale|cheap_operation\.1)\.weight$/.test(n)) t.copy_(torch.randn(t.shape).mul(0.5).add(0.8));
          else if (t.ndim === 1 && /bn\w*\.bias$|primary_conv\.1\.bias$|shortcut\.[13]\.bias$|cheap_operation\.1\.bias$/.test(n)) t.copy_(torch.randn(t.shape).mul(0.2));
        }
      }),
    );
    m.eval();
    const x = torch.randn([2, 3, 64, 64]);
    ours.set(spec(w, mode), torch.noGrad(() => m.forward(x)).toArray() as number[]);
    savePth(path.join(dir, `${stem(w, mode)}.pth`), m.stateDict());
    const io = new PyOrderedDict();
    io.set('x', x);
    savePth(path.join(dir, `${stem(w, mode)}.io.pth`), io);
    x.dispose();
    m.dispose();
  }
  const py = JSON.parse(reference(['eval', dir, ...LOGIT_CASES.map(([w, m]) => spec(w, m))])) as Record<string, { shape: number[]; data: number[] }>;
  for (const [w, mode] of LOGIT_CASES) {
    const got = py[spec(w, mode)];
    assert.deepEqual(got.shape, [2, CLASSES]);
    const d = relDiff(ours.get(spec(w, mode))!, got.data);
    assert.ok(d <= 1e-5, `${w}x ${mode}: PyTorch's logits differ from ours by ${d} (relative)`);
  }
});
