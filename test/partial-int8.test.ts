/**
 * Per-layer sensitivity and partial INT8 on a briefly trained Fashion-MNIST RepVGG: the ranking covers
 * every layer, most sensitive first; the layers kept in float are float in the ONNX graph (float weight
 * initializer, no DequantizeLinear feeding them) while the others stay QDQ; the simulation agrees with
 * ONNX Runtime (QDQ run as written: same numbers; fused int8 kernels: same top-1); the curve over K ends
 * at FP32; the quantize and export commands take --sensitivity and --keep-float.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import * as torch from '../src/torch/index.js';
import { openDataset } from '../src/data/dataset.js';
import { collectBatches, disposeBatches } from '../src/data/batches.js';
import { top1 } from '../src/train/evaluate.js';
import { calibrate, quantizedLayers } from '../src/deploy/quant.js';
import { OnnxRunner, decodeOnnx, exportOnnx } from '../src/deploy/onnx.js';
import { loadForDeploy, onnxAgreement, type QuantReport } from '../src/deploy/study.js';
import { floatLayersOf, layerSensitivity, parseKeepFloat, partialInt8Curve, partialInt8Net } from '../src/deploy/sensitivity.js';
import { runExport, runQuantize } from '../src/cli/deploy.js';
import { UsageError } from '../src/cli/flags.js';
import { writeReport } from '../src/report/index.js';
import { REPO_ROOT } from './helpers/paths.js';
import { openWatchedPage } from './helpers/browser.js';

torch.setNumThreads(1);
const CLI = path.join(REPO_ROOT, 'dist/src/cli/main.js');
const FMNIST = '/usr/share/datasets/fashion-mnist';
const LAYERS = ['stage0.conv', 'stage1.0.conv', 'stage2.0.conv', 'stage3.0.conv', 'stage4.0.conv', 'linear'];

function trainTiny(dir: string): string {
  const r = spawnSync(process.execPath, [CLI, 'train', '--data', 'fashion-mnist', '--mode', 'repvgg', '--blocks', '1,1,1,1', '--widths', '0.25,0.25,0.25,0.25',
    '--strides', '1,2,2,2,2', '--epochs', '1', '--max-steps', '120', '--batch-size', '64', '--no-eval', '--threads', '1', '--out', dir], { encoding: 'utf8', env: { ...process.env, CI: 'true' } });
  assert.equal(r.status, 0, r.stderr);
  return path.join(dir, 'latest.pth');
}

/** Per Conv / Gemm node of an ONNX graph: its layer (from the weight's name), whether its weight and its data input are dequantized. */
function layerNodes(bytes: Uint8Array): Map<string, { floatWeight: boolean; dqInput: boolean }> {
  const g = decodeOnnx(bytes).graph!;
  const producer = new Map<string, string>();
  for (const n of g.node!) for (const o of n.output!) producer.set(o, n.opType!);
  const floatInits = new Set(g.initializer!.filter((t) => t.dataType === 1).map((t) => t.name!));
  const out = new Map<string, { floatWeight: boolean; dqInput: boolean }>();
  for (const n of g.node!) {
    if (n.opType !== 'Conv' && n.opType !== 'Gemm') continue;
    const [x, w] = n.input!;
    const layer = w.replace(/\.weight(_dequantized)?$/, '');
    out.set(layer, { floatWeight: floatInits.has(w) && producer.get(w) === undefined, dqInput: producer.get(x) === 'DequantizeLinear' });
  }
  return out;
}

test('partial INT8: sensitivity ranking, kept layers float in the ONNX graph, simulation = ONNX Runtime, curve over K', { skip: !fs.existsSync(FMNIST) && `no Fashion-MNIST at ${FMNIST}` }, async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'repopt-partial-'));
  const ckpt = trainTiny(path.join(dir, 'run'));
  const m = loadForDeploy({ checkpoint: ckpt });
  const d = m.deployed;
  const calib = await collectBatches(openDataset('fashion-mnist', 'train'), 256, 128, true, 0);
  const test = await collectBatches(openDataset('fashion-mnist', 'test'), 192, 64, false, 0);
  try {
    const obs = calibrate(d, calib.map((b) => b.x));
    const sens = layerSensitivity(d, obs, test, { observer: 'minmax' });
    assert.deepEqual(sens.layers.map((l) => l.layer).sort(), [...LAYERS].sort());
    assert.equal(sens.images, 192);
    assert.equal(sens.lowBits, 6);
    assert.ok(Math.abs(sens.fp32Top1 - top1(d, test)) < 1e-12);
    for (let i = 1; i < sens.layers.length; i++) {
      const [a, b] = [sens.layers[i - 1], sens.layers[i]];
      assert.ok(a.int8Drop > b.int8Drop || (a.int8Drop === b.int8Drop && a.logitError >= b.logitError), `ranking at ${i}`);
    }
    for (const l of sens.layers) assert.ok(l.logitError > 0 && l.logitError < 0.5 && Number.isFinite(l.lowBitsDrop), JSON.stringify(l));

    // Keep the two most sensitive in float.
    const kept = floatLayersOf(2, d, sens);
    assert.deepEqual(kept, sens.layers.slice(0, 2).map((l) => l.layer));
    assert.deepEqual(floatLayersOf(['linear'], d), ['linear']);
    assert.throws(() => floatLayersOf(['stage9.conv'], d), /no layer 'stage9\.conv'/);
    assert.throws(() => floatLayersOf(7, d, sens), /K must be an integer in \[0, 6\]/);
    const q = partialInt8Net(d, obs, kept, { observer: 'minmax' });
    assert.deepEqual(quantizedLayers(d, q.policy), LAYERS.filter((l) => !kept.includes(l)));
    const bytes = exportOnnx(q);
    const nodes = layerNodes(bytes);
    assert.equal(nodes.size, LAYERS.length);
    for (const [layer, n] of nodes) {
      if (kept.includes(layer)) assert.deepEqual(n, { floatWeight: true, dqInput: false }, `${layer} is kept in float`);
      else assert.deepEqual(n, { floatWeight: false, dqInput: true }, `${layer} is quantized`);
    }
    // Fewer QDQ pairs than the full INT8 graph.
    const count = (b: Uint8Array) => decodeOnnx(b).graph!.node!.filter((n) => n.opType === 'QuantizeLinear').length;
    const full = partialInt8Net(d, obs, [], { observer: 'minmax' });
    assert.ok(count(bytes) < count(exportOnnx(full)));

    // The simulation agrees with ONNX Runtime: QDQ nodes run as written give the same logits...
    const plain = await OnnxRunner.create(bytes, { optimize: false, backend: 'web' });
    try {
      const theirs = await plain.run(test[0].x);
      const mine = torch.noGrad(() => q.forward(test[0].x));
      const rel = torch.tidy(() => theirs.sub(mine).abs().max().item() / mine.abs().max().item());
      assert.ok(rel < 1e-3, `unoptimized ORT vs simulation ${rel}`);
      theirs.dispose();
      mine.dispose();
    } finally {
      await plain.release();
    }
    // ...and its int8 kernels the same top-1 as the export check asks.
    const a = await onnxAgreement(bytes, q, test, { backend: 'auto' });
    assert.ok(a.agreement >= 0.9, `ORT agreement ${a.agreement} (${a.runtime})`);

    // The curve: K = 0 is full INT8, K = all layers is FP32.
    const curve = await partialInt8Curve(d, obs, test.slice(0, 1), sens, { observer: 'minmax', ks: [0, 2, LAYERS.length], latencyImages: 4 });
    assert.deepEqual(curve.map((p) => p.k), [0, 2, LAYERS.length]);
    assert.deepEqual(curve[1].floatLayers, kept);
    assert.equal(curve[2].simTop1, top1(d, test.slice(0, 1)));
    for (const p of curve) assert.ok(p.agreement >= 0.9 && p.msPerImage > 0, JSON.stringify(p));
  } finally {
    disposeBatches(calib);
    disposeBatches(test);
    d.dispose();
    m.trained?.dispose();
  }

  // The commands.
  const run = async (cmd: typeof runQuantize, args: string[]) => {
    const lines: string[] = [];
    const status = await cmd(args, (l) => lines.push(l));
    return { status, out: lines.join('\n') };
  };
  let r = await run(runQuantize, ['--checkpoint', ckpt, '--data', 'fashion-mnist', '--calib-images', '256', '--test-images', '128', '--observers', 'minmax', '--onnx-images', '64',
    '--batch-size', '64', '--sensitivity', '--keep-float', '1', '--json', '--threads', '1']);
  assert.equal(r.status, 0, r.out);
  const rep = JSON.parse(r.out) as QuantReport;
  assert.equal(rep.sensitivity!.layers.length, LAYERS.length);
  assert.equal(rep.sensitivity!.curve!.length, LAYERS.length + 1);
  assert.deepEqual(rep.floatLayers, [rep.sensitivity!.layers[0].layer]);

  // The report's section: the ranking, the curve table and its two charts, drawn without errors.
  fs.writeFileSync(path.join(dir, 'quant-demo.json'), JSON.stringify({ RepVGG: rep }));
  const report = writeReport([path.join(dir, 'run')], path.join(dir, 'report.html'));
  const html = fs.readFileSync(report.file, 'utf8');
  assert.match(html, /Per-layer sensitivity and partial INT8/);
  for (const l of LAYERS) assert.ok(html.includes(`<td>${l}</td>`), l);
  assert.match(html, /kept in float \(K\)/);
  const { browser, page, problems } = await openWatchedPage();
  try {
    await page.goto(`file://${report.file}`, { waitUntil: 'load' });
    await page.waitForFunction('window.repoptReport && window.repoptReport.ready === true', { timeout: 20_000 });
    const charts = (await page.evaluate('Object.keys(window.repoptReport.charts)')) as string[];
    assert.ok(charts.includes('sensitivity-acc-0') && charts.includes('sensitivity-lat-0'), charts.join(', '));
    assert.deepEqual(problems, []);
  } finally {
    await browser.close();
  }

  const onnx = path.join(dir, 'partial.onnx');
  r = await run(runExport, ['--checkpoint', ckpt, '--out', onnx, '--int8', '--calib', 'fashion-mnist', '--calib-images', '256', '--keep-float', 'stage0.conv,linear', '--threads', '1']);
  assert.equal(r.status, 0, r.out);
  assert.match(r.out, /kept in float: stage0\.conv, linear\)/);
  const nodes = layerNodes(new Uint8Array(fs.readFileSync(onnx)));
  assert.deepEqual([...nodes].filter(([, n]) => n.floatWeight).map(([l]) => l).sort(), ['linear', 'stage0.conv']);

  assert.deepEqual(parseKeepFloat('3'), 3);
  assert.deepEqual(parseKeepFloat('stage0.conv, linear'), ['stage0.conv', 'linear']);
  await assert.rejects(run(runExport, ['--checkpoint', ckpt, '--out', onnx, '--keep-float', '2']), (e: Error) => e instanceof UsageError && /--keep-float need --int8/.test(e.message));
  await assert.rejects(run(runExport, ['--checkpoint', ckpt, '--out', onnx, '--int8', '--calib', 'fashion-mnist', '--calib-images', '64', '--keep-float', 'stage9.conv']), /no layer 'stage9\.conv'/);
});
