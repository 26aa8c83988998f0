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
// Node's headers: Debian's nodejs installs them under /usr/include/node; official builds (nvm, tarballs)
// under <prefix>/include/node beside bin/node.
const prefix = path.resolve(path.dirname(process.execPath), '..');
const nodedir = process.env.npm_config_nodedir || (existsSync(path.join(prefix, 'include/node/node.h')) ? prefix : '/usr');
if (!existsSync(path.join(nodedir, 'include/node/node.h'))) {
  console.error(`Node's C headers not found under ${nodedir}/include/node; install them (Debian: apt-get install nodejs libnode-dev) or set npm_config_nodedir.`);
  process.exit(1);
}
execFileSync(process.execPath, [gyp, 'rebuild', `--nodedir=${nodedir}`, '-j', '2'], { stdio: 'inherit' });
