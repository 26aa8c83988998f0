/**
 * Layers point down (torch -> nn/optim -> repopt -> models -> train/deploy -> report/cli): no module of
 * src/ imports a higher layer, statically, type-only or dynamically (scripts/check-layers.mjs).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { REPO_ROOT } from './helpers/paths.js';

interface Climb { from: string; to: string; file: string; spec: string; unknown?: boolean }
const { climbingImports } = (await import(pathToFileURL(path.join(REPO_ROOT, 'scripts/check-layers.mjs')).href)) as { climbingImports(root: string): Climb[] };

test('no import in src/ climbs to a higher layer', () => {
  const bad = climbingImports(REPO_ROOT);
  assert.deepEqual(bad.map((b) => `${b.file}: ${b.from} -> ${b.to} (${b.spec})`), []);
});

test('the check sees static, multi-line type-only and dynamic imports that climb', () => {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'repopt-layers-'));
  try {
    fs.mkdirSync(path.join(root, 'src/nn'), { recursive: true });
    fs.mkdirSync(path.join(root, 'src/models'), { recursive: true });
    fs.writeFileSync(path.join(root, 'src/models/a.ts'), "import { B } from '../nn/b.js';\nexport const A = B;\n");
    fs.writeFileSync(path.join(root, 'src/nn/b.ts'), "import type {\n  A,\n} from '../models/a.js';\nexport const B = 1;\nconst m = await import('../models/a.js');\n");
    const bad = climbingImports(root);
    assert.deepEqual(bad.map((b) => `${b.file}:${b.from}->${b.to}`), ['src/nn/b.ts:nn->models', 'src/nn/b.ts:nn->models']);
  } finally {
    fs.rmSync(root, { recursive: true, force: true });
  }
});
