/**
 * Stopping runs with real signals on the path users take: the real CLI as a
 * child process, Fashion-MNIST IDX files (Debian's dataset-fashion-mnist)
 * through the default loader (a worker thread) and the default libtorch
 * threads. SIGINT and SIGTERM save at the next step, log an `interrupt` record
 * and exit 130 / 143; --resume then ends with weights identical to an
 * uninterrupted run. SIGKILL loses only the steps since the last periodic
 * checkpoint (--save-every). The demo passes signals to its child; quant-demo's
 * training stages and quantize's QAT stop the same way.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import { createRequire } from 'node:module';
import path from 'node:path';
import * as torch from '../src/torch/index.js';
import { loadPth, extractStateDict } from '../src/io/pth.js';
import { readJsonl } from '../src/train/log.js';
import { REPO_ROOT } from './helpers/paths.js';

torch.setNumThreads(1);
const CLI = path.join(REPO_ROOT, 'dist/src/cli/main.js');
const FMNIST = '/usr/share/datasets/fashion-mnist';
const tmp = () => fs.mkdtempSync(path.join(os.tmpdir(), 'repopt-signals-'));
// A small RepOpt-VGG on 28x28 images; no --threads, no --workers: the defaults.
const trainArgs = (data: string, budget = ['--epochs', '1', '--batch-size', '32']) => ['train', '--data', data, '--blocks', '1,1,1,1', '--widths', '0.25,0.25,0.25,0.25',
  '--strides', '1,1,2,2,2', '--mode', 'plain', ...budget, '--no-eval', '--ema', '0.9', '--log-every', '1', '--quiet'];
const RUN = trainArgs(`fashion-mnist:${FMNIST}`);

function cli(args: string[]): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', env: { ...process.env, CI: 'true' } });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

function start(args: string[]): { child: ChildProcess; output: () => string; exit: Promise<{ code: number | null; signal: NodeJS.Signals | null }> } {
  const child = spawn(process.execPath, [CLI, ...args], { env: { ...process.env, CI: 'true' } });
  let out = '';
  child.stdout!.on('data', (b: Buffer) => (out += b.toString()));
  child.stderr!.on('data', (b: Buffer) => (out += b.toString()));
  const exit = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => child.on('exit', (code, signal) => resolve({ code, signal })));
  return { child, output: () => out, exit };
}

const records = (file: string) => (fs.existsSync(file) ? readJsonl(file) : []);

/** Resolves once `ready()` holds (polled), or rejects if the child exits first. */
function waitFor(ready: () => boolean, exit: Promise<unknown>, what: string, output?: () => string): Promise<void> {
  return new Promise((resolve, reject) => {
    const timer = setInterval(() => {
      if (ready()) {
        clearInterval(timer);
        resolve();
      }
    }, 20);
    void exit.then(() => {
      clearInterval(timer);
      if (ready()) resolve();
      else reject(new Error(`the run exited before ${what}${output ? `:\n${output()}` : ''}`));
    });
  });
}

const lastStep = (log: string) => Math.max(0, ...records(log).filter((r) => r.type === 'step').map((r) => r.iteration as number));

function modelWeights(file: string): Map<string, torch.Tensor> {
  return extractStateDict(loadPth(file), file);
}

function assertSameWeights(a: string, b: string): void {
  const x = modelWeights(a);
  const y = modelWeights(b);
  assert.deepEqual([...x.keys()], [...y.keys()]);
  for (const [k, t] of x) {
    assert.equal(torch.tidy(() => t.to('float64').sub(y.get(k)!.to('float64')).abs().max().item()), 0, `${k} differs`);
  }
}

/** Random bytes from a fixed seed (xorshift32). */
function noise(n: number, seed: number): Buffer {
  const b = Buffer.alloc(n);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    b[i] = x & 255;
  }
  return b;
}

/** CIFAR-100 binary files (coarse label, fine label, 3x32x32 bytes per record) with random images. */
function writeCifar100(dir: string, images: number, testImages = 0): string {
  fs.mkdirSync(dir, { recursive: true });
  const rec = 2 + 3 * 32 * 32;
  for (const [file, n, seed] of [['train.bin', images, 7], ['test.bin', testImages, 8]] as const) {
    if (!n) continue;
    const buf = noise(n * rec, seed);
    for (let i = 0; i < n; i++) {
      buf[i * rec] = i % 20;
      buf[i * rec + 1] = i % 100;
    }
    fs.writeFileSync(path.join(dir, file), buf);
  }
  return `cifar100:${dir}`;
}

/** An image folder (two classes of random 16x16 PNGs, decoded by sharp): the loader path without shared storage. */
async function writeFolder(dir: string, images: number): Promise<string> {
  const require = createRequire(import.meta.url);
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  const sharp = require('sharp') as any;
  for (let i = 0; i < images; i++) {
    const cls = path.join(dir, i % 2 ? 'b' : 'a');
    fs.mkdirSync(cls, { recursive: true });
    await sharp(noise(16 * 16 * 3, i + 1), { raw: { width: 16, height: 16, channels: 3 } }).png().toFile(path.join(cls, `${i}.png`));
  }
  return `folder:${dir}`;
}

const CASES: { what: string; signal: 'SIGINT' | 'SIGTERM'; code: number; data: (d: string) => Promise<string>; budget?: string[] }[] = [
  { what: 'Fashion-MNIST (IDX)', signal: 'SIGINT', code: 130, data: async () => `fashion-mnist:${FMNIST}` },
  { what: 'Fashion-MNIST (IDX)', signal: 'SIGTERM', code: 143, data: async () => `fashion-mnist:${FMNIST}` },
  { what: 'CIFAR-100 files', signal: 'SIGTERM', code: 143, data: async (d) => writeCifar100(`${d}/c100`, 4000) },
  { what: 'an image folder', signal: 'SIGINT', code: 130, data: (d) => writeFolder(`${d}/images`, 200), budget: ['--image-size', '16', '--batch-size', '4', '--epochs', '3'] },
];

for (const { what, signal, code, data, budget } of CASES) {
  test(`${signal} on ${what} (worker-thread loader, default threads): checkpoint, interrupt record, exit ${code}; --resume equals an uninterrupted run`, async () => {
    const d = tmp();
    const args = trainArgs(await data(d), budget);
    const run = start([...args, '--out', `${d}/cut`]);
    await waitFor(() => lastStep(`${d}/cut/log.jsonl`) >= 3, run.exit, 'its third step', run.output);
    run.child.kill(signal);
    const { code: status } = await run.exit;
    assert.equal(status, code, run.output());
    assert.match(run.output(), new RegExp(`interrupted \\(${signal}\\)`));
    const log = records(`${d}/cut/log.jsonl`);
    const stop = log.find((r) => r.type === 'interrupt');
    assert.ok(stop, 'an interrupt record');
    assert.equal(stop.signal, signal);
    const k = stop.iteration as number;
    const total = (log.find((r) => r.type === 'start')!.config as { epochs: number }).epochs * Math.max(...log.filter((r) => r.type === 'step').map((r) => (r.batch as number) + 1));
    assert.ok(k >= 3 && !fs.existsSync(`${d}/cut/final.pth`), `stopped at step ${k} (of at least ${total})`);
    assert.equal(stop.nextBatch, k);
    const saved = loadPth(`${d}/cut/latest.pth`) as Map<unknown, unknown>;
    assert.equal(saved.get('next_batch'), k);
    assert.ok(!fs.readdirSync(`${d}/cut`).some((f) => f.includes('.tmp-')), 'no temporary file left behind');

    // Continue a few steps past the interruption; an uninterrupted run stops at the same step.
    const end = String(k + 3);
    const resumed = cli([...args, '--out', `${d}/cut`, '--resume', '--max-steps', end]);
    assert.equal(resumed.status, 0, resumed.stderr);
    const full = cli([...args, '--out', `${d}/full`, '--max-steps', end]);
    assert.equal(full.status, 0, full.stderr);
    assert.equal(records(`${d}/cut/log.jsonl`).filter((r) => r.type === 'resume').length, 1);
    assert.equal((loadPth(`${d}/cut/latest.pth`) as Map<unknown, unknown>).get('iteration'), k + 3);
    assertSameWeights(`${d}/cut/latest.pth`, `${d}/full/latest.pth`);
  });
}

test('a signal during the end-of-epoch evaluation stops it; --resume evaluates that epoch again and ends as an uninterrupted run', async () => {
  const d = tmp();
  // Two steps of training, then an evaluation of 2560 test images (model and EMA).
  const args = trainArgs(writeCifar100(`${d}/c100`, 64, 2560), ['--epochs', '1', '--batch-size', '32']).filter((a) => a !== '--no-eval');
  const run = start([...args, '--out', `${d}/cut`]);
  await waitFor(() => lastStep(`${d}/cut/log.jsonl`) >= 2, run.exit, 'the end of the first epoch', run.output);
  run.child.kill('SIGINT');
  const { code } = await run.exit;
  assert.equal(code, 130, run.output());
  const log = records(`${d}/cut/log.jsonl`);
  assert.ok(!log.some((r) => r.type === 'epoch'), 'the epoch was not recorded as evaluated');
  const stop = log.find((r) => r.type === 'interrupt')!;
  assert.deepEqual([stop.during, stop.signal, stop.epoch, stop.nextBatch, stop.iteration], ['evaluation', 'SIGINT', 0, 2, 2]);
  const resumed = cli([...args, '--out', `${d}/cut`, '--resume']);
  assert.equal(resumed.status, 0, resumed.stderr);
  const epochs = records(`${d}/cut/log.jsonl`).filter((r) => r.type === 'epoch');
  assert.deepEqual(epochs.map((r) => r.epoch), [1]);
  assert.ok(epochs.every((r) => typeof r.valTop1 === 'number' && typeof r.emaTop1 === 'number'));
  const full = cli([...args, '--out', `${d}/full`]);
  assert.equal(full.status, 0, full.stderr);
  assertSameWeights(`${d}/cut/final.pth`, `${d}/full/final.pth`);
  assert.deepEqual(records(`${d}/cut/log.jsonl`).filter((r) => r.type === 'epoch').map((r) => r.valTop1), records(`${d}/full/log.jsonl`).filter((r) => r.type === 'epoch').map((r) => r.valTop1));
});

test('SIGKILL mid-epoch: --resume continues from the last periodic checkpoint (--save-every) with identical weights', async () => {
  const d = tmp();
  const every = 4;
  const run = start([...RUN, '--out', `${d}/cut`, '--save-every', String(every)]);
  // Kill after the second periodic checkpoint and a step beyond it, so some work is really lost.
  await waitFor(() => records(`${d}/cut/log.jsonl`).filter((r) => r.type === 'checkpoint').length >= 2 && lastStep(`${d}/cut/log.jsonl`) > 2 * every, run.exit, 'two checkpoints');
  run.child.kill('SIGKILL');
  const { signal } = await run.exit;
  assert.equal(signal, 'SIGKILL');
  const killedAt = lastStep(`${d}/cut/log.jsonl`);
  const checkpoints = records(`${d}/cut/log.jsonl`).filter((r) => r.type === 'checkpoint');
  assert.deepEqual(checkpoints.slice(0, 2).map((r) => r.iteration), [every, 2 * every]);
  assert.ok(checkpoints.every((r) => (r.iteration as number) % every === 0 && r.epoch === 0 && r.nextBatch === r.iteration));
  assert.ok(!records(`${d}/cut/log.jsonl`).some((r) => r.type === 'interrupt'));

  const end = killedAt + 2;
  const resumed = cli([...RUN, '--out', `${d}/cut`, '--resume', '--max-steps', String(end)]);
  assert.equal(resumed.status, 0, resumed.stderr);
  const resume = records(`${d}/cut/log.jsonl`).find((r) => r.type === 'resume')!;
  // latest.pth is the newest checkpoint (written before its log record, so it may be one past the last record).
  assert.ok((resume.iteration as number) % every === 0 && (resume.iteration as number) >= (checkpoints.at(-1)!.iteration as number), JSON.stringify(resume));
  assert.ok((resume.iteration as number) <= killedAt);
  // The uninterrupted run also checkpoints by time (every step here): saving never changes the result.
  const full = cli([...RUN, '--out', `${d}/full`, '--max-steps', String(end), '--save-every-min', '0.00001']);
  assert.equal(full.status, 0, full.stderr);
  assert.ok(records(`${d}/full/log.jsonl`).some((r) => r.type === 'checkpoint'));
  assertSameWeights(`${d}/cut/latest.pth`, `${d}/full/latest.pth`);
});

test('`repopt demo` passes SIGTERM to its running stage, which saves; the demo exits 143', async () => {
  const d = tmp();
  const run = start(['demo', '--data', `fashion-mnist:${FMNIST}`, '--out', `${d}/demo`, '--batch-size', '32']);
  const log = `${d}/demo/search/log.jsonl`;
  await waitFor(() => records(log).some((r) => r.type === 'start'), run.exit, 'the search started');
  run.child.kill('SIGTERM');
  const { code } = await run.exit;
  assert.equal(code, 143, run.output());
  assert.match(run.output(), /search interrupted by SIGTERM/);
  const stop = records(log).find((r) => r.type === 'interrupt');
  assert.ok(stop && stop.signal === 'SIGTERM', JSON.stringify(records(log).at(-1)));
  assert.equal((loadPth(`${d}/demo/search/latest.pth`) as Map<unknown, unknown>).get('next_batch'), stop.nextBatch);
  assert.ok(!fs.existsSync(`${d}/demo/repopt`), 'the next stage did not start');
});

test('a second signal quits at once with its own exit code (the first only requests a stop)', async () => {
  // A loop that turns the event loop but never looks at the request: only the second signal can end it.
  const lib = path.join(REPO_ROOT, 'dist/src/train/interrupt.js');
  const code = `const { catchStopSignals, turnEventLoop } = await import(${JSON.stringify(lib)});
    catchStopSignals(); console.log('ready');
    for (;;) { const t = Date.now(); while (Date.now() - t < 5); await turnEventLoop(); }`;
  const child = spawn(process.execPath, ['--input-type=module', '-e', code]);
  let out = '';
  child.stdout.on('data', (b: Buffer) => (out += b.toString()));
  child.stderr.on('data', (b: Buffer) => (out += b.toString()));
  const exit = new Promise<number | null>((resolve) => child.on('exit', (c) => resolve(c)));
  await waitFor(() => out.includes('ready'), exit, 'ready');
  child.kill('SIGTERM');
  await waitFor(() => out.includes('SIGTERM: stopping'), exit, 'the first signal was seen');
  child.kill('SIGINT');
  assert.equal(await exit, 130, out);
  assert.match(out, /SIGINT again: quitting now/);
});

test('`repopt quantize --qat-epochs` stops QAT at the next step on SIGINT and exits 130', async () => {
  const d = tmp();
  const trained = cli([...RUN, '--out', `${d}/run`, '--max-steps', '2']);
  assert.equal(trained.status, 0, trained.stderr);
  const run = start(['quantize', '--checkpoint', `${d}/run/latest.pth`, '--data', `fashion-mnist:${FMNIST}`, '--calib-images', '64', '--test-images', '256',
    '--onnx-images', '0', '--observers', 'minmax', '--qat-epochs', '1']);
  await waitFor(() => run.output().includes('qat: 1 epoch(s) of 235 steps'), run.exit, 'QAT started');
  run.child.kill('SIGINT');
  const { code } = await run.exit;
  assert.equal(code, 130, run.output());
  assert.match(run.output(), /QAT interrupted by SIGINT after \d+ step\(s\)/);
});

test('`repopt quant-demo` stops its training stage on SIGTERM with a checkpoint and exits 143', async () => {
  const d = tmp();
  const run = start(['quant-demo', '--data', `fashion-mnist:${FMNIST}`, '--out', `${d}/qd`, '--batch-size', '32']);
  const log = `${d}/qd/search/log.jsonl`;
  await waitFor(() => records(log).some((r) => r.type === 'start'), run.exit, 'the search started');
  run.child.kill('SIGTERM');
  const { code } = await run.exit;
  assert.equal(code, 143, run.output());
  assert.match(run.output(), /search interrupted by SIGTERM: its checkpoint is saved/);
  const stop = records(log).find((r) => r.type === 'interrupt');
  assert.ok(stop && stop.signal === 'SIGTERM');
  assert.equal((loadPth(`${d}/qd/search/latest.pth`) as Map<unknown, unknown>).get('next_batch'), stop.nextBatch);
});
