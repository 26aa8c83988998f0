// Builds the addon with npm's own node-gyp against the machine's Node headers (no downloads).
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import path from 'node:path';

const npmRoot = execFileSync('npm', ['root', '-g'], { encoding: 'utf8' }).trim();
const candidates = [
  path.join(npmRoot, 'npm/node_modules/node-gyp/bin/node-gyp.js'),
  path.join(path.dirname(process.execPath), '../lib/node_modules/npm/node_modules/node-gyp/bin/node-gyp.js'),
];
const gyp = candidates.find((p) => existsSync(p));
if (!gyp) {
  console.error('node-gyp not found in npm\'s installation; reinstall npm (it bundles node-gyp).');
  process.exit(1);
}
const nodedir = process.env.npm_config_nodedir || '/usr';
execFileSync(process.execPath, [gyp, 'rebuild', `--nodedir=${nodedir}`, '-j', '2'], { stdio: 'inherit' });
