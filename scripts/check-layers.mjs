#!/usr/bin/env node
// Layers point down: torch -> nn/optim -> repopt -> models -> train/deploy -> report/cli (docs/architecture.md).
// Prints every import in src/ that climbs from a lower layer to a higher one (static, type-only and
// dynamic imports alike) and exits 1 when there is one. `node scripts/check-layers.mjs [--json]`.
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

/** Each folder of src/ and its rank: a module may import its own folder and any folder of a lower rank. */
export const LAYERS = {
  errors: 0, torch: 0,
  io: 1, nn: 1, optim: 1, data: 1,
  repopt: 2, distributed: 2,
  models: 3,
  train: 4,
  deploy: 5,
  report: 6,
  study: 7,
  cli: 8,
  index: 9,
};

const IMPORT = /(?:^|\n)\s*(?:import|export)\b[^'"`;]*?from\s*['"]([^'"]+)['"]|import\(\s*['"]([^'"]+)['"]\s*\)|(?:^|\n)\s*import\s+['"]([^'"]+)['"]/g;

function filesUnder(dir) {
  return fs.readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    const p = path.join(dir, e.name);
    return e.isDirectory() ? filesUnder(p) : p.endsWith('.ts') ? [p] : [];
  });
}

const layerOf = (src, file) => {
  const rel = path.relative(src, file).split(path.sep);
  return rel.length === 1 ? rel[0].replace(/\.ts$/, '') : rel[0];
};

/** Every import that climbs: { from, to, file, spec }. */
export function climbingImports(root) {
  const src = path.join(root, 'src');
  const out = [];
  for (const file of filesUnder(src)) {
    const from = layerOf(src, file);
    const text = fs.readFileSync(file, 'utf8');
    for (const m of text.matchAll(IMPORT)) {
      const spec = m[1] ?? m[2] ?? m[3];
      if (!spec.startsWith('.')) continue;
      const target = path.resolve(path.dirname(file), spec.replace(/\.js$/, '.ts'));
      const to = layerOf(src, target);
      if (!(from in LAYERS) || !(to in LAYERS)) {
        out.push({ from, to, file: path.relative(root, file), spec, unknown: true });
        continue;
      }
      if (to !== from && LAYERS[to] >= LAYERS[from]) out.push({ from, to, file: path.relative(root, file), spec });
    }
  }
  return out;
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
  const bad = climbingImports(root);
  if (process.argv.includes('--json')) console.log(JSON.stringify(bad));
  else for (const b of bad) console.log(`${b.file}: ${b.from} imports ${b.to} (${b.spec})${b.unknown ? ': a folder with no layer in scripts/check-layers.mjs' : ''}`);
  if (!process.argv.includes('--json')) console.log(bad.length ? `${bad.length} import(s) climb` : 'layers point down: no import climbs');
  process.exit(bad.length ? 1 : 0);
}
