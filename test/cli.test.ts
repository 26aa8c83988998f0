/** The command line's own behaviour: the model listing, help, and usage errors. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import os from 'node:os';
import * as nodeFs from 'node:fs';
import { REPO_ROOT } from './helpers/paths.js';
import { extractStateDict, loadPth } from '../src/io/pth.js';
import { readJsonl } from '../src/train/log.js';

const CLI = path.join(REPO_ROOT, 'dist/src/cli/main.js');
const cli = (args: string[]) => spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8' });

test('`repopt models --json` lists every architecture with the table\'s parameter counts', () => {
  const r = cli(['models', '--json']);
  assert.equal(r.status, 0, r.stderr);
  const archs = JSON.parse(r.stdout) as { name: string; params: number; macs: number; modes: string[] }[];
  const by = new Map(archs.map((a) => [a.name, a]));
  assert.equal(by.get('RepOpt-VGG-B1')?.params, 51_841_832);
  assert.equal(Math.round(by.get('RepOpt-VGG-A0')!.params / 1e4) / 100, 8.31);
  assert.deepEqual(by.get('RepOpt-VGG-B1')?.modes, ['target', 'hs', 'csla', 'repvgg']);
  assert.ok(by.has('RepOpt-GhostNet-0.5x'));
  assert.equal(archs.length, 17);
});

test('help and usage errors', () => {
  assert.equal(cli(['help']).status, 0);
  const none = cli([]);
  assert.equal(none.status, 2);
  assert.match(none.stdout, /usage: repopt/);
  const bad = cli(['frobnicate']);
  assert.equal(bad.status, 2);
  assert.match(bad.stderr, /unknown command 'frobnicate'/);
  const flag = cli(['check-equivalency', '--dtype', 'f16']);
  assert.equal(flag.status, 2);
  assert.match(flag.stderr, /--dtype must be f32, f64 or both/);
});

test('`repopt demo` runs search, RepOpt, RepVGG and plain, then writes the table (tiny synthetic budget)', () => {
  const fs = nodeFs;
  const out = fs.mkdtempSync(path.join(os.tmpdir(), 'repopt-demo-'));
  const r = spawnSync(process.execPath, [CLI, 'demo', '--data', 'synthetic:128', '--epochs', '1', '--search-epochs', '1', '--batch-size', '32', '--threads', '1', '--out', out], {
    encoding: 'utf8',
    env: { ...process.env, CI: 'true' },
  });
  assert.equal(r.status, 0, r.stderr);
  for (const d of ['search', 'repopt', 'repvgg', 'plain']) assert.ok(fs.existsSync(path.join(out, d, 'final.pth')), d);
  assert.ok(fs.existsSync(path.join(out, 'search', 'scales.pth')));
  const summary = fs.readFileSync(path.join(out, 'summary.md'), 'utf8');
  assert.match(summary, /\| RepOpt-VGG \| target \+ RepSGD \| \d+\.\d\d% \| \d+ \| \d+ MiB \| 149,\d{3} \|/);
  assert.match(summary, /\| RepVGG \| repvgg \+ SGD \|/);
  assert.match(summary, /\| plain VGG \| target \+ SGD \|/);
  // The RepOpt run really applied Grad Mults built from the searched scales, and the plain run none.
  // Expected per kernel, by hand from the scale file (SGD, p = 2): every tap s_c^2, the centre tap t_c^2
  // more, the identity's diagonal centre 1 more; summed over a [Cout, Cin, 3, 3] kernel that is
  // sum_c (9 Cin s_c^2 + Cin t_c^2 + [identity]).
  const startRecord = (run: string) => readJsonl(path.join(out, run, 'log.jsonl')).find((r) => r.type === 'start')!;
  const applied = startRecord('repopt').gradMults as Record<string, number>;
  assert.deepEqual(startRecord('plain').gradMults, {});
  const scales = extractStateDict(loadPth(path.join(out, 'search', 'scales.pth')));
  const kernels = extractStateDict(loadPth(path.join(out, 'repopt', 'final.pth')));
  const blocks = [...scales.keys()].filter((k) => k.endsWith('.scale_conv.weight')).map((k) => k.slice(0, -'.scale_conv.weight'.length));
  assert.ok(blocks.length >= 8);
  assert.deepEqual(Object.keys(applied).sort(), blocks.map((b) => `${b}.conv.weight`).sort());
  for (const b of blocks) {
    const s = scales.get(`${b}.scale_conv.weight`)!.toArray();
    const t = scales.get(`${b}.scale_1x1.weight`)!.toArray();
    const cin = kernels.get(`${b}.conv.weight`)!.shape[1];
    const identity = scales.has(`${b}.scale_identity.weight`) ? 1 : 0;
    const want = s.reduce((sum, sc, c) => sum + 9 * cin * sc * sc + cin * t[c] * t[c] + identity, 0);
    const got = applied[`${b}.conv.weight`];
    assert.ok(Math.abs(got - want) <= 1e-5 * want, `${b}: applied Grad Mult sum ${got}, scales give ${want}`);
  }
});
