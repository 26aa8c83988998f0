/**
 * The package as a user gets it: `npm pack`, installed into a fresh project outside the repository,
 * `npx repopt setup`, then the README's first ```ts block compiled strictly against the installed
 * package (imports from 'repopt' only) and run. Also: the tarball holds no tests or benches, the
 * documented subpaths resolve, and the optional ONNX Runtime fails with a clear message when absent.
 *
 * The tarball is packed from a clean copy of the tree (no dist/: npm's prepack builds it). The native
 * addon is copied from this checkout into the installed package (building it again
 * takes minutes on a loaded machine); `repopt setup` then only checks the Debian libraries and that
 * the addon loads from the installed location.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { REPO_ROOT } from './helpers/paths.js';

/** The first ```ts block of README.md. */
export function readmeProgram(): string {
  const readme = fs.readFileSync(path.join(REPO_ROOT, 'README.md'), 'utf8');
  const m = /```ts\n([\s\S]*?)```/.exec(readme);
  if (!m) throw new Error('README.md has no ```ts block');
  return m[1];
}

const TSC = path.join(REPO_ROOT, 'node_modules/typescript/bin/tsc');
const run = (cmd: string, args: string[], cwd: string) => {
  const r = spawnSync(cmd, args, { cwd, encoding: 'utf8', env: { ...process.env, npm_config_update_notifier: 'false' } });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} failed (${r.status}):\n${r.stdout}\n${r.stderr}`);
  return r.stdout;
};

test('README: the first ts block is a complete program of under ~70 lines that imports only from repopt', () => {
  const src = readmeProgram();
  const lines = src.trimEnd().split('\n');
  assert.ok(lines.length <= 70, `${lines.length} lines`);
  const imports = [...src.matchAll(/from '([^']+)'/g)].map((m) => m[1]);
  assert.deepEqual([...new Set(imports)], ['repopt']);
  for (const word of ['extractScales', 'initializeFromTwin', 'RepSGD', 'reparameterizeModel', "kind: 'identity'", "kernel: [1, 3]"]) {
    assert.ok(src.includes(word), `uses ${word}`);
  }
});

test('npm pack -> install in a fresh project -> repopt setup -> the README program compiles strictly and runs', () => {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'repopt-pack-'));
  try {
    // packed as a maintainer would from a clean clone: the tracked files (and new ones not ignored),
    // no dist/ and no build/, with the checkout's node_modules (the same lockfile); npm's prepack
    // must build the JavaScript that the package ships
    const clean = path.join(tmp, 'clean');
    const tracked = execFileSync('git', ['ls-files', '-z', '--cached', '--others', '--exclude-standard'], { cwd: REPO_ROOT, encoding: 'utf8' })
      .split('\0')
      .filter((f) => f !== '' && fs.existsSync(path.join(REPO_ROOT, f)));
    for (const f of tracked) {
      fs.mkdirSync(path.dirname(path.join(clean, f)), { recursive: true });
      fs.copyFileSync(path.join(REPO_ROOT, f), path.join(clean, f));
    }
    fs.symlinkSync(path.join(REPO_ROOT, 'node_modules'), path.join(clean, 'node_modules'));
    assert.ok(!fs.existsSync(path.join(clean, 'dist')), 'the clean copy has no build output');
    // the tarball: built files, native sources, setup scripts; no tests, benches or TypeScript sources
    const packed = JSON.parse(run('npm', ['pack', '--json', '--pack-destination', tmp], clean).replace(/^[^[]*/, '')) as { filename: string; files: { path: string }[] }[];
    const files = packed[0].files.map((f) => f.path);
    for (const want of ['dist/src/index.js', 'dist/src/index.d.ts', 'dist/src/cli/main.js', 'native/repopt.cc', 'binding.gyp', 'scripts/setup.sh', 'LICENSE', 'package.json']) {
      assert.ok(files.includes(want), `tarball has ${want}`);
    }
    const stray = files.filter((f) => /^(test|bench|src)\/|^dist\/(test|bench)\/|\.ts$(?<!\.d\.ts)|fixtures/.test(f));
    assert.deepEqual(stray, [], 'no tests, benches or sources in the tarball');

    // a fresh project; dependencies come from npm's cache when present (the registry otherwise)
    const app = path.join(tmp, 'app');
    fs.mkdirSync(app);
    fs.writeFileSync(path.join(app, 'package.json'), JSON.stringify({ name: 'app', private: true, type: 'module' }));
    run('npm', ['install', '--prefer-offline', '--no-audit', '--no-fund', path.join(tmp, packed[0].filename)], app);
    const pkg = path.join(app, 'node_modules/repopt');
    assert.ok(!fs.existsSync(path.join(app, 'node_modules/onnxruntime-web')), 'onnxruntime-web is optional: not installed');
    assert.ok(!fs.existsSync(path.join(app, 'node_modules/sharp')), 'sharp is optional: not installed');

    // before the addon exists, the command line answers (nothing loads libtorch for help and setup)
    const early = spawnSync('npx', ['--no-install', 'repopt', 'setup', '--help'], { cwd: app, encoding: 'utf8' });
    assert.equal(early.status, 0, early.stderr);
    assert.match(early.stdout, /^usage: repopt setup/);
    fs.mkdirSync(path.join(pkg, 'build/Release'), { recursive: true });
    fs.copyFileSync(path.join(REPO_ROOT, 'build/Release/repopt.node'), path.join(pkg, 'build/Release/repopt.node'));
    const setup = spawnSync('npx', ['--no-install', 'repopt', 'setup'], { cwd: app, encoding: 'utf8' });
    assert.equal(setup.status, 0, setup.stderr);
    assert.match(setup.stderr, /ready/);

    // the README program, compiled with strict settings against the installed package's types
    fs.writeFileSync(path.join(app, 'example.ts'), readmeProgram());
    fs.writeFileSync(
      path.join(app, 'subpaths.ts'),
      [
        "import { tensor } from 'repopt/torch';",
        "import { Conv2d } from 'repopt/nn';",
        "import { OnnxRunner } from 'repopt/deploy';",
        "import { createModel } from 'repopt/models';",
        "import { RepAdamW } from 'repopt/repopt';",
        "import { AdamW } from 'repopt/optim';",
        "console.log(tensor([1, 2]).sum().item(), new Conv2d(1, 1, 3).weight.shape.join('x'), createModel('RepOpt-VGG-A0').constructor.name, typeof RepAdamW, typeof AdamW);",
        'try {',
        '  await OnnxRunner.create(new Uint8Array(0));',
        '} catch (e) {',
        '  console.log((e as Error).message);',
        '}',
      ].join('\n'),
    );
    fs.writeFileSync(
      path.join(app, 'tsconfig.json'),
      JSON.stringify({
        compilerOptions: { target: 'ES2022', module: 'NodeNext', moduleResolution: 'NodeNext', strict: true, noEmitOnError: true, skipLibCheck: false, outDir: 'out' },
        files: ['example.ts', 'subpaths.ts'],
      }),
    );
    run(process.execPath, [TSC, '-p', 'tsconfig.json'], app);
    const out = run(process.execPath, ['out/example.js'], app);
    assert.match(out, /^loss \d+\.\d+; target vs multi-branch twin [\d.]+e[-+]\d+, deployed vs target [\d.]+e[-+]\d+; params \d+ -> \d+\n$/);
    const sub = run(process.execPath, ['out/subpaths.js'], app).split('\n');
    assert.equal(sub[0], '3 1x1x3x3 RepOptVGG function function');
    assert.match(sub[1], /needs ONNX Runtime, an optional dependency of repopt: npm install onnxruntime-web/);
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true });
  }
});

test('repopt setup: in the overview, --help, no arguments', () => {
  const main = path.join(REPO_ROOT, 'dist/src/cli/main.js');
  const help = spawnSync(process.execPath, [main, 'setup', '--help'], { encoding: 'utf8' });
  assert.equal(help.status, 0);
  assert.match(help.stdout, /^usage: repopt setup \[options\]\n/);
  const bad = spawnSync(process.execPath, [main, 'setup', '--force'], { encoding: 'utf8' });
  assert.equal(bad.status, 2);
  assert.match(bad.stderr, /repopt setup: .*--force/);
  const overview = execFileSync(process.execPath, [main, '--help'], { encoding: 'utf8' });
  assert.match(overview, /\n {2}setup {14}install the Debian libraries/);
});
