/**
 * Fine-tuning and a Hyper-Search that says when it is done (issue 26):
 *  - parity: a release-format RepOpt-VGG checkpoint (written by PyTorch, 5 classes) fine-tuned by `runTraining` on
 *    10-class data with `pretrained` ends with the weights of an independent PyTorch script that loads the same
 *    file into a release-named target model, takes our re-initialised head, and trains with its own RepOptimizer
 *    SGD (Grad Mults computed in Python from the same scale file) on the same batches;
 *  - a mismatched or missing tensor is an error naming it; `--freeze` leaves frozen parameters bit-identical;
 *  - the Hyper-Search warm start computes the pretrained target's function exactly;
 *  - scale drift in log.jsonl, the early stop of a search that settles (with its reason), the warnings, and the
 *    report's drift chart.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { runTraining, OptionError, torch } from '../src/index.js';
import { readJsonl } from '../src/train/log.js';
import { setupRun } from '../src/train/setup.js';
import { loadPretrained } from '../src/train/pretrained.js';
import { ScaleDrift, parseSettleRule } from '../src/train/drift.js';
import { saveStateDict } from '../src/train/checkpoint.js';
import { openDataset } from '../src/data/dataset.js';
import { DataLoader } from '../src/data/loader.js';
import { defaultTransforms } from '../src/data/transforms.js';
import { familyOf, type ModelFamily } from '../src/models/family.js';
import '../src/models/index.js';
import { collectReport, renderReport } from '../src/report/html.js';
import { runPython, toJson, type JsonTensor } from './helpers/python.js';
import { cli, weights, maxRel } from './helpers/runs.js';

torch.setNumThreads(1);
const d = fs.mkdtempSync(path.join(os.tmpdir(), 'repopt-finetune-'));
const BLOCKS = [1, 2, 1, 1];
const WIDTHS = [0.25, 0.25, 0.25, 0.25];
const STRIDES = [1, 1, 2, 2, 2];
const MODEL = { blocks: BLOCKS, widths: WIDTHS, strides: STRIDES };
const FLAGS = ['--blocks', BLOCKS.join(','), '--widths', WIDTHS.join(','), '--strides', STRIDES.join(','), '--threads', '1', '--no-augment', '--no-shuffle', '--no-eval'];
const N = 48;
const SIDE = 16;
const DATA = `mnist:${d}/data`;

// 48 random 16x16 grey images of 10 classes, in MNIST's IDX format.
{
  fs.mkdirSync(`${d}/data`);
  let seed = 12345;
  const rand = () => ((seed = (seed * 1103515245 + 12345) >>> 0) >>> 16) & 255;
  const img = Buffer.alloc(16 + N * SIDE * SIDE);
  img.writeUInt32BE(0x803, 0); img.writeUInt32BE(N, 4); img.writeUInt32BE(SIDE, 8); img.writeUInt32BE(SIDE, 12);
  for (let i = 16; i < img.length; i++) img[i] = rand();
  const lab = Buffer.alloc(8 + N);
  lab.writeUInt32BE(0x801, 0); lab.writeUInt32BE(N, 4);
  for (let i = 0; i < N; i++) lab[8 + i] = (i * 7) % 10;
  fs.writeFileSync(`${d}/data/train-images-idx3-ubyte`, img);
  fs.writeFileSync(`${d}/data/train-labels-idx1-ubyte`, lab);
}

/** The release's RepOpt-VGG, written independently in PyTorch (its state-dict names; target and the layout). */
const PY_MODEL = `
import collections
import torch.nn as nn
import torch.nn.functional as F
BLOCKS, WIDTHS, STRIDES = ${JSON.stringify(BLOCKS)}, ${JSON.stringify(WIDTHS)}, ${JSON.stringify(STRIDES)}
def layout(cin):
    out = [('stage0', cin, min(64, int(64 * WIDTHS[0])), STRIDES[0])]
    c = out[0][2]
    for s, base in enumerate([64, 128, 256, 512]):
        w = int(base * WIDTHS[s])
        for i in range(BLOCKS[s]):
            out.append((f'stage{s + 1}.{i}', c, w, STRIDES[s + 1] if i == 0 else 1))
            c = w
    return out
class Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn = nn.BatchNorm2d(cout)
    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))
class RepOptVGG(nn.Module):
    def __init__(self, cin, classes):
        super().__init__()
        self.blocks = layout(cin)
        self.stage0 = Block(*self.blocks[0][1:])
        for s in range(1, 5):
            setattr(self, f'stage{s}', nn.Sequential(*[Block(*b[1:]) for b in self.blocks if b[0].startswith(f'stage{s}.')]))
        self.linear = nn.Linear(self.blocks[-1][2], classes)
    def forward(self, x):
        for s in range(5):
            x = getattr(self, f'stage{s}')(x)
        return self.linear(F.adaptive_avg_pool2d(x, 1).flatten(1))
`;

// The release-format checkpoint (5 classes, every tensor random, a flat state dict as the release's torch.save)
// and a scale file in the release's format (positive random scales; identity scales where the block has one).
runPython(`${PY_MODEL}
torch.manual_seed(7)
m = RepOptVGG(1, 5)
sd = collections.OrderedDict()
for k, v in m.state_dict().items():
    if k.endswith('running_var'): v = torch.rand(v.shape) + 0.5
    elif k.endswith('num_batches_tracked'): v = torch.tensor(100)
    elif k.endswith('bn.weight'): v = torch.rand(v.shape) + 0.5
    else: v = torch.randn(v.shape) * (0.3 if v.dim() == 4 else 0.1)
    sd[k] = v
torch.save(sd, IN['ckpt'])
scales = collections.OrderedDict()
for name, cin, cout, stride in layout(1):
    scales[f'{name}.scale_conv.weight'] = torch.rand(cout) + 0.5
    scales[f'{name}.scale_1x1.weight'] = torch.rand(cout) + 0.2
    if cin == cout and stride == 1: scales[f'{name}.scale_identity.weight'] = torch.rand(cout) + 0.5
torch.save(scales, IN['scales'])
OUT = None`, { ckpt: `${d}/release.pth`, scales: `${d}/scales.pth` });

const HYPER = { epochs: 2, batchSize: 16, lr: 0.05, momentum: 0.9, weightDecay: 1e-4, schedule: 'constant' as const, labelSmoothing: 0.1, seed: 3 };

test('fine-tune parity: a release-format 5-class checkpoint, fine-tuned on 10 classes, ends as an independent PyTorch RepOptimizer SGD does', async () => {
  const lines: string[] = [];
  const r = await runTraining({
    data: DATA, model: MODEL, mode: 'target', scales: `${d}/scales.pth`, pretrained: `${d}/release.pth`, ...HYPER,
    augment: false, shuffle: false, evaluate: false, threads: 1, quiet: false, out: `${d}/ft`, log: (l) => lines.push(l),
  });
  assert.equal(r.state.iteration, 6);
  assert.equal(r.config.pretrained, path.resolve(`${d}/release.pth`));
  assert.ok(lines.some((l) => /classifier re-initialised \(linear\.weight \[5, 128\] -> \[10, 128\], linear\.bias \[5\] -> \[10\]\)/.test(l)), lines.join('\n'));

  // Our re-initialised head: the same seed and setup as the run (the parity below checks that it is the run's).
  torch.manualSeed(HYPER.seed);
  const s = setupRun({ model: { ...MODEL, inChannels: 1, numClasses: 10 }, mode: 'target', optimizer: { kind: 'sgd', lr: 0.05, momentum: 0.9, nesterov: false, weightDecay: 1e-4 }, scales: `${d}/scales.pth`, pretrained: `${d}/release.pth` });
  const head = torch.tidy(() => Object.fromEntries(s.model.namedParameters().filter(([n]) => n.startsWith('linear.')).map(([n, p]) => [n, toJson(p)])));
  // A pretrained target keeps its weights: no Rule of Initialization.
  const rel = weights(`${d}/release.pth`);
  const own = new Map(s.model.namedParameters());
  assert.equal(maxRel(own.get('stage1.0.conv.weight')!, rel.get('stage1.0.conv.weight')!), 0);
  s.model.dispose();
  s.optimizer.dispose();
  for (const m of s.cslaMults?.values() ?? []) m.dispose();

  // The batches the run trained on (no augmentation, no shuffle).
  const ds = openDataset(DATA, 'train');
  const loader = new DataLoader(ds, { batchSize: 16, shuffle: false, augment: false, transforms: defaultTransforms(ds, 'train', false), workers: 0 });
  const batches: { x: JsonTensor; y: JsonTensor }[] = [];
  for await (const { x, y } of loader.epoch(0, 0)) {
    batches.push({ x: toJson(x), y: toJson(y) });
    x.dispose();
    y.dispose();
  }
  await loader.close();
  assert.equal(batches.length, 3);

  const ref = runPython<Record<string, JsonTensor>>(`${PY_MODEL}
torch.manual_seed(0)
m = RepOptVGG(1, 10)
sd = torch.load(IN['ckpt'])
for k in ('linear.weight', 'linear.bias'): sd[k] = T(IN['head'][k])
m.load_state_dict(sd)
scales = torch.load(IN['scales'])
# RepOptimizer SGD Grad Mults of RepOpt-VGG: s^2 on every 3x3 tap, + t^2 at the centre, + 1 at the centre of o -> o.
mults = {}
for name, cin, cout, stride in layout(1):
    s, t = scales[f'{name}.scale_conv.weight'], scales[f'{name}.scale_1x1.weight']
    g = (s ** 2).view(-1, 1, 1, 1).repeat(1, cin, 3, 3)
    g[:, :, 1, 1] += (t ** 2).view(-1, 1)
    if f'{name}.scale_identity.weight' in scales:
        for o in range(cout): g[o, o, 1, 1] += 1.0
    mults[f'{name}.conv.weight'] = g
lr, mom, wd = ${HYPER.lr}, ${HYPER.momentum}, ${HYPER.weightDecay}
bufs = {}
m.train()
for epoch in range(${HYPER.epochs}):
    for b in IN['batches']:
        m.zero_grad()
        loss = F.cross_entropy(m(T(b['x'])), T(b['y']), label_smoothing=${HYPER.labelSmoothing})
        loss.backward()
        with torch.no_grad():
            for n, p in m.named_parameters():
                g = p.grad * mults[n] if n in mults else p.grad.clone()
                if p.dim() > 1: g = g + wd * p   # the release's decay rule: kernels only
                bufs[n] = g if n not in bufs else bufs[n] * mom + g
                p -= lr * bufs[n]
OUT = {k: v for k, v in m.state_dict().items() if not k.endswith('num_batches_tracked')}`, { ckpt: `${d}/release.pth`, scales: `${d}/scales.pth`, head, batches });

  const ours = weights(`${d}/ft/final.pth`);
  let worst = 0;
  for (const [k, j] of Object.entries(ref)) {
    const t = torch.tensor(j.data, { dtype: 'float32' }).reshape(j.shape);
    const e = maxRel(ours.get(k)!, t);
    worst = Math.max(worst, e);
    assert.ok(e < 1e-5, `${k}: relative difference ${e}`);
  }
  // The run really moved every tensor away from the pretrained file.
  assert.ok(maxRel(ours.get('stage2.1.conv.weight')!, rel.get('stage2.1.conv.weight')!) > 1e-3);
  assert.ok(worst < 1e-5);
});

test('a checkpoint that does not fit is an error naming the tensor; pretrained and init together are refused', async () => {
  const sd = weights(`${d}/release.pth`);
  const bad = new Map(sd);
  bad.set('stage2.1.conv.weight', torch.zeros([32, 16, 3, 3]));
  saveStateDict(`${d}/bad-shape.pth`, bad);
  const missing = new Map(sd);
  missing.delete('stage0.bn.running_mean');
  saveStateDict(`${d}/missing.pth`, missing);
  const base = { data: DATA, model: MODEL, mode: 'plain' as const, epochs: 1, evaluate: false, threads: 1, quiet: true };
  await assert.rejects(runTraining({ ...base, pretrained: `${d}/bad-shape.pth`, out: `${d}/e1` }), (e: Error) => e instanceof OptionError && /stage2\.1\.conv\.weight: checkpoint \[32, 16, 3, 3\], model \[32, 32, 3, 3\]/.test(e.message));
  await assert.rejects(runTraining({ ...base, pretrained: `${d}/missing.pth`, out: `${d}/e2` }), (e: Error) => e instanceof OptionError && /stage0\.bn\.running_mean \[16\] is in the model but not in the checkpoint/.test(e.message));
  await assert.rejects(runTraining({ ...base, pretrained: `${d}/release.pth`, init: `${d}/release.pth`, out: `${d}/e3` }), (e: Error) => e instanceof OptionError && e.option === 'pretrained');
  await assert.rejects(runTraining({ ...base, pretrained: `${d}/release.pth`, freeze: ['nope'], out: `${d}/e4` }), (e: Error) => e instanceof OptionError && /no parameter name starts with 'nope'/.test(e.message));
  await assert.rejects(runTraining({ ...base, stopWhenSettled: { drift: 0.1 }, out: `${d}/e5` }), (e: Error) => e instanceof OptionError && e.option === 'stopWhenSettled');
  assert.throws(() => parseSettleRule('0.1:x'), OptionError);
  assert.deepEqual(parseSettleRule('0.01'), { drift: 0.01, epochs: 2 });
  assert.deepEqual(parseSettleRule('0.01:3'), { drift: 0.01, epochs: 3 });
});

test('--freeze: frozen parameters stay bit-identical to the pretrained file, the rest trains', () => {
  const r = cli(['train', '--data', DATA, ...FLAGS, '--mode', 'target', '--scales', `${d}/scales.pth`, '--pretrained', `${d}/release.pth`, '--freeze', 'stage0,stage1', '--epochs', '1', '--batch-size', '16', '--lr', '0.05', '--out', `${d}/frozen`]);
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /frozen: 6 parameters \(stage0, stage1\), not trained/);
  const rel = weights(`${d}/release.pth`);
  const out = weights(`${d}/frozen/final.pth`);
  for (const k of ['stage0.conv.weight', 'stage0.bn.weight', 'stage0.bn.bias', 'stage1.0.conv.weight', 'stage1.0.bn.weight', 'stage1.0.bn.bias']) {
    assert.equal(torch.tidy(() => out.get(k)!.ne(rel.get(k)!).sum().item()), 0, `${k} is bit-identical`);
  }
  assert.ok(maxRel(out.get('stage2.0.conv.weight')!, rel.get('stage2.0.conv.weight')!) > 1e-4, 'unfrozen layers train');
});

test('Hyper-Search warm start: the hs model from a pretrained target computes the target\'s function', () => {
  const spec = { ...MODEL, inChannels: 1, numClasses: 5 };
  const f = familyOf(spec);
  const target = f.create(spec, 'target');
  const hs = f.create(spec, 'hs');
  try {
    target.loadStateDict(weights(`${d}/release.pth`));
    const rep = loadPretrained(hs, `${d}/release.pth`, { warmStart: true });
    assert.equal(rep.warmStarted.length, 6);
    assert.deepEqual(rep.replaced, []);
    assert.ok(rep.kept.every((k) => /scale_(conv|1x1|identity)\.weight$/.test(k)), rep.kept.join(', '));
    target.eval();
    hs.eval();
    const e = torch.tidy(() => {
      const x = torch.randn([4, 1, SIDE, SIDE]);
      return maxRel(hs.forward(x), target.forward(x));
    });
    assert.ok(e < 1e-5, `warm-started hs vs target: ${e}`);
  } finally {
    target.dispose();
    hs.dispose();
  }
});

test('search: scale drift per epoch in log.jsonl; a search that settles stops early and says why; the report shows the drift chart', () => {
  const out = `${d}/settle`;
  const r = cli(['search', '--data', DATA, ...FLAGS, '--epochs', '6', '--batch-size', '16', '--lr', '0.002', '--stop-when-settled', '0.05:2', '--pretrained', `${d}/release.pth`, '--out', out]);
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stderr, /search epoch 1: scale drift median \S+ max \S+ \(below 0\.05 for 1\/2 epochs\)/);
  assert.match(r.stdout, /search stopped early: scales settled: drift below 0\.05 .* for 2 epochs in a row; stopped after epoch 2 of 6/);
  assert.match(r.stdout, /done: .*; stopped early: scales settled/);
  assert.match(r.stdout, /Hyper-Search warm start: 6 blocks/);
  const log = readJsonl(`${out}/log.jsonl`);
  const epochs = log.filter((x) => x.type === 'epoch');
  assert.equal(epochs.length, 2);
  for (const e of epochs) {
    const dr = e.scaleDrift as { median: number; max: number; tensors: number; settled: number };
    assert.ok(dr.median > 0 && dr.max >= dr.median && dr.max < 0.05, JSON.stringify(dr));
    assert.equal(dr.tensors, 14); // 6 blocks x (conv, 1x1) + 2 identity
  }
  assert.match(String(log.find((x) => x.type === 'end')!.stopReason), /scales settled/);
  assert.ok(fs.existsSync(`${out}/scales.pth`), 'the settled search writes its scales');
  // The logged means are the scales the search ended with.
  const fin = weights(`${out}/final.pth`);
  const means = epochs[1].scaleMeans as Record<string, number>;
  for (const [k, v] of Object.entries(means)) assert.ok(Math.abs(torch.tidy(() => fin.get(k)!.to('float64').mean().item()) - v) < 1e-9, k);

  // The report: drift per epoch (log10 of the logged values) and trajectories, and the stop reason.
  const data = collectReport([out], { weights: false });
  const chart = data.charts.find((c) => c.id === 'drift-epoch')!;
  assert.ok(chart && data.charts.some((c) => c.id === 'drift-trajectories'));
  const maxSeries = chart.series.find((s) => s.role === 'driftMax')!;
  assert.deepEqual(maxSeries.y.map((v) => v!.toFixed(9)), epochs.map((e) => Math.log10((e.scaleDrift as { max: number }).max).toFixed(9)));
  const html = renderReport(data);
  assert.match(html, /Hyper-Search: has it settled\?/);
  assert.match(html, /stopped after epoch 2 of 6/);
});

test('drift warnings: scales still at their initial values (a search with a tiny lr); oscillating scales', () => {
  const r = cli(['search', '--data', DATA, ...FLAGS, '--epochs', '1', '--batch-size', '16', '--lr', '1e-9', '--out', `${d}/still`]);
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /warning: the scales are still at their initial values after epoch 1/);
  // Oscillation, on a stand-in family whose scales go up and down every epoch.
  const seq = [1, 1.2, 1.05, 1.25, 1.1];
  let i = 0;
  const fam = { extractScales: () => new Map([['a.scale_conv.weight', torch.tensor([seq[i], seq[i]])], ['b.scale_conv.weight', torch.tensor([2 * seq[i], 2])]]) } as unknown as ModelFamily;
  const drift = new ScaleDrift(fam, null as never, { drift: 0.01, epochs: 2 });
  const warnings: string[] = [];
  for (let e = 1; e < seq.length; e++) {
    i = e;
    const step = drift.epoch(e, 10);
    warnings.push(...(step.record.scaleWarnings ?? []));
    assert.equal(step.stop, null);
    assert.ok(step.record.scaleDrift.max > 0.05);
  }
  assert.equal(warnings.length, 1);
  assert.match(warnings[0], /the scales oscillate: 100% of the scale tensors reversed direction in epoch 3/);
  // A resumed search: the first epoch's drift (since the resume) does not count towards settling; then it does.
  i = 4;
  const resumed = new ScaleDrift(fam, null as never, { drift: 0.5, epochs: 2 }, { scaleDrift: { settled: 1 } });
  const first = resumed.epoch(5, 10);
  assert.deepEqual([first.record.scaleDrift.settled, first.record.scaleDrift.sinceResume, first.record.scaleWarnings], [1, true, undefined]);
  const second = resumed.epoch(6, 10);
  assert.equal(second.record.scaleDrift.settled, 2);
  assert.match(String(second.stop), /scales settled: drift below 0\.5 .* for 2 epochs in a row; stopped after epoch 6 of 10/);
});
