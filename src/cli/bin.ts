#!/usr/bin/env node
/**
 * The `repopt` executable. `repopt setup` installs what the package needs (Debian's libtorch, the native
 * addon built inside the installed package) and must run before libtorch can load, so it is answered
 * here without importing anything that loads the addon; every other command goes to main.js.
 */
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

if (process.argv[2] === 'setup') {
  const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
  const r = spawnSync('bash', [path.join(root, 'scripts/setup.sh'), ...process.argv.slice(3)], { stdio: 'inherit' });
  process.exit(r.status ?? 1);
} else {
  await import('./main.js');
}
