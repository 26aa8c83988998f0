/**
 * `repopt report`: the summary's words, the log parsing, and the page itself opened
 * in a real browser (Debian's chromium through puppeteer-core; scripts/setup.sh --test
 * installs it): no console error, no request beyond the file, every chart drawn with
 * the data points of the logs it was made from (read here independently), the searched
 * scales' medians and the deployed kernels' centre-tap std checked against PyTorch.
 * Screenshots and a PDF go to test-output/.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { CHROMIUM, openWatchedPage } from './helpers/browser.js';
import { REPO_ROOT } from './helpers/paths.js';
import { runPython } from './helpers/python.js';
import { compare, seriesOf, spreadOf } from '../src/report/index.js';

const CLI = path.join(REPO_ROOT, 'dist/src/cli/main.js');
const OUTPUT = path.join(REPO_ROOT, 'test-output');

function cli(args: string[]): string {
  const r = spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', env: { ...process.env, CI: 'true' } });
  assert.equal(r.status, 0, `repopt ${args.join(' ')}\n${r.stdout}\n${r.stderr}`);
  return r.stdout;
}

type Rec = Record<string, unknown>;
const readLog = (dir: string): Rec[] => fs.readFileSync(path.join(dir, 'log.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as Rec);

test('the summary says whether a difference exceeds the spread between seeds', () => {
  const a = spreadOf([90, 91, 92])!;
  assert.equal(a.mean, 91);
  assert.equal(a.sd, 1);
  const far = compare('A', a, 'B', spreadOf([85, 86, 87])!, 'Top-1', '%', 2, ' points');
  assert.equal(far.exceedsSpread, true);
  assert.equal(far.difference, 5);
  assert.match(far.sentence, /difference of \+5\.00 points; this exceeds the spread between seeds/);
  const near = compare('A', spreadOf([90, 92])!, 'B', spreadOf([91, 93])!, 'Top-1', '%', 2, ' points');
  assert.equal(near.exceedsSpread, false);
  assert.match(near.sentence, /does not exceed the spread between seeds .*ranges overlap/);
  const one = compare('A', spreadOf([90])!, 'B', spreadOf([80])!, 'Top-1', '%', 2, ' points');
  assert.equal(one.exceedsSpread, null);
  assert.match(one.sentence, /one seed per arm/);
});

test('log parsing: a resumed run keeps one point per iteration, wall-clock from the start record', () => {
  const t = (s: number) => new Date(Date.UTC(2026, 0, 1, 0, 0, s)).toISOString();
  const s = seriesOf([
    { type: 'start', time: t(0) },
    { type: 'step', time: t(1), iteration: 1, loss: 2, lr: 0.1, imgPerSec: 10 },
    { type: 'step', time: t(2), iteration: 2, loss: 1.9, lr: 0.1, imgPerSec: 10 },
    { type: 'step', time: t(3), iteration: 3, loss: 1.8, lr: 0.1, imgPerSec: 10 },
    { type: 'interrupt', time: t(3) },
    { type: 'resume', time: t(10) },
    { type: 'step', time: t(11), iteration: 3, loss: 1.7, lr: 0.1, imgPerSec: 10 },
    { type: 'epoch', time: t(12), epoch: 1, iteration: 3, trainLoss: 1.8, trainAcc: 0.5, valTop1: 0.6, lr: 0.05 },
    { type: 'end', time: t(13), seconds: 13, trainImgPerSec: 10, peakRssBytes: 1e8, params: 5, valTop1: 0.6 },
  ]);
  assert.deepEqual(s.steps.iteration, [1, 2, 3]);
  assert.deepEqual(s.steps.loss, [2, 1.9, 1.7]);
  assert.deepEqual(s.steps.seconds, [1, 2, 11]);
  assert.deepEqual(s.epochs.valTop1, [0.6]);
  assert.equal(s.resumes, 1);
  assert.equal(s.end?.params, 5);
});

test('`repopt report` on a missing folder or a folder without runs: a clear error, no file', () => {
  const empty = fs.mkdtempSync(path.join(os.tmpdir(), 'repopt-report-empty-'));
  try {
    for (const [dir, message] of [[path.join(empty, 'nope'), /nope: no such folder/], [empty, /no runs in it \(a run folder holds a log\.jsonl\)/]] as const) {
      const r = spawnSync(process.execPath, [CLI, 'report', dir], { encoding: 'utf8' });
      assert.equal(r.status, 1, r.stderr);
      assert.match(r.stderr, message);
    }
    fs.mkdirSync(path.join(empty, 'run'));
    fs.writeFileSync(path.join(empty, 'run', 'log.jsonl'), '{"type":"start"\n');
    const bad = spawnSync(process.execPath, [CLI, 'report', empty], { encoding: 'utf8' });
    assert.equal(bad.status, 1);
    assert.match(bad.stderr, /run\/log\.jsonl: .*JSON/);
    assert.deepEqual(fs.readdirSync(empty), ['run'], 'nothing written');
  } finally {
    fs.rmSync(empty, { recursive: true, force: true });
  }
});

interface ChartState {
  title: string;
  canvas: boolean;
  series: { label: string; run: string | null; role: string | null; points: number; values: [number, number][] }[];
}

test('report.html in chromium: every chart drawn from the runs\' data, nothing fetched, no console error', { timeout: 240_000 }, async () => {
  assert.ok(fs.existsSync(CHROMIUM), `no browser at ${CHROMIUM}: run scripts/setup.sh --test (installs Debian's chromium) or set CHROMIUM`);
  const out = fs.mkdtempSync(path.join(os.tmpdir(), 'repopt-report-'));
  // A small study laid out as the demo does with --seeds: a search, RepOpt-VGG and RepVGG for two seeds.
  const common = ['--data', 'synthetic:96', '--blocks', '2,1,1,1', '--widths', '0.25,0.25,0.25,0.25', '--strides', '1,1,2,2,2',
    '--batch-size', '32', '--log-every', '1', '--threads', '1', '--quiet', '--warmup', '0.5'];
  const search = path.join(out, 'seed-0', 'search');
  cli(['search', ...common, '--epochs', '1', '--out', search]);
  const runs: string[] = [];
  for (const seed of [0, 1]) {
    for (const mode of ['target', 'repvgg']) {
      const dir = path.join(out, `seed-${seed}`, mode === 'target' ? 'repopt' : 'repvgg');
      cli(['train', ...common, '--epochs', '2', '--mode', mode, '--seed', String(seed), ...(mode === 'target' ? ['--scales', path.join(search, 'scales.pth')] : []), '--out', dir]);
      runs.push(dir);
    }
  }
  // The quantization results as `quant-demo --seeds 2` writes them, one per seed folder (hand-made numbers).
  const quant = (fp32: number, w5: number) => ({
    'RepOpt-VGG': { fp32Deployed: 0.9, calibImages: 64, testImages: 96, rows: [{ observer: 'minmax', perChannel: true, weightBits: 8, top1: 0.89 }, { observer: 'mse', perChannel: false, weightBits: 5, top1: 0.8 }], weights: [] },
    RepVGG: { fp32Deployed: fp32, calibImages: 64, testImages: 96, rows: [{ observer: 'minmax', perChannel: true, weightBits: 8, top1: 0.9 }, { observer: 'mse', perChannel: false, weightBits: 5, top1: w5 }], weights: [] },
  });
  fs.writeFileSync(path.join(out, 'seed-0', 'quant-demo.json'), JSON.stringify(quant(0.91, 0.5)));
  fs.writeFileSync(path.join(out, 'seed-1', 'quant-demo.json'), JSON.stringify(quant(0.93, 0.6)));

  const file = path.join(out, 'report.html');
  const stdout = cli(['report', out, '--out', file]);
  assert.match(stdout, new RegExp(`5 run\\(s\\), \\d+ charts, \\d+ KiB -> ${file.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}`));
  const html = fs.readFileSync(file, 'utf8');
  assert.doesNotMatch(html, /<script[^>]+src=|<link[^>]+href=|https?:\/\/(?!github\.com\/leeoniya)/, 'the page references nothing outside itself');

  fs.mkdirSync(OUTPUT, { recursive: true });
  const { browser, page, problems, requests } = await openWatchedPage();
  try {
    await page.setViewport({ width: 1366, height: 900 });
    await page.goto(`file://${file}`, { waitUntil: 'load' });
    await page.waitForFunction('window.repoptReport && window.repoptReport.ready === true', { timeout: 20_000 });
    const charts = (await page.evaluate('window.repoptReport.charts')) as Record<string, ChartState>;
    assert.deepEqual(problems, []);
    assert.deepEqual(requests, [`file://${file}`], 'the page fetches nothing but itself');

    const expected = ['curve-loss-steps', 'curve-loss-time', 'curve-trainacc-steps', 'curve-trainacc-time', 'curve-val-steps', 'curve-val-time', 'curve-lr-steps', 'curve-lr-time',
      'speed-imgps', 'speed-rss', 'scales-conv', 'scales-1x1', 'scales-identity', 'drift-epoch', 'drift-trajectories', 'weights-std', 'weights-ratio', 'weights-outliers', 'quant-0'];
    assert.deepEqual(Object.keys(charts).sort(), [...expected].sort());
    for (const id of expected) {
      assert.ok(charts[id].canvas, `${id} has a canvas`);
      const box = await page.$eval(`#${id} canvas`, (c) => { const r = c.getBoundingClientRect(); return { w: r.width, h: r.height }; });
      assert.ok(box.w > 200 && box.h > 100, `${id} is drawn (${box.w}x${box.h})`);
    }

    const close = (a: number, b: number, what: string) => assert.ok(Math.abs(a - b) <= 1e-9 * Math.max(1, Math.abs(b)), `${what}: ${a} vs ${b}`);
    const samePoints = (got: [number, number][], want: [number, number][], what: string) => {
      assert.equal(got.length, want.length, `${what}: ${got.length} points plotted, ${want.length} in the log`);
      want.forEach(([x, y], i) => {
        close(got[i][0], x, `${what} x[${i}]`);
        close(got[i][1], y, `${what} y[${i}]`);
      });
    };
    const seriesFor = (id: string, dir: string) => {
      const s = charts[id].series.filter((v) => v.run === path.resolve(dir));
      assert.equal(s.length, 1, `${id} has one series for ${dir}`);
      return s[0].values;
    };
    for (const dir of [...runs, search]) {
      const recs = readLog(dir);
      const t0 = Date.parse(recs.find((r) => r.type === 'start')!.time as string);
      const steps = recs.filter((r) => r.type === 'step');
      const epochs = recs.filter((r) => r.type === 'epoch');
      assert.ok(steps.length >= 3, 'the runs log every step');
      samePoints(seriesFor('curve-loss-steps', dir), steps.map((r) => [r.iteration as number, r.loss as number]), `${dir} loss vs steps`);
      samePoints(seriesFor('curve-loss-time', dir), steps.map((r) => [(Date.parse(r.time as string) - t0) / 1000, r.loss as number]), `${dir} loss vs time`);
      samePoints(seriesFor('curve-lr-steps', dir), steps.map((r) => [r.iteration as number, r.lr as number]), `${dir} lr vs steps`);
      samePoints(seriesFor('curve-trainacc-steps', dir), epochs.map((r) => [r.iteration as number, (r.trainAcc as number) * 100]), `${dir} train acc`);
      samePoints(seriesFor('curve-val-time', dir), epochs.map((r) => [(Date.parse(r.time as string) - t0) / 1000, (r.valTop1 as number) * 100]), `${dir} val top-1 vs time`);
    }

    // Speed: one bar per arm, the mean of the runs' end records; a dot per seed.
    const ends = (arm: string) => runs.filter((d) => path.basename(d) === arm).map((d) => readLog(d).find((r) => r.type === 'end')!);
    const speed = charts['speed-imgps'];
    const cats = ['RepOpt-VGG', 'RepVGG', 'Hyper-Search'];
    const bars = speed.series.find((s) => s.role === 'mean')!.values;
    for (const [i, arm] of [[0, 'repopt'], [1, 'repvgg']] as const) {
      const v = ends(arm).map((e) => e.trainImgPerSec as number);
      close(bars[i][1], (v[0] + v[1]) / 2, `${cats[i]} mean img/s`);
      close(speed.series.filter((s) => s.role === 'seed')[1].values.find((p) => p[0] === i)![1], v[1], `${cats[i]} seed 1 img/s`);
    }
    const rssBars = charts['speed-rss'].series.find((s) => s.role === 'mean')!.values;
    close(rssBars[1][1], ends('repvgg').reduce((a, e) => a + (e.peakRssBytes as number), 0) / 2 / 2 ** 20, 'RepVGG mean peak RSS');

    // Hyper-Search scales: the per-layer medians and ranges against PyTorch reading scales.pth.
    const py = runPython<Record<string, [number, number, number]>>(
      `sd = torch.load(IN, map_location='cpu')\nOUT = {k: [float(v.min()), float(v.double().quantile(0.5)), float(v.max())] for k, v in sd.items()}`,
      path.join(search, 'scales.pth'),
    );
    for (const branch of ['conv', '1x1', 'identity']) {
      const c = charts[`scales-${branch}`];
      const median = c.series.find((s) => s.role === 'median')!.values;
      const min = c.series.find((s) => s.role === 'min')!.values;
      const keys = Object.keys(py).filter((k) => k.includes(`.scale_${branch}`));
      assert.equal(median.length, keys.length, `${branch}: one point per layer`);
      keys.forEach((k, i) => {
        assert.ok(Math.abs(median[i][1] - py[k][1]) < 1e-6, `${k} median ${median[i][1]} vs ${py[k][1]}`);
        assert.ok(Math.abs(min[i][1] - py[k][0]) < 1e-6, `${k} min`);
      });
    }

    // Table 11: the centre-tap and surrounding-tap std of RepOpt-VGG's deployed kernels (BN folded), against PyTorch.
    const ref = runPython<{ centre: number[]; around: number[] }>(`
sd = torch.load(IN, map_location='cpu')
centre, around = [], []
for k in [k for k in sd if k.endswith('.conv.weight')]:
    p = k[:-len('conv.weight')]
    w = sd[k].double()
    t = sd[p + 'bn.weight'].double() / (sd[p + 'bn.running_var'].double() + 1e-5).sqrt()
    w = (w * t.reshape(-1, 1, 1, 1)).flatten(2)
    centre.append(float(w[:, :, 4].std()))
    around.append(float(torch.cat([w[:, :, :4], w[:, :, 5:]], 2).std()))
OUT = {'centre': centre, 'around': around}
`, path.join(runs[0], 'final.pth'));
    const std = charts['weights-std'].series.filter((s) => s.run === path.resolve(runs[0]));
    const centre = std.find((s) => s.role === 'centreStd')!.values.map((p) => p[1]);
    const around = std.find((s) => s.role === 'surroundStd')!.values.map((p) => p[1]);
    assert.equal(centre.length, ref.centre.length);
    ref.centre.forEach((v, i) => assert.ok(Math.abs(centre[i] - v) < 1e-6 * v, `layer ${i} centre std ${centre[i]} vs PyTorch ${v}`));
    ref.around.forEach((v, i) => assert.ok(Math.abs(around[i] - v) < 1e-6 * v, `layer ${i} around std ${around[i]} vs PyTorch ${v}`));

    // Quantization: the two seeds' numbers per arm and configuration: mean line, min-max band.
    const q = charts['quant-0'];
    assert.deepEqual(q.series.filter((s) => s.role === 'top1').map((s) => s.label), ['RepOpt-VGG (mean of 2 seeds)', 'RepVGG (mean of 2 seeds)']);
    const repvggQ = q.series.filter((s) => s.label.startsWith('RepVGG'));
    samePoints(repvggQ.find((s) => s.role === 'top1')!.values, [[0, 92], [1, 90], [2, 55]], 'RepVGG quantization, mean');
    samePoints(repvggQ.find((s) => s.role === 'min')!.values, [[0, 91], [1, 90], [2, 50]], 'RepVGG quantization, min');
    samePoints(repvggQ.find((s) => s.role === 'max')!.values, [[0, 93], [1, 90], [2, 60]], 'RepVGG quantization, max');

    // The summary, the header and the commands are on the page.
    const text = await page.$eval('main', (m) => (m as unknown as { innerText: string }).innerText);
    assert.match(text, /Top-1: RepOpt-VGG .* vs RepVGG .*, a difference of .* points; this (does not )?exceed/);
    assert.match(text, /2 seeds \(0, 1\)/);
    assert.match(text, /libtorch\s+\d+\.\d+/);
    // RepOpt-VGG 80, 80 vs RepVGG 50, 60 at 5 bits: no overlap over the two seeds.
    assert.match(text, /Top-1 at W5 mse tensor: RepOpt-VGG 80\.00% vs RepVGG 55\.00%, a difference of \+25\.00 points; this exceeds the spread between seeds/);
    assert.match(text, /repopt train --data synthetic:96 --blocks 2,1,1,1 .*--mode repvgg .*--seed 1 /);

    await page.screenshot({ path: path.join(OUTPUT, 'report.png'), fullPage: true });
    // Print: the charts shrink to the page's columns (nothing wider than its box), and a PDF comes out.
    await page.emulateMediaType('print');
    await page.setViewport({ width: 760, height: 1000 });
    await page.evaluate('window.dispatchEvent(new Event("resize"))');
    await new Promise((r) => setTimeout(r, 300));
    const overflow = await page.$$eval('.chart', (els) => els.filter((e) => { const c = e.querySelector('canvas'); return c && c.getBoundingClientRect().width > e.getBoundingClientRect().width + 1; }).map((e) => e.id));
    assert.deepEqual(overflow, [], 'charts fit their boxes in print layout');
    await page.screenshot({ path: path.join(OUTPUT, 'report-print.png'), fullPage: true });
    await page.pdf({ path: path.join(OUTPUT, 'report.pdf'), format: 'A4', printBackground: true });
    assert.ok(fs.statSync(path.join(OUTPUT, 'report.pdf')).size > 10_000);
    assert.deepEqual(problems, []);
    fs.copyFileSync(file, path.join(OUTPUT, 'report.html'));
  } finally {
    await browser.close();
    fs.rmSync(out, { recursive: true, force: true });
  }
});

test('`repopt quant-demo` writes report.html beside quant-demo.json with its numbers, and prints the path', { timeout: 240_000 }, () => {
  const out = fs.mkdtempSync(path.join(os.tmpdir(), 'repopt-quant-report-'));
  try {
    const stdout = cli(['quant-demo', '--data', 'synthetic:64', '--epochs', '1', '--search-epochs', '1', '--batch-size', '32', '--calib-images', '32',
      '--test-images', '64', '--onnx-images', '0', '--weight-bits', '8,5', '--threads', '1', '--out', out]);
    const file = path.join(out, 'report.html');
    assert.ok(stdout.includes(`report: ${file}`), stdout);
    const study = JSON.parse(fs.readFileSync(path.join(out, 'quant-demo.json'), 'utf8')) as Record<string, { fp32Deployed: number; rows: { top1: number }[] }>;
    const html = fs.readFileSync(file, 'utf8');
    const data = JSON.parse(/<script type="application\/json" id="report-data">(.*?)<\/script>/s.exec(html)![1]) as { charts: { id: string; series: { label: string; y: number[] }[] }[] };
    const q = data.charts.find((c) => c.id === 'quant-0')!;
    for (const arm of ['RepOpt-VGG', 'RepVGG']) {
      const y = q.series.find((s) => s.label === arm)!.y;
      assert.deepEqual(y, [study[arm].fp32Deployed * 100, ...study[arm].rows.map((r) => r.top1 * 100)]);
    }
    // The three runs (search, RepOpt-VGG, RepVGG) are in it too.
    assert.equal(data.charts.find((c) => c.id === 'curve-loss-steps')!.series.length, 3);
    assert.match(html, /repopt quant-demo --data synthetic:64/);
  } finally {
    fs.rmSync(out, { recursive: true, force: true });
  }
});
