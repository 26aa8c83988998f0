/**
 * A user's network through the whole pipeline (issue 24): the README program's network as a file
 * (test/fixtures/networks/my-net.js, importing 'repopt' as a user does) goes through `repopt search`,
 * `train` (RepOpt, and the csla twin as its baseline), `eval`, `deploy`, `export --int8` and `report`
 * on Fashion-MNIST; data-parallel training and resume; the same through `runTraining({ model: { file } })`
 * and `defineModel`. Truth: the scale file loads back by block name and holds the search's final scales;
 * the RepOpt target trained from its twin's weights equals the twin trained with plain SGD on the same
 * batches (gradient re-parameterization over the whole pipeline); the deployed network computes what
 * the trained one does; ONNX Runtime agrees with us; bad network files get clear errors.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import * as torch from '../src/torch/index.js';
import { CslaBlock, extractScales, initializeFromTwin, loadScales } from '../src/repopt/index.js';
import { defineModel, familyOf, loadModelFile, type ModelBuilder, type ModelFamily } from '../src/models/index.js';
import { runTraining } from '../src/train/run.js';
import { saveStateDict } from '../src/train/checkpoint.js';
import { loadScaleFile } from '../src/models/scales.js';
import { cli, maxRel, weights } from './helpers/runs.js';
import { REPO_ROOT } from './helpers/paths.js';

const NET = path.join(REPO_ROOT, 'test/fixtures/networks/my-net.js');
const FM = 'fashion-mnist';
const tmp = () => fs.mkdtempSync(path.join(os.tmpdir(), 'repopt-usernet-'));
const ok = (r: { status: number | null; stdout: string; stderr: string }, what: string) => assert.equal(r.status, 0, `${what}: ${r.stderr}${r.stdout}`);

test('a network file goes through search, train, eval, deploy, export --int8 and report on the CLI', async () => {
  const dir = tmp();
  try {
    const common = ['--model', NET, '--data', FM, '--epochs', '1', '--batch-size', '256', '--workers', '0'];
    ok(cli(['search', ...common, '--out', path.join(dir, 's')]), 'search');
    const scaleFile = path.join(dir, 's/scales.pth');
    // The scale file holds the searched model's final scales, by block name, and loads back against the target.
    const family = await loadModelFile(NET);
    const spec = { file: NET, inChannels: 1, numClasses: 10 };
    const hs = family.create(spec, 'hs');
    hs.loadStateDict(weights(path.join(dir, 's/final.pth')));
    const searched = extractScales(hs);
    const target = family.create(spec, 'target');
    const loaded = family.loadScales(target, scaleFile);
    assert.deepEqual([...loaded.keys()], [...searched.keys()]);
    assert.deepEqual([...loaded.keys()].slice(0, 2), ['block0.branches.0.scale.weight', 'block0.branches.1.scale.weight']);
    for (const [k, t] of searched) assert.deepEqual(loaded.get(k)!.toArray(), t.toArray(), k);
    assert.ok([...searched.values()].some((t) => t.toArray().some((v) => v !== 1 && v !== 0.5)), 'the search moved the scales');

    ok(cli(['train', ...common, '--scales', scaleFile, '--out', path.join(dir, 't')]), 'train');
    ok(cli(['train', ...common, '--mode', 'csla', '--out', path.join(dir, 'c')]), 'train --mode csla');
    const cfg = JSON.parse(fs.readFileSync(path.join(dir, 't/config.json'), 'utf8')) as { model: { file: string }; arm: string; label: string };
    assert.equal(cfg.model.file, NET);
    assert.equal(cfg.arm, 'RepOpt MyNet');

    // eval reads the model from config.json; its top-1 is the run's own final evaluation.
    const ev = cli(['eval', '--checkpoint', path.join(dir, 't/final.pth'), '--data', FM, '--json']);
    ok(ev, 'eval');
    const top1 = (JSON.parse(ev.stdout.trim().split('\n').at(-1)!) as { top1: number }).top1;
    const end = fs.readFileSync(path.join(dir, 't/log.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as { type: string; valTop1?: number }).filter((r) => r.type === 'epoch').at(-1)!;
    assert.ok(Math.abs(top1 - end.valTop1!) < 1e-9, `eval ${top1} vs the run's ${end.valTop1}`);
    assert.ok(top1 > 0.3, `top-1 ${top1}`);

    // deploy fuses every block into one conv; the deployed file evaluates to the same top-1 (with --model: no config.json beside it).
    const dep = path.join(dir, 'deployed.pth');
    const d = cli(['deploy', '--checkpoint', path.join(dir, 't/final.pth'), '--out', dep]);
    ok(d, 'deploy');
    const fuseErr = Number(/max \|trained - deployed\| = ([0-9.e+-]+)/.exec(d.stdout)![1]);
    assert.ok(fuseErr < 1e-5, d.stdout);
    const depSd = weights(dep);
    assert.ok(depSd.has('block0.weight') && depSd.has('block0.bias') && !depSd.has('block0.conv.weight'), [...depSd.keys()].join());
    const ev2 = cli(['eval', '--checkpoint', dep, '--data', FM, '--model', NET, '--json']);
    ok(ev2, 'eval deployed');
    assert.ok(Math.abs((JSON.parse(ev2.stdout.trim()) as { top1: number }).top1 - top1) <= 2e-4);

    const ex = cli(['export', '--checkpoint', path.join(dir, 't/final.pth'), '--out', path.join(dir, 'm.onnx'), '--int8', '--calib', FM, '--calib-images', '256']);
    ok(ex, 'export --int8');
    const agree = Number(/top-1 agreement ([0-9.]+)%/.exec(ex.stdout)![1]);
    assert.ok(agree >= 97, ex.stdout);

    const rep = cli(['report', path.join(dir, 's'), path.join(dir, 't'), path.join(dir, 'c'), '--out', path.join(dir, 'r.html')]);
    ok(rep, 'report');
    const html = fs.readFileSync(path.join(dir, 'r.html'), 'utf8');
    assert.ok(html.includes('RepOpt MyNet') && html.includes('MyNet (csla)'), 'arms named after the network');
    assert.ok(!html.includes('>RepOpt-VGG<') && html.includes('--model'), 'no RepOpt-VGG label; the reproducing command names the file');
    for (const t of [...searched.values(), ...loaded.values()]) t.dispose();
    hs.dispose();
    target.dispose();
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('a network file trains data-parallel (2 processes) and resumes', () => {
  const dir = tmp();
  try {
    const scales = path.join(dir, 'scales.pth');
    writeFreshScales(scales);
    const args = ['train', '--model', NET, '--data', FM, '--epochs', '1', '--batch-size', '128', '--scales', scales, '--out', path.join(dir, 'd'), '--nproc', '2', '--workers', '0'];
    ok(cli([...args, '--max-steps', '30']), 'first 30 steps');
    ok(cli([...args, '--resume']), 'resume');
    const log = fs.readFileSync(path.join(dir, 'd/log.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as { type: string; top1?: number; worldSize?: number });
    assert.equal(log.filter((r) => r.type === 'epoch').length, 1);
    assert.ok(log.some((r) => r.type === 'resume'), 'the log records the resume');
    assert.ok(fs.existsSync(path.join(dir, 'd/final.pth')));
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

/** Scales of the README network (the builder's initial ones), as a scale file. */
function writeFreshScales(file: string): void {
  const net = path.join(REPO_ROOT, 'test/fixtures/networks/my-net.js');
  const r = cli(['search', '--model', net, '--data', 'synthetic:64', '--epochs', '1', '--batch-size', '32', '--out', path.dirname(file) + '/search', '--quiet', '--workers', '0']);
  ok(r, 'synthetic search');
  fs.copyFileSync(path.join(path.dirname(file), 'search/scales.pth'), file);
}

test('runTraining({ model: { file } }): the RepOpt target from its twin equals the twin trained with SGD', async () => {
  const dir = tmp();
  try {
    const family = await loadModelFile(NET);
    const spec = { file: NET, inChannels: 3, numClasses: 10 }; // synthetic: 3x32x32, 10 classes
    // Searched-looking scales (not the initial ones) in a scale file.
    torch.manualSeed(3);
    const hs = family.create(spec, 'hs');
    const scales = torch.noGrad(() => new Map([...extractScales(hs)].map(([k, t]) => [k, torch.keep(t.mul(torch.rand(t.shape).add(0.5)))])));
    const scaleFile = path.join(dir, 'scales.pth');
    family.saveScales(scaleFile, scales, hs, 'MyNet');
    // The twin with those constant scales, and the target initialised from it (Rule of Initialization).
    const twin = family.create(spec, 'csla');
    loadScales(twin, scales);
    const target = family.create(spec, 'target');
    initializeFromTwin(target, twin);
    saveStateDict(path.join(dir, 'twin0.pth'), twin.stateDict());
    saveStateDict(path.join(dir, 'target0.pth'), target.stateDict());

    const common = { data: 'synthetic:512', model: { file: NET }, epochs: 1, batchSize: 64, augment: false, weightDecay: 1e-4, lr: 0.05, evaluate: false, quiet: true, workers: 0, log: () => {} } as const;
    const t = await runTraining({ ...common, mode: 'target', scales: scaleFile, init: path.join(dir, 'target0.pth'), out: path.join(dir, 't') });
    const c = await runTraining({ ...common, mode: 'csla', init: path.join(dir, 'twin0.pth'), out: path.join(dir, 'c') });
    assert.equal(t.config.model.file, NET);
    // The twin's fused kernels after training equal the target's kernels.
    const twinAfter = family.create(spec, 'csla');
    twinAfter.loadStateDict(weights(path.join(dir, 'c/final.pth')));
    const tw = weights(path.join(dir, 't/final.pth'));
    const blocks = [...twinAfter.namedModules()].filter((e): e is [string, CslaBlock] => e[1] instanceof CslaBlock);
    assert.equal(blocks.length, 2);
    for (const [name, b] of blocks) {
      const rel = maxRel(tw.get(`${name}.conv.weight`)!, b.fusedKernel());
      assert.ok(rel < 1e-4, `${name}: target vs fused twin kernel ${rel}`);
    }
    assert.ok(maxRel(tw.get('head.weight')!, twinAfter.stateDict().get('head.weight')!) < 1e-4);
    assert.ok(maxRel(tw.get('head.weight')!, target.stateDict().get('head.weight')!) > 1e-3, 'training moved the weights');
    for (const m of [hs, twin, target, twinAfter]) m.dispose();
    for (const x of scales.values()) x.dispose();
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('defineModel: a builder registered by name trains as an architecture; its scales load by name', async () => {
  const { default: build } = (await import(pathToFileURL(NET).href)) as { default: ModelBuilder };
  const family: ModelFamily = defineModel({ name: 'MyNet-defined', build });
  assert.equal(familyOf({ arch: 'MyNet-defined', inChannels: 1, numClasses: 10 }), family);
  const dir = tmp();
  try {
    const s = await runTraining({ data: 'synthetic:128', model: { arch: 'MyNet-defined' }, mode: 'hs', epochs: 1, batchSize: 32, out: path.join(dir, 's'), quiet: true, workers: 0, log: () => {} });
    assert.ok(s.scales, 'the search wrote scales');
    const target = family.create({ arch: 'MyNet-defined', inChannels: 3, numClasses: 10 }, 'target');
    const loaded = family.loadScales(target, s.scales.file);
    assert.equal(loaded.size, 8);
    for (const t of loaded.values()) t.dispose();
    // saveScaleFile / loadScaleFile take a name no scheme knows when the keys are block scales.
    assert.throws(() => loadScaleFile(s.scales!.file, 'NoSuchNet'), /no scale scheme for architecture 'NoSuchNet'/);
    target.dispose();
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('bad network files get clear errors', async () => {
  const fx = (n: string) => path.join(REPO_ROOT, 'test/fixtures/networks', n);
  await assert.rejects(loadModelFile(fx('nope.js')), /no such model file/);
  await assert.rejects(loadModelFile(fx('not-a-builder.js')), /default export must be a function \(mode, \{ inChannels, numClasses \}\) => Module; it is object/);
  const noBlocks = await loadModelFile(fx('no-blocks.js'));
  assert.throws(() => noBlocks.create({ file: fx('no-blocks.js'), inChannels: 1, numClasses: 10 }, 'target'), /has no CslaBlock \(pass the mode on to its blocks/);
  const r = cli(['train', '--model', fx('not-a-builder.js'), '--data', 'synthetic:32', '--mode', 'plain']);
  assert.notEqual(r.status, 0);
  assert.match(r.stderr, /default export must be a function/);
  assert.doesNotMatch(r.stderr, /at .*\.js:\d+/, 'no stack trace');
  const both = cli(['train', '--model', NET, '--arch', 'RepOpt-VGG-A0', '--data', 'synthetic:32']);
  assert.notEqual(both.status, 0);
  assert.match(both.stderr, /give one model/);
  // A network's own mode list: MyNet has no RepVGG baseline.
  const mode = cli(['train', '--model', NET, '--data', 'synthetic:32', '--mode', 'repvgg']);
  assert.notEqual(mode.status, 0);
  assert.match(mode.stderr, /MyNet has no 'repvgg' mode; its multi-branch baseline is 'csla'/);
});
