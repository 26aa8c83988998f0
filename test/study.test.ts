/**
 * `repopt study` (issue 25): the plan (every arm x depth x seed, in order), Welch's t-test against
 * hand-checked values, and the whole pipeline on tiny synthetic data (--quick): training, INT8 and
 * low-bit quantization of every run, the ONNX Runtime check, the side-by-side benchmark, study.json,
 * summary.md and report.html, which Chromium renders with every seed's dot, nothing fetched and no
 * console error; a second invocation trains nothing again.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { planRuns, STUDY_DEFAULTS, STUDY_ARMS, convLayers, DEEP, SHALLOW } from '../src/study/plan.js';
import { welch, twoSidedP, incompleteBeta } from '../src/study/stats.js';
import { verdict } from '../src/study/results.js';
import type { StudyResult } from '../src/study/run.js';
import { REPO_ROOT } from './helpers/paths.js';
import { CHROMIUM, openWatchedPage } from './helpers/browser.js';

const MAIN = path.join(REPO_ROOT, 'dist/src/cli/main.js');

test('Student t and Welch: two-sided p-values from the incomplete beta function match tables and a hand computation', () => {
  // t tables: P(|T| > 2.776) = 0.05 at 4 df, P(|T| > 2.228) = 0.05 at 10 df, P(|T| > 1) = 0.5 at 1 df (Cauchy)
  assert.ok(Math.abs(twoSidedP(2.776, 4) - 0.05) < 2e-4);
  assert.ok(Math.abs(twoSidedP(2.228, 10) - 0.05) < 2e-4);
  assert.ok(Math.abs(twoSidedP(1, 1) - 0.5) < 1e-12);
  assert.ok(Math.abs(incompleteBeta(0.5, 2, 2) - 0.5) < 1e-12);
  // a = 1..4, b = 2,4,..,10: t = -3.5 / sqrt(5/12 + 2) = -2.25144, df = (29/12)^2 / ((5/12)^2 / 3 + 4 / 4) = 5.5208
  const w = welch([1, 2, 3, 4], [2, 4, 6, 8, 10]);
  assert.ok(Math.abs(w.t - -3.5 / Math.sqrt(5 / 12 + 2)) < 1e-12);
  assert.ok(Math.abs(w.df - (29 / 12) ** 2 / ((5 / 12) ** 2 / 3 + 1)) < 1e-9);
  assert.ok(w.p > 0.05 && w.p < 0.1, `p ${w.p}`);
  assert.ok(Number.isNaN(welch([1], [2, 3]).p), 'one seed: no test');
  const v = verdict('deep', 'top-1 (%)', 'A', [90.1, 90.6, 90.4], 'B', [86.2, 87.8, 86.9], ' points');
  assert.equal(v.ahead, 'a');
  assert.equal(v.rangesOverlap, false);
  assert.match(v.sentence, /A is ahead \(p < 0\.05\)/);
  const same = verdict('deep', 'top-1 (%)', 'A', [90.1, 90.6, 90.4], 'B', [90.0, 90.7, 90.3], ' points');
  assert.equal(same.ahead, 'none');
  assert.match(same.sentence, /no measured difference/);
  // a drop under quantization: lower is better
  const drop = verdict('deep', 'INT8 drop', 'A', [0.1, 0.2, 0.15], 'B', [3.1, 2.9, 3.4], ' points', false);
  assert.equal(drop.ahead, 'a');
  assert.match(drop.sentence, /A loses less \(p < 0\.05\)/);
});

test('the plan: every arm x depth x seed, each search before the runs that need its scales, QARepVGG and the search budget last', () => {
  const o = { ...STUDY_DEFAULTS, depths: [SHALLOW, DEEP], budgetSearchEpochs: [2], out: 'OUT' }; // the default has no budget runs
  const runs = planRuns(o);
  assert.equal(convLayers(SHALLOW), 8);
  assert.equal(convLayers(DEEP), 28);
  for (const d of ['shallow', 'deep']) for (let seed = 0; seed < 3; seed++) for (const arm of STUDY_ARMS) assert.ok(runs.some((r) => r.key === `${d}/${seed}/${arm}`), `${d}/${seed}/${arm}`);
  assert.equal(runs.length, 2 * 3 * (1 + STUDY_ARMS.length) + 3 * 2);
  const at = (k: string) => runs.findIndex((r) => r.key === k);
  for (const r of runs) if (r.needs?.endsWith('search/scales.pth') || r.needs?.includes('/search-')) assert.ok(at(r.key.replace(/repopt(-search-\d+)?$/, (m) => (m === 'repopt' ? 'search' : m.replace('repopt-', '')))) < at(r.key), r.key);
  const firstQa = runs.findIndex((r) => r.arm === 'qarepvgg');
  assert.ok(runs.slice(firstQa).every((r) => r.arm === 'qarepvgg' || r.arm.includes('search-')), 'QARepVGG after the core arms');
  assert.ok(runs.slice(-6).every((r) => r.arm.includes('search-2')), 'the budget runs last');
  const mode = (k: string) => runs[at(k)].options.mode;
  assert.deepEqual(['repopt', 'repopt-init', 'plain', 'repvgg', 'qarepvgg'].map((a) => mode(`deep/0/${a}`)), ['target', 'target', 'plain', 'repvgg', 'qarepvgg']);
  assert.equal(runs[at('deep/1/repopt-init')].options.scales, 'OUT/deep/seed-1/initial-scales.pth');
  assert.equal(runs[at('deep/1/repopt')].options.scales, 'OUT/deep/seed-1/search/scales.pth');
  // the same recipe in every run but the seed and the mode
  const recipe = (k: string) => { const { seed: _s, mode: _m, scales: _c, epochs: _e, model: _d, ...rest } = runs[at(k)].options; return JSON.stringify(rest); };
  assert.ok(runs.every((r) => recipe(r.key) === recipe('shallow/0/plain')));
});

test('repopt study --quick: the whole pipeline on tiny data, study.json with every arm x depth x seed and its INT8 / low-bit rows, report.html in Chromium; a second run trains nothing', { timeout: 600_000 }, async () => {
  assert.ok(fs.existsSync(CHROMIUM), `no browser at ${CHROMIUM}: run scripts/setup.sh --test`);
  const out = fs.mkdtempSync(path.join(os.tmpdir(), 'repopt-study-'));
  try {
    const run = () => spawnSync(process.execPath, [MAIN, 'study', '--quick', '--out', out, '--threads', '1'], { encoding: 'utf8', timeout: 540_000 });
    const first = run();
    assert.equal(first.status, 0, first.stderr + first.stdout.slice(-3000));
    const study = JSON.parse(fs.readFileSync(path.join(out, 'study.json'), 'utf8')) as StudyResult;
    assert.deepEqual(study.meta.depths.map((d) => d.name), ['shallow', 'deep']);
    for (const d of ['shallow', 'deep']) {
      for (const arm of STUDY_ARMS) {
        const rs = study.runs.filter((r) => r.depth === d && r.arm === arm);
        assert.deepEqual(rs.map((r) => r.seed).sort(), [0, 1], `${d} ${arm}: both seeds`);
        for (const r of rs) {
          assert.ok(r.top1 >= 0 && r.top1 <= 1);
          for (const [pc, bits] of [[false, 8], [true, 8], [true, 6], [true, 5]] as [boolean, number][]) {
            assert.ok(r.quant!.rows.some((q) => q.perChannel === pc && q.weightBits === bits), `${d} ${arm} seed ${r.seed}: ${bits}-bit ${pc ? 'per-channel' : 'per-tensor'} row`);
          }
          assert.ok(r.quant!.weights.length > 0, 'weight statistics');
        }
        const a = study.arms.find((x) => x.depth === d && x.arm === arm)!;
        assert.equal(a.top1.n, 2);
        assert.ok(Math.abs(a.top1.mean - rs.reduce((s, r) => s + r.top1 * 100, 0) / 2) < 1e-9);
      }
    }
    assert.ok(study.runs.some((r) => r.quant?.onnx && r.quant.onnx.images > 0), 'the best INT8 model was checked in ONNX Runtime');
    assert.ok(study.verdicts.length >= 2 * 5, 'a verdict per comparison and depth');
    assert.deepEqual(study.budget.filter((b) => b.depth === 'deep').map((b) => b.searchEpochs), [0, 1, 2]);
    assert.deepEqual(study.budget.filter((b) => b.depth === 'shallow').map((b) => b.searchEpochs), [0, 1]);
    assert.deepEqual(study.missing, []);
    assert.equal(study.bench.length, 2 * 4);
    const summary = fs.readFileSync(path.join(out, 'summary.md'), 'utf8');
    assert.match(summary, /Welch/);

    // a second invocation: everything is done, nothing is trained again, the same results
    const second = run();
    assert.equal(second.status, 0, second.stderr);
    assert.doesNotMatch(second.stdout, /: training|: resuming/);
    const again = JSON.parse(fs.readFileSync(path.join(out, 'study.json'), 'utf8')) as StudyResult;
    assert.deepEqual(again.runs.map((r) => r.top1), study.runs.map((r) => r.top1));

    const file = path.join(out, 'report.html');
    const html = fs.readFileSync(file, 'utf8');
    assert.doesNotMatch(html, /<script|<link[^>]+href=|https?:\/\/(?!www\.w3\.org\/2000\/svg)/, 'nothing outside the page');
    const { browser, page, problems, requests } = await openWatchedPage();
    try {
      await page.goto(`file://${file}`, { waitUntil: 'load' });
      assert.deepEqual(problems, []);
      assert.deepEqual(requests, [`file://${file}`]);
      const dots = (await page.$$eval('figure.seeds circle.seed-dot', (cs) => cs.map((c) => `${c.getAttribute('data-arm')}/${c.getAttribute('data-seed')}`))) as string[];
      assert.equal(dots.length, 2 * STUDY_ARMS.length * 2 + 2, 'one dot per run (and the budget arm of the deep net)');
      const figures = (await page.$$eval('figure', (fs2) => fs2.map((f) => f.className))) as string[];
      for (const c of ['chart seeds', 'chart drops', 'chart depth', 'chart budget', 'chart bench']) assert.ok(figures.includes(c), `a ${c} figure`);
      // bars start at zero: every bench bar's bottom edge sits on the same baseline
      const bottoms = (await page.$$eval('figure.bench rect.bench-bar', (rs) => rs.map((r) => Number(r.getAttribute('y')) + Number(r.getAttribute('height'))))) as number[];
      assert.equal(bottoms.length, 8);
      assert.ok(bottoms.every((b) => Math.abs(b - bottoms[0]) < 1e-6));
      const box = await page.$eval('figure.seeds svg', (s) => s.getBoundingClientRect().width);
      assert.ok(box > 300);
    } finally {
      await browser.close();
    }
  } finally {
    fs.rmSync(out, { recursive: true, force: true });
  }
});
