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
import { COMMAND_SPECS, TRAIN_COMMAND } from '../src/cli/commands.js';
import { HelpRequest, UsageError, formatHelp, parseCommand } from '../src/cli/flags.js';

const CLI = path.join(REPO_ROOT, 'dist/src/cli/main.js');
const cli = (args: string[]) => spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8' });

test('`repopt models --json` lists every architecture with the table\'s parameter counts', () => {
  const r = cli(['models', '--json']);
  assert.equal(r.status, 0, r.stderr);
  const archs = JSON.parse(r.stdout) as { name: string; params: number; macs: number; modes: string[] }[];
  const by = new Map(archs.map((a) => [a.name, a]));
  assert.equal(by.get('RepOpt-VGG-B1')?.params, 51_841_832);
  assert.equal(Math.round(by.get('RepOpt-VGG-A0')!.params / 1e4) / 100, 8.31);
  assert.deepEqual(by.get('RepOpt-VGG-B1')?.modes, ['target', 'hs', 'csla', 'repvgg', 'qarepvgg']);
  assert.ok(by.has('RepOpt-GhostNet-0.5x'));
  // RepOpt-MobileOne S0-S4: the paper's deployed parameters (2.1M ... 14.8M).
  assert.deepEqual(['S0', 'S1', 'S2', 'S3', 'S4'].map((v) => Math.round(by.get(`RepOpt-MobileOne-${v}`)!.params / 1e5) / 10), [2.1, 4.8, 7.8, 10.1, 14.8]);
  assert.deepEqual(by.get('RepOpt-MobileOne-S0')?.modes, ['target', 'hs', 'csla', 'mobileone']);
  assert.equal(archs.length, 22);
});

/** The command names `repopt help` lists. */
function commandNames(): string[] {
  const r = cli(['help']);
  assert.equal(r.status, 0, r.stderr);
  const names = [...r.stdout.split('commands:')[1].matchAll(/^ {2}([a-z-]+) /gm)].map((m) => m[1]);
  return names;
}

test('help and usage errors', () => {
  const names = commandNames();
  assert.deepEqual([...names].sort(), ['bench', 'check-equivalency', 'demo', 'deploy', 'eval', 'export', 'inspect-weights', 'models', 'quant-demo', 'quantize', 'report', 'scales', 'search', 'setup', 'smoke', 'study', 'train']);
  const none = cli([]);
  assert.equal(none.status, 2);
  assert.match(none.stderr, /usage: repopt/);
  const bad = cli(['frobnicate']);
  assert.equal(bad.status, 2);
  assert.match(bad.stderr, /unknown command 'frobnicate'/);
  const flag = cli(['check-equivalency', '--dtype', 'f16']);
  assert.equal(flag.status, 2);
  assert.match(flag.stderr, /--dtype must be one of f32, f64, both, float32, float64, got 'f16'/);
});

test('`repopt <command> --help` works for every command and documents exactly the flags the command accepts', () => {
  const names = commandNames();
  assert.deepEqual(names, COMMAND_SPECS.map((c) => c.name));
  for (const name of names) {
    const r = cli([name, '--help']);
    assert.equal(r.status, 0, `${name} --help: ${r.stderr}`);
    assert.equal(r.stderr, '');
    assert.ok(r.stdout.startsWith(`usage: repopt ${name}`), `${name} --help: ${r.stdout.slice(0, 80)}`);
    assert.match(r.stdout, /--help +print this help/);
  }
  // The other spellings, and --help winning over anything else on the line (even flags that would be errors).
  for (const form of [['train', '-h'], ['help', 'train'], ['train', '--bogus', '--help']]) {
    const r = cli(form);
    assert.equal(r.status, 0, form.join(' '));
    assert.ok(r.stdout.startsWith('usage: repopt train --data SPEC'), form.join(' '));
  }
  // In process (no libtorch start per flag): the help lists every flag of the spec, and each listed flag parses.
  for (const spec of COMMAND_SPECS) {
    const help = formatHelp(spec);
    const listed = [...help.matchAll(/^ {2}--([a-z0-9-]+)/gm)].map((m) => m[1]).filter((f) => f !== 'help');
    assert.deepEqual([...listed].sort(), Object.keys(spec.flags).sort(), spec.name);
    for (const f of listed) {
      try {
        parseCommand(spec, [...(spec.positional ?? []).map(() => 'x'), `--${f}=@junk@`]);
      } catch (e) {
        assert.ok(e instanceof UsageError, `${spec.name} --${f}: ${String(e)}`);
        assert.doesNotMatch(e.message, /unknown flag/, `${spec.name} --${f}`);
      }
    }
  }
});

test('parseCommand: typed values, defaults, required flags', () => {
  const { flags, given } = parseCommand(TRAIN_COMMAND, ['--data', 'synthetic:64', '--blocks=1,2,2,1', '--lr', '0.05', '--nesterov', '--mode', 'plain']);
  assert.equal(flags.data, 'synthetic:64');
  assert.deepEqual(flags.blocks, [1, 2, 2, 1]);
  assert.equal(flags.lr, 0.05);
  assert.equal(flags.nesterov, true);
  assert.equal(flags['no-augment'], false);
  assert.equal(flags.mode, 'plain');
  assert.equal(flags.epochs, 10); // default
  assert.equal(flags['batch-size'], 64);
  assert.equal(flags.widths, undefined);
  assert.deepEqual([...given].sort(), ['blocks', 'data', 'lr', 'mode', 'nesterov']);
  assert.throws(() => parseCommand(TRAIN_COMMAND, []), (e: Error) => e instanceof UsageError && /--data SPEC is required/.test(e.message));
  assert.throws(() => parseCommand(TRAIN_COMMAND, ['--help']), (e: Error) => e instanceof HelpRequest && e.message === formatHelp(TRAIN_COMMAND));
});

test('bad flags are clear usage errors (exit 2, the message, the usage line)', () => {
  const cases: [string[], RegExp][] = [
    [['train', '--data', 'synthetic', '--bogus'], /repopt train: unknown flag --bogus\n/],
    [['train', '--data', 'synthetic', '--epoch', '3'], /unknown flag --epoch \(did you mean --epochs/],
    [['train', '--data', 'synthetic', '--epochs'], /flag --epochs needs a value \(N\)/],
    [['train', '--data', 'synthetic', '--epochs', '--nesterov'], /flag --epochs needs a value/],
    [['train', '--data', 'synthetic', '--epochs', 'ten'], /--epochs expects a number, got 'ten'/],
    [['train', '--data', 'synthetic', '--epochs', '2.5'], /--epochs must be a positive integer, got 2\.5/],
    [['train', '--data', 'synthetic', '--batch-size', '0'], /--batch-size must be a positive integer, got 0/],
    [['train', '--data', 'synthetic', '--lr', '-1'], /--lr must be a positive number, got -1/],
    [['train', '--data', 'synthetic', '--momentum', '1.5'], /--momentum must be in \[0, 1\], got 1\.5/],
    [['train', '--data', 'synthetic', '--mode', 'fast'], /--mode must be one of target, plain, repvgg, qarepvgg, rep, mobileone, csla, got 'fast'/],
    [['train', '--data', 'synthetic', '--nesterov=yes'], /flag --nesterov takes no value/],
    [['train', '--data', 'synthetic', '--seed', '1', '--seed', '2'], /--seed given twice/],
    [['train', '--data', 'synthetic', 'extra'], /unexpected argument 'extra'/],
    [['train', '--blocks', '1,1,1,1', '--widths', '1,1,1,1'], /--data SPEC is required/],
    [['train', '--data', 'synthetic', '--blocks', '1,1,1'], /--blocks takes 4 comma-separated values, got 1,1,1/],
    [['train', '--data', 'synthetic', '--blocks', '1,0,1,1'], /--blocks takes values that are each a positive integer, got 1,0,1,1/],
    [['train', '--data', 'synthetic', '--strides', '1,1,3,2,2'], /--strides takes values that are each an integer in \[1, 2\]/],
    [['train', '--data', 'synthetic', '--widths', '1,x,1,1'], /--widths expects comma-separated numbers, got '1,x,1,1'/],
    [['search', '--data', 'synthetic', '--scales', 'x.pth'], /repopt search: unknown flag --scales/],
    [['train', '--data', 'synthetic', '--stop-when-settled', '0.01'], /repopt train: unknown flag --stop-when-settled/],
    [['search', '--data', 'synthetic:64', '--blocks', '1,1,1,1', '--widths', '0.25,0.25,0.25,0.25', '--stop-when-settled', 'soon'], /--stop-when-settled: stopWhenSettled takes DRIFT\[:EPOCHS\]/],
    [['train', '--data', 'synthetic:64', '--blocks', '1,1,1,1', '--widths', '0.25,0.25,0.25,0.25', '--mode', 'plain', '--freeze', 'nope'], /--freeze: no parameter name starts with 'nope' \(the model's top-level names: stage0, /],
    [['quantize', '--checkpoint', 'x.pth', '--data', 'synthetic', '--observers', 'minmax,kl'], /--observers: unknown observer 'kl' \(known: minmax, percentile, mse\)/],
    [['quantize', '--checkpoint', 'x.pth', '--data', 'synthetic', '--weight-bits', '8,1'], /--weight-bits takes values that are each an integer in \[2, 8\]/],
    [['export', '--checkpoint', 'x.pth', '--out', 'x.onnx', '--observer', 'mse'], /--observer need --int8/],
    [['export', '--checkpoint', 'x.pth'], /--out FILE\.onnx is required \(or --web DIR\)/],
    [['export', '--checkpoint', 'x.pth', '--web', 'page'], /--web needs a data set: --calib SPEC/],
    [['export', '--checkpoint', 'x.pth', '--web', 'page', '--calib', 'fashion-mnist', '--out', 'x.onnx'], /--out cannot go with --web/],
    [['export', '--checkpoint', 'x.pth', '--out', 'x.onnx', '--web-images', '4'], /--web-images needs --web DIR/],
    [['export', '--checkpoint', 'x.pth', '--out', 'x.onnx', '--keep-float', '2'], /--keep-float need --int8/],
    [['export', '--checkpoint', 'x.pth', '--out', 'x.onnx', '--int8', '--calib', 'synthetic', '--keep-float', ' , '], /--keep-float: expected a count K or layer names/],
    [['bench', '--modes', 'target,fast'], /--modes: unknown mode 'fast'/],
    [['scales'], /scales needs FILE/],
    [['scales', 'a.pth', 'b.pth', '--arch', 'RepOpt-VGG-A0'], /unexpected argument 'b\.pth'/],
    [['eval', '--data', 'synthetic'], /--checkpoint FILE is required/],
    [['models', '--json=1'], /flag --json takes no value/],
    [['report'], /report needs RUN_DIR/],
    [['report', 'runs/x', '--bogus'], /unknown flag --bogus/],
    [['demo', '--seeds', '0'], /--seeds must be a positive integer, got 0/],
  ];
  for (const [args, message] of cases) {
    const r = cli(args);
    assert.equal(r.status, 2, `${args.join(' ')}: exit ${r.status} ${r.stderr}`);
    assert.match(r.stderr, message, args.join(' '));
    assert.match(r.stderr, new RegExp(`usage: repopt ${args[0]} `), args.join(' '));
    assert.equal(r.stdout, '', args.join(' '));
  }
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
  // The HTML report beside the outputs, its path printed; one seed per arm, and the summary says so.
  const report = path.join(out, 'report.html');
  assert.ok(r.stdout.includes(`report: ${report}`), r.stdout);
  assert.match(fs.readFileSync(report, 'utf8'), /"id":"curve-val-steps"/);
  assert.match(summary, /With one seed per arm there is no spread between seeds/);
});
