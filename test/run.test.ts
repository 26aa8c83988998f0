/**
 * Whole runs through the library call `runTraining` (what `repopt search` / `repopt train` do), from TypeScript:
 * a Hyper-Search writes scales.pth, an independent PyTorch RepOptimizerSGD reference reads that file and trains
 * from it, and the library's target run from the same file ends with the same weights; `evaluateCheckpoint`
 * agrees with PyTorch's evaluation of the reference's weights; bad options are OptionErrors in the library's
 * words (no CLI flags); a resume with other settings is refused and one with the same settings ends as an
 * uninterrupted run.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { runTraining, evaluateCheckpoint, OptionError, torch, type TrainingRunOptions, type TrainingMode } from '../src/index.js';
import { readJsonl } from '../src/train/log.js';
import { PYTHON } from './helpers/python.js';
import { REPO_ROOT } from './helpers/paths.js';
import { weights, maxRel } from './helpers/runs.js';

torch.setNumThreads(1);
const REF = path.join(REPO_ROOT, 'test/py/repopt_reference.py');
const tmp = () => fs.mkdtempSync(path.join(os.tmpdir(), 'repopt-run-'));
const BLOCKS = [1, 2, 2, 1];
const WIDTHS = [0.25, 0.25, 0.25, 0.25];
const MODEL = { blocks: BLOCKS, widths: WIDTHS };
const PY_MODEL = ['--blocks', BLOCKS.join(','), '--widths', WIDTHS.join(',')];

function py(args: string[]): string {
  const r = spawnSync(PYTHON, args, { encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  return r.stdout;
}

test('runTraining: Hyper-Search writes scales.pth; PyTorch\'s RepOptimizerSGD and our target run from that file end with the same weights; evaluateCheckpoint agrees with PyTorch', async () => {
  const d = tmp();
  // The reference's init state dict and 40 CIFAR-100-format images (its random scales are not used).
  py([REF, 'make', `${d}/init.pth`, `${d}/unused.pth`, `${d}/c100`, '-', ...PY_MODEL, '--images', '40']);
  const data = `cifar100:${d}/c100`;
  const lines: string[] = [];
  const search = await runTraining({ data, model: MODEL, mode: 'hs', epochs: 1, batchSize: 8, evaluate: false, threads: 1, quiet: true, out: `${d}/search`, log: (l) => lines.push(l) });
  assert.equal(search.stopSignal, null);
  assert.equal(search.state.iteration, 5); // 40 images, batch 8
  assert.equal(search.config.command, 'search');
  assert.ok(search.scales, 'a finished search returns its scale file');
  const scaleFile = search.scales.file;
  assert.equal(scaleFile, path.join(d, 'search', 'scales.pth'));
  assert.ok(fs.existsSync(search.scales.summary), search.scales.summary);
  assert.equal(lines.length, 0, 'quiet: no summary lines');
  // The file holds the searched scales: every block's scale_conv / scale_1x1 as the hs model ended.
  const saved = weights(scaleFile);
  const hs = weights(`${d}/search/final.pth`);
  const names = [...hs.keys()].filter((k) => /\.scale_(conv|1x1)\.weight$/.test(k));
  assert.equal(names.length, 2 * (1 + BLOCKS.reduce((a, b) => a + b, 0)));
  for (const k of names) assert.equal(maxRel(saved.get(k)!, hs.get(k)!), 0, k);
  // The first block of each stage starts with scales 1: the search moved them.
  const firsts = names.filter((k) => /^stage(0|\d\.0)\./.test(k));
  assert.ok(firsts.length >= 5 && firsts.every((k) => torch.tidy(() => hs.get(k)!.sub(1).abs().max().item()) > 1e-5), 'the search trained the scales');

  // PyTorch reads our scale file and trains from it; so does the library.
  const hyper = { batchSize: 8, lr: 0.05, momentum: 0.9, nesterov: true, weightDecay: 4e-5 };
  py([REF, 'train', `${d}/init.pth`, scaleFile, `${d}/c100`, `${d}/ref.pth`, ...PY_MODEL, '--batch-size', '8', '--lr', '0.05', '--momentum', '0.9', '--nesterov', '--wd', '4e-5']);
  const target = await runTraining({
    data, model: MODEL, mode: 'target', scales: scaleFile, init: `${d}/init.pth`, epochs: 1, ...hyper,
    schedule: 'constant', warmupEpochs: 0, labelSmoothing: 0, augment: false, shuffle: false, threads: 1, quiet: true, out: `${d}/target`,
  });
  assert.equal(target.scales, null);
  assert.equal(target.config.scales, path.resolve(scaleFile));
  assert.equal((JSON.parse(fs.readFileSync(`${d}/target/config.json`, 'utf8')) as { scales: string }).scales, path.resolve(scaleFile));
  const ours = weights(`${d}/target/final.pth`);
  const ref = weights(`${d}/ref.pth`);
  // Same float32 kernels on one thread; only reduction order differs (see train.test.ts's parity test for the bound).
  for (const [k, t] of ref) {
    if (t.dtype === 'int64') assert.equal(ours.get(k)!.item(), t.item(), k);
    else assert.ok(maxRel(ours.get(k)!, t) <= 1e-5, `${k}: ${maxRel(ours.get(k)!, t)}`);
  }
  assert.ok(maxRel(weights(`${d}/init.pth`).get('stage1.0.conv.weight')!, ref.get('stage1.0.conv.weight')!) > 1e-3, 'the run trained');

  // evaluateCheckpoint on PyTorch's weights (a plain state dict: the model given) vs PyTorch's own evaluation.
  const ev = await evaluateCheckpoint({ checkpoint: `${d}/ref.pth`, data, model: MODEL, batchSize: 4 });
  const pyEval = JSON.parse(py(['-c', `
import sys, json, torch, torch.nn.functional as F
sys.path.insert(0, ${JSON.stringify(path.dirname(REF))})
import repopt_reference as R
torch.set_num_threads(1)
x, y = R.read_cifar100(${JSON.stringify(`${d}/c100`)}, 'test')
m = R.TargetVGG(${JSON.stringify(BLOCKS)}, ${JSON.stringify(WIDTHS)}, 100)
m.load_state_dict(torch.load(${JSON.stringify(`${d}/ref.pth`)}))
m.eval()
with torch.no_grad():
    z = m(x)
top5 = (z.topk(5, 1).indices == y[:, None]).any(1).float().mean().item()
print(json.dumps({'top1': (z.argmax(1) == y).float().mean().item(), 'top5': top5, 'loss': F.cross_entropy(z, y).item(), 'count': len(y)}))
`])) as { top1: number; top5: number; loss: number; count: number };
  assert.equal(ev.count, pyEval.count);
  assert.equal(ev.count, 10);
  assert.equal(ev.top1, pyEval.top1);
  assert.equal(ev.top5, pyEval.top5);
  assert.ok(Math.abs(ev.loss - pyEval.loss) <= 1e-5 * Math.max(1, pyEval.loss), `loss ${ev.loss} vs ${pyEval.loss}`);
  assert.equal(ev.mode, 'target');
});

test('runTraining: bad options are OptionErrors naming the option in the library\'s words; a resume with other settings is refused, with the same settings it ends as an uninterrupted run', async () => {
  const d = tmp();
  const base: TrainingRunOptions = { data: 'synthetic:32', model: MODEL, mode: 'plain', epochs: 2, batchSize: 8, lr: 0.05, evaluate: false, threads: 1, quiet: true, log: () => {} };
  const refused = async (o: TrainingRunOptions, option: string, message: RegExp) => {
    await assert.rejects(runTraining(o), (e: unknown) => {
      assert.ok(e instanceof OptionError, String(e));
      assert.equal(e.option, option, e.message);
      assert.match(e.message, message);
      assert.doesNotMatch(e.message, /--/, 'no CLI flags in library errors');
      return true;
    });
  };
  await refused({ ...base, batchSize: 0, out: `${d}/x` }, 'batchSize', /^batchSize must be a positive integer, got 0$/);
  await refused({ ...base, mode: 'target', out: `${d}/x` }, 'scales', /needs scales/);
  await refused({ ...base, scales: `${d}/none.pth`, out: `${d}/x` }, 'scales', /only used by RepOpt training.*mode is plain/);
  await refused({ ...base, model: { arch: 'RepOpt-VGG-A0', blocks: BLOCKS }, out: `${d}/x` }, 'model', /give one model: an architecture, custom blocks and widths, or a network file/);
  await refused({ ...base, model: { blocks: BLOCKS }, out: `${d}/x` }, 'model', /needs both blocks and widths/);
  await refused({ ...base, model: { arch: 'RepOpt-GhostNet-0.5x' }, mode: 'repvgg', out: `${d}/x` }, 'mode', /no 'repvgg' mode; its multi-branch baseline is 'rep'/);
  // A JavaScript caller can pass anything: an evaluation-only mode is refused too.
  await refused({ ...base, mode: 'deploy' as TrainingMode, out: `${d}/x` }, 'mode', /mode must be one of target, plain, hs, repvgg, qarepvgg, rep, mobileone, csla, got 'deploy'/);
  await refused({ ...base, momentum: 1.5, out: `${d}/x` }, 'momentum', /momentum must be in \[0, 1\], got 1\.5/);
  await refused({ ...base, freeze: [''], out: `${d}/x` }, 'freeze', /freeze must be a list of parameter name prefixes/);
  await refused({ ...base, stopWhenSettled: { drift: 0.01 }, out: `${d}/x` }, 'stopWhenSettled', /ends a Hyper-Search \(mode hs\); this run's mode is plain/);
  await refused({ ...base, mode: 'hs', stopWhenSettled: '0:2', out: `${d}/x` }, 'stopWhenSettled', /takes DRIFT\[:EPOCHS\]/);
  await refused({ ...base, pretrained: `${d}/none.pth`, out: `${d}/x` }, 'pretrained', /none\.pth: no such file/);
  assert.ok(!fs.existsSync(`${d}/x`), 'a refused run writes nothing');

  // 32 images, batch 8: 4 steps per epoch. Stop after 3, then continue over the epoch boundary.
  const full = await runTraining({ ...base, out: `${d}/full` });
  assert.equal(full.state.iteration, 8);
  const cut = await runTraining({ ...base, out: `${d}/cut`, maxSteps: 3 });
  assert.equal(cut.state.iteration, 3);
  assert.ok(fs.existsSync(`${d}/cut/latest.pth`) && !fs.existsSync(`${d}/cut/final.pth`));
  const before = { latest: fs.readFileSync(`${d}/cut/latest.pth`), config: fs.readFileSync(`${d}/cut/config.json`, 'utf8') };
  await refused({ ...base, out: `${d}/cut` }, 'out', /already holds a run \(latest\.pth\); resume it/);
  await refused({ ...base, out: `${d}/cut`, resume: true, lr: 0.1 }, 'resume', /different settings \(lr\)/);
  await refused({ ...base, out: `${d}/cut`, resume: true, epochs: 3, seed: 1 }, 'resume', /different settings \(epochs, seed\)/);
  await refused({ ...base, out: `${d}/cut`, resume: true, model: { ...MODEL, strides: [1, 1, 2, 2, 2] } }, 'resume', /different settings \(model\)/);
  assert.ok(fs.readFileSync(`${d}/cut/latest.pth`).equals(before.latest), 'a refused resume leaves the checkpoint alone');
  assert.equal(fs.readFileSync(`${d}/cut/config.json`, 'utf8'), before.config);
  const resumed = await runTraining({ ...base, out: `${d}/cut`, resume: true });
  assert.equal(resumed.state.iteration, 8);
  assert.equal(readJsonl(`${d}/cut/log.jsonl`).filter((r) => r.type === 'resume').length, 1);
  const a = weights(`${d}/full/final.pth`);
  const b = weights(`${d}/cut/final.pth`);
  assert.deepEqual([...b.keys()], [...a.keys()]);
  for (const [k, t] of a) assert.equal(torch.tidy(() => t.to('float64').sub(b.get(k)!.to('float64')).abs().max().item()), 0, k);
});
