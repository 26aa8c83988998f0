/**
 * Every model family through the command line's pipeline (search, train, eval, deploy, export,
 * quantize) on tiny synthetic data, the way a user runs it; and `repopt eval` of RepOpt-GhostNet files
 * in the release's format (written by an independent PyTorch model) on CIFAR-10 binary data, against
 * PyTorch's own top-1 and loss on the same images.
 *
 * What is checked beyond exit codes: the scale file Hyper-Search writes has exactly the family's scale
 * keys and shapes; the Grad Mults a RepOpt run applies equal, per kernel, what the scale file gives by
 * hand (RepOpt-VGG: 9 Cin s^2 + Cin t^2 [+1] per output channel; RepOpt-GhostNet's depthwise cheap op:
 * 9 s^2 + 1), and baselines apply none; `eval` of a run's final weights reproduces the run's own last
 * evaluation; the deployed network evaluates like the trained one; export passes its ONNX Runtime check;
 * the quantization study's FP32 accuracy is eval's.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import * as torch from '../src/torch/index.js';
import { extractStateDict, loadPth } from '../src/io/pth.js';
import { readJsonl } from '../src/train/log.js';
import { familyOf, type ModelSpec } from '../src/models/family.js';
import '../src/models/families.js';
import { PYTHON } from './helpers/python.js';
import { REPO_ROOT, SCALES_DIR } from './helpers/paths.js';

torch.setNumThreads(1);
const CLI = path.join(REPO_ROOT, 'dist/src/cli/main.js');
const tmp = () => fs.mkdtempSync(path.join(os.tmpdir(), 'repopt-pipeline-'));

function cli(args: string[]): { status: number | null; stdout: string; stderr: string } {
  const threads = args[0] === 'report' ? [] : ['--threads', '1'];
  const r = spawnSync(process.execPath, [CLI, ...args, ...threads], { encoding: 'utf8', env: { ...process.env, CI: 'true' } });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

function ok(args: string[]): string {
  const r = cli(args);
  assert.equal(r.status, 0, `repopt ${args.join(' ')}\n${r.stderr}`);
  return r.stdout;
}

function tensors(file: string): Map<string, torch.Tensor> {
  return extractStateDict(loadPth(file), file);
}

const record = (dir: string, type: string) => readJsonl(path.join(dir, 'log.jsonl')).filter((r) => r.type === type).pop()!;

/** Per re-parameterised kernel: the sum of its Grad Mult (SGD) as the scale file gives it by hand. */
type ExpectedMults = (scales: Map<string, torch.Tensor>, kernels: Map<string, torch.Tensor>) => Map<string, number>;

const vggMults: ExpectedMults = (scales, kernels) => {
  const out = new Map<string, number>();
  for (const key of scales.keys()) {
    if (!key.endsWith('.scale_conv.weight')) continue;
    const b = key.slice(0, -'.scale_conv.weight'.length);
    const s = scales.get(`${b}.scale_conv.weight`)!.toArray();
    const t = scales.get(`${b}.scale_1x1.weight`)!.toArray();
    const cin = kernels.get(`${b}.conv.weight`)!.shape[1];
    const identity = scales.has(`${b}.scale_identity.weight`) ? 1 : 0;
    out.set(`${b}.conv.weight`, s.reduce((sum, sc, c) => sum + 9 * cin * sc * sc + cin * t[c] * t[c] + identity, 0));
  }
  return out;
};

const ghostMults: ExpectedMults = (scales) => {
  const out = new Map<string, number>();
  for (const key of scales.keys()) {
    if (!key.endsWith('.cheap_operation.1.weight')) continue;
    const s = scales.get(key)!.toArray();
    out.set(key.replace('.cheap_operation.1.weight', '.cheap_operation.0.weight'), s.reduce((sum, sc) => sum + 9 * sc * sc + 1, 0));
  }
  return out;
};

/**
 * Generic CSLA blocks (RepOpt-MobileOne S0, k = 4), by hand from the block layout: the stem (3x3 + 1x1),
 * depthwise blocks (4 x 3x3 + 1x1 [+ identity]: 9 sum s^2 + t^2 [+ 1] per channel) and pointwise blocks
 * (4 x 1x1 [+ identity]: Cin sum s^2 [+ 1]).
 */
const mobileOneMults: ExpectedMults = (scales, kernels) => {
  const out = new Map<string, number>();
  const blocks = new Set([...scales.keys()].map((k) => k.replace(/\.branches\.\d+\.scale\.weight$/, '')));
  for (const b of blocks) {
    const [cout, cinPerGroup, kh] = kernels.get(`${b}.conv.weight`)!.shape;
    const n = [...scales.keys()].filter((k) => k.startsWith(`${b}.branches.`)).length;
    const s = (i: number) => scales.get(`${b}.branches.${i}.scale.weight`)!.toArray();
    // Branch kinds: the stem [3x3, 1x1]; a 3x3 block [3x3 x4, 1x1, identity?]; a 1x1 block [1x1 x4, identity?].
    const kinds: ('k3' | 'k1' | 'id')[] = b === 'stage0.0' ? ['k3', 'k1'] : kh === 3 ? ['k3', 'k3', 'k3', 'k3', 'k1', 'id'] : ['k1', 'k1', 'k1', 'k1', 'id'];
    let sum = 0;
    for (let i = 0; i < n; i++) {
      const v = s(i);
      for (let c = 0; c < cout; c++) sum += kinds[i] === 'k3' ? 9 * cinPerGroup * v[c] * v[c] : kinds[i] === 'k1' ? cinPerGroup * v[c] * v[c] : 1;
    }
    out.set(`${b}.conv.weight`, sum);
  }
  return out;
};

interface FamilyCase {
  name: string;
  model: string[];
  spec: Omit<ModelSpec, 'inChannels' | 'numClasses'>;
  baseline: string;
  /** A scale file from elsewhere to train from as well (the release's). */
  releaseScales?: string;
  mults: ExpectedMults;
  /** The deploy stages run (they need the family's deploy form). */
  deploy: boolean;
  /** Other baselines of the family, trained and deployed too. */
  moreBaselines?: string[];
  /** The arm names the report must show (RepOpt run first). */
  arms: string[];
}

const CASES: FamilyCase[] = [
  {
    name: 'RepOpt-VGG',
    model: ['--blocks', '1,2,1,1', '--widths', '0.125,0.125,0.125,0.25', '--strides', '1,1,2,2,2'],
    spec: { blocks: [1, 2, 1, 1], widths: [0.125, 0.125, 0.125, 0.25], strides: [1, 1, 2, 2, 2] },
    baseline: 'repvgg',
    mults: vggMults,
    deploy: true,
    moreBaselines: ['qarepvgg'],
    arms: ['RepOpt-VGG', 'RepVGG', 'QARepVGG'],
  },
  {
    name: 'RepOpt-GhostNet',
    model: ['--arch', 'RepOpt-GhostNet-0.5x'],
    spec: { arch: 'RepOpt-GhostNet-0.5x' },
    baseline: 'rep',
    releaseScales: path.join(SCALES_DIR, 'RepOptGhostNet_0_5x_scales.pth'),
    mults: ghostMults,
    deploy: true,
    arms: ['RepOpt-GhostNet', 'RepGhostNet'],
  },
  {
    name: 'RepOpt-MobileOne',
    model: ['--arch', 'RepOpt-MobileOne-S0'],
    spec: { arch: 'RepOpt-MobileOne-S0' },
    baseline: 'mobileone',
    mults: mobileOneMults,
    deploy: true,
    arms: ['RepOpt-MobileOne', 'MobileOne'],
  },
];

const DATA = ['--data', 'synthetic:96'];
const RECIPE = ['--epochs', '1', '--batch-size', '16', '--lr', '0.05', '--log-every', '100'];

function assertAppliedMults(runDir: string, scaleFile: string, mults: ExpectedMults): void {
  const applied = record(runDir, 'start').gradMults as Record<string, number>;
  const scales = tensors(scaleFile);
  const kernels = tensors(path.join(runDir, 'final.pth'));
  const want = mults(scales, kernels);
  assert.ok(want.size >= 4, `${scaleFile}: ${want.size} re-parameterised kernels`);
  assert.deepEqual(Object.keys(applied).sort(), [...want.keys()].sort());
  for (const [k, v] of want) assert.ok(Math.abs(applied[k] - v) <= 1e-5 * v, `${k}: applied Grad Mult sum ${applied[k]}, the scales give ${v}`);
}

function evalJson(args: string[]): { top1: number; top5: number; loss: number; count: number; mode: string } {
  return JSON.parse(ok(['eval', ...args, '--json']).trim().split('\n').pop()!);
}

for (const c of CASES) {
  test(`${c.name}: search, train (RepOpt, ${[c.baseline, ...(c.moreBaselines ?? [])].join(', ')}), eval${c.deploy ? ', deploy, export, quantize, report' : ''} through the CLI`, () => {
    const d = tmp();
    // search: the hs model; its scale file holds exactly the family's scale keys and shapes.
    ok(['search', ...DATA, ...c.model, ...RECIPE, '--quiet', '--out', `${d}/hs`]);
    const family = familyOf({ ...c.spec, inChannels: 3, numClasses: 10 });
    const hs = family.create({ ...c.spec, inChannels: 3, numClasses: 10 }, family.hsMode);
    const expected = family.extractScales(hs);
    hs.dispose();
    const written = tensors(`${d}/hs/scales.pth`);
    assert.deepEqual([...written.keys()].sort(), [...expected.keys()].sort());
    for (const [k, t] of expected) assert.deepEqual(written.get(k)!.shape, t.shape, k);

    // train: RepOpt from the searched scales (and from the release's file), plain, the multi-branch baseline.
    ok(['train', ...DATA, ...c.model, ...RECIPE, '--quiet', '--scales', `${d}/hs/scales.pth`, '--out', `${d}/repopt`]);
    assertAppliedMults(`${d}/repopt`, `${d}/hs/scales.pth`, c.mults);
    if (c.releaseScales) {
      ok(['train', ...DATA, ...c.model, ...RECIPE, '--quiet', '--scales', c.releaseScales, '--out', `${d}/release`]);
      assertAppliedMults(`${d}/release`, c.releaseScales, c.mults);
    }
    ok(['train', ...DATA, ...c.model, ...RECIPE, '--quiet', '--mode', c.baseline, '--out', `${d}/${c.baseline}`]);
    assert.deepEqual(record(`${d}/${c.baseline}`, 'start').gradMults, {});
    // A baseline of the other family is refused with the family's own name for it.
    const other = cli(['train', ...DATA, ...c.model, ...RECIPE, '--mode', c.baseline === 'rep' ? 'repvgg' : 'rep', '--out', `${d}/x`]);
    assert.equal(other.status, 2);
    assert.match(other.stderr, new RegExp(`--mode: ${c.name} has no '\\w+' mode; its multi-branch baseline is '${c.baseline}'`));

    // eval: the final weights reproduce the run's last evaluation, from config.json or from --arch/--mode.
    const evals = new Map<string, ReturnType<typeof evalJson>>();
    for (const run of ['repopt', c.baseline]) {
      const e = evalJson(['--checkpoint', `${d}/${run}/final.pth`, ...DATA]);
      evals.set(run, e);
      assert.equal(e.top1, record(`${d}/${run}`, 'end').valTop1, run);
      assert.equal(e.mode, run === 'repopt' ? 'target' : run);
    }
    const byFlags = evalJson(['--checkpoint', `${d}/hs/final.pth`, ...c.model, '--mode', 'hs', ...DATA]);
    assert.equal(byFlags.top1, record(`${d}/hs`, 'end').valTop1);

    if (!c.deploy) return;
    // deploy: the fused network evaluates like the trained one (every baseline of the family).
    for (const base of [c.baseline, ...(c.moreBaselines ?? [])]) {
      if (base !== c.baseline) {
        ok(['train', ...DATA, ...c.model, ...RECIPE, '--quiet', '--mode', base, '--out', `${d}/${base}`]);
        evals.set(base, evalJson(['--checkpoint', `${d}/${base}/final.pth`, ...DATA]));
        assert.equal(evals.get(base)!.mode, base);
      }
      const trained = evals.get(base)!;
      ok(['deploy', '--checkpoint', `${d}/${base}/final.pth`, '--out', `${d}/deployed-${base}.pth`]);
      const deployed = evalJson(['--checkpoint', `${d}/deployed-${base}.pth`, ...c.model, ...DATA]);
      assert.equal(deployed.mode, 'deploy');
      assert.ok(Math.abs(deployed.loss - trained.loss) <= 1e-4 * trained.loss, `${base}: loss ${deployed.loss} vs ${trained.loss}`);
    }
    // export: FP32 and INT8 files, each checked in ONNX Runtime by the command (exit 1 beyond tolerance).
    ok(['export', '--checkpoint', `${d}/repopt/final.pth`, '--out', `${d}/m.onnx`]);
    ok(['export', '--checkpoint', `${d}/repopt/final.pth`, '--out', `${d}/q.onnx`, '--int8', '--calib', 'synthetic:96', '--calib-images', '32']);
    assert.ok(fs.statSync(`${d}/m.onnx`).size > 1000 && fs.statSync(`${d}/q.onnx`).size > 1000);
    // quantize: the study's FP32 accuracy is eval's.
    const q = JSON.parse(ok(['quantize', '--checkpoint', `${d}/repopt/final.pth`, ...DATA, '--calib-images', '32', '--observers', 'minmax', '--onnx-images', '16', '--json']).trim()) as {
      fp32Trained: number; rows: { top1: number }[]; onnx: { agreement: number };
    };
    assert.equal(q.fp32Trained, evals.get('repopt')!.top1);
    assert.equal(q.rows.length, 1);
    assert.ok(q.onnx.agreement >= 0.9);
    // report: every run of the family, each arm under the family's own name (no other family's label).
    ok(['report', d, '--out', `${d}/report.html`]);
    const html = fs.readFileSync(`${d}/report.html`, 'utf8');
    for (const arm of [...c.arms, 'Hyper-Search']) assert.ok(html.includes(`>${arm}<`) || html.includes(`"${arm}"`), `${c.name}: the report names the arm ${arm}`);
    if (c.name !== 'RepOpt-VGG') assert.ok(!html.includes('"RepOpt-VGG"') && !html.includes('>RepOpt-VGG<'), `${c.name}: no RepOpt-VGG label`);
  });
}

/** CIFAR-10 binary test split of random images (records: label byte + 3x32x32 bytes). */
function writeCifar10(dir: string, n: number): void {
  fs.mkdirSync(dir, { recursive: true });
  const rec = 1 + 3 * 32 * 32;
  const buf = Buffer.alloc(n * rec);
  let seed = 12345;
  const rand = () => ((seed = (seed * 1103515245 + 12345) >>> 0) >>> 16) & 0xff;
  for (let i = 0; i < n; i++) {
    buf[i * rec] = i % 10;
    for (let j = 1; j < rec; j++) buf[i * rec + j] = rand();
  }
  for (const f of ['test_batch.bin', 'data_batch_1.bin', 'data_batch_2.bin', 'data_batch_3.bin', 'data_batch_4.bin', 'data_batch_5.bin']) fs.writeFileSync(path.join(dir, f), buf);
}

test('`repopt eval --arch RepOpt-GhostNet-0.5x --mode target|hs|rep --data cifar10:DIR` on release-format files agrees with PyTorch', () => {
  const d = tmp();
  const py = (args: string[]) => {
    const r = spawnSync(PYTHON, args, { encoding: 'utf8' });
    assert.equal(r.status, 0, r.stderr);
    return r.stdout;
  };
  const modes = ['target', 'hs', 'rep'];
  py([path.join(REPO_ROOT, 'test/py/ghostnet_reference.py'), 'make', d, ...modes.map((m) => `0.5:${m}`), '--classes', '10', '--size', '32']);
  writeCifar10(`${d}/c10`, 40);
  const file = (mode: string) => path.join(d, `0.5_${mode}.pth`);
  const refs = JSON.parse(py([path.join(REPO_ROOT, 'test/py/ghostnet_cifar_eval.py'), '0.5', `${d}/c10`, ...modes.map((m) => `${m}=${file(m)}`)])) as Record<string, ReturnType<typeof evalJson>>;
  for (const mode of modes) {
    const ours = evalJson(['--checkpoint', file(mode), '--arch', 'RepOpt-GhostNet-0.5x', '--mode', mode, '--data', `cifar10:${d}/c10`]);
    const ref = refs[mode];
    assert.equal(ours.count, 40);
    assert.equal(ours.top1, ref.top1, mode);
    assert.equal(ours.top5, ref.top5, mode);
    assert.ok(Math.abs(ours.loss - ref.loss) <= 1e-5 * Math.max(1, ref.loss), `${mode}: loss ${ours.loss} vs PyTorch ${ref.loss}`);
    // Without --mode the mode is read from the keys (hs and csla look alike; target, hs and rep differ).
    assert.equal(evalJson(['--checkpoint', file(mode), '--arch', 'RepOpt-GhostNet-0.5x', '--data', `cifar10:${d}/c10`]).mode, mode);
  }
  // Classes come from the data: a 10-class file on 100-class data (CIFAR-100 records: 2 label bytes) is an error naming both.
  fs.mkdirSync(`${d}/c100`);
  fs.writeFileSync(`${d}/c100/test.bin`, Buffer.alloc(4 * (2 + 3 * 32 * 32)));
  const wrong = cli(['eval', '--checkpoint', path.join(d, '0.5_target.pth'), '--arch', 'RepOpt-GhostNet-0.5x', '--data', `cifar100:${d}/c100`]);
  assert.equal(wrong.status, 1);
  assert.match(wrong.stderr, /0\.5_target\.pth: the model has 10 classes, the data 100/);
});
