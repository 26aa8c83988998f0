/**
 * `repopt setup`: installs what the package needs (Debian's libtorch, a C++ toolchain) and builds the
 * native addon inside the package, by running scripts/setup.sh from the package root. It loads nothing
 * of libtorch, so it works before the addon exists.
 */
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

/** Runs scripts/setup.sh (the command line is parsed by the caller); its exit status. */
export function runSetup(): number {
  const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
  const r = spawnSync('bash', [path.join(root, 'scripts/setup.sh')], { stdio: 'inherit' });
  return r.status ?? 1;
}
