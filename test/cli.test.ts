/** The command line's own behaviour: the model listing, help, and usage errors. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { REPO_ROOT } from './helpers/paths.js';

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
