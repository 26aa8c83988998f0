/**
 * The evaluation loop users write, written exactly so, must not exhaust the machine (issue 23):
 *
 *   const out: Tensor[] = [];
 *   for await (const { x } of testLoader.epoch(0)) out.push(torch.keep(torch.noGrad(() => model.forward(x))));
 *
 * over the real Fashion-MNIST test set (10,000 images, batch 500) with a user's own four-layer
 * network of Conv2d / BatchNorm2d / F.relu, no dispose() anywhere. Before the fix RSS grew by about
 * one forward pass's activations per batch (17.5 GB over the test set): the tensors dropped in
 * forward() were released by finalizers that Node ran only on a turn of the event loop, which a
 * `for await` over ready batches never gives. Now the loader turns the loop per batch and tensor
 * finalizers run inside V8's collection (which native bytes, reported to V8, trigger).
 *
 * The bound: one forward pass of this network at batch 500 allocates A of activations
 * (431 MiB, below). A loop that keeps only its outputs (10,000 x 10 floats) needs one batch of activations at
 * a time; V8 collects after some tens of MiB of external growth, so the peak above the RSS before
 * the loop may reach a few A but must not grow with the number of batches (20 here): it is
 * asserted under 3 A = 1.26 GiB (20 A = 8.4 GiB without the fix). Each case runs in a child process
 * whose RSS the parent watches and kills at 4 GiB, so a regression fails fast and harms nothing.
 */
import { spawn } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { test } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { REPO_ROOT } from './helpers/paths.js';

const ROOT = JSON.stringify(path.join(REPO_ROOT, 'dist/src/index.js'));
const FASHION = '/usr/share/datasets/fashion-mnist';
const MiB = 2 ** 20;

// One forward at batch 500, 28x28: conv, BN, ReLU outputs of 32 channels at 28x28 (two layers),
// then 64 channels at 14x14 (two layers), 4 bytes a float.
const BATCH = 500;
const ACTIVATIONS = BATCH * 4 * (2 * 3 * 32 * 28 * 28 + 2 * 3 * 64 * 14 * 14);
const BOUND = 3 * ACTIVATIONS;
const KILL_AT = 4 * 1024 * MiB;

const NET = `
import { torch, F, Module, Conv2d, BatchNorm2d, Linear, openDataset, DataLoader, defaultTransforms } from ${ROOT};
import { readFileSync } from 'node:fs';
// A user's network: four conv / BN / ReLU layers and its own forward, nothing disposed.
class MyNet extends Module {
  c1 = this.registerModule('c1', new Conv2d(1, 32, 3, { padding: 1 }));
  b1 = this.registerModule('b1', new BatchNorm2d(32));
  c2 = this.registerModule('c2', new Conv2d(32, 32, 3, { padding: 1 }));
  b2 = this.registerModule('b2', new BatchNorm2d(32));
  c3 = this.registerModule('c3', new Conv2d(32, 64, 3, { padding: 1, stride: 2 }));
  b3 = this.registerModule('b3', new BatchNorm2d(64));
  c4 = this.registerModule('c4', new Conv2d(64, 64, 3, { padding: 1 }));
  b4 = this.registerModule('b4', new BatchNorm2d(64));
  fc = this.registerModule('fc', new Linear(64, 10));
  forward(x) {
    let y = F.relu(this.b1.forward(this.c1.forward(x)));
    y = F.relu(this.b2.forward(this.c2.forward(y)));
    y = F.relu(this.b3.forward(this.c3.forward(y)));
    y = F.relu(this.b4.forward(this.c4.forward(y)));
    return this.fc.forward(F.adaptiveAvgPool2d(y, 1).flatten(1));
  }
}
const model = new MyNet();
model.eval();
const testSet = openDataset('fashion-mnist', 'test');
const kb = (key) => Number(new RegExp(key + ':\\\\s+(\\\\d+)').exec(readFileSync('/proc/self/status', 'utf8'))[1]) * 1024;
const report = (out, rss0) => {
  const sum = out.reduce((s, t) => s + t.shape[0], 0);
  console.log(JSON.stringify({ rss0, peak: kb('VmHWM'), outputs: out.length, rows: sum, finite: out.every((t) => Number.isFinite(t.sum().item())) }));
};
`;

const CASES: Record<string, string> = {
  // the loop, verbatim, with the loader's defaults (one worker thread)
  'for await, loader defaults': `${NET}
const testLoader = new DataLoader(testSet, { batchSize: ${BATCH}, shuffle: false, transforms: defaultTransforms(testSet, 'test') });
const rss0 = kb('VmRSS');
const out = [];
for await (const { x } of testLoader.epoch(0)) out.push(torch.keep(torch.noGrad(() => model.forward(x))));
report(out, rss0);
await testLoader.close();
`,
  // the same with batches built on the main thread (workers: 0)
  'for await, workers 0': `${NET}
const testLoader = new DataLoader(testSet, { batchSize: ${BATCH}, shuffle: false, workers: 0, transforms: defaultTransforms(testSet, 'test') });
const rss0 = kb('VmRSS');
const out = [];
for await (const { x } of testLoader.epoch(0)) out.push(torch.keep(torch.noGrad(() => model.forward(x))));
report(out, rss0);
`,
  // a synchronous loop, no await at all: the event loop never turns, collection alone must free
  'synchronous, no await': `${NET}
const px = testSet.storage.pixels;
const rss0 = kb('VmRSS');
const out = [];
for (let b = 0; b < 10000 / ${BATCH}; b++) {
  const n = ${BATCH} * 784;
  const x = torch.fromTypedArray(Float32Array.from(px.subarray(b * n, (b + 1) * n), (v) => (v / 255 - 0.286) / 0.353), [${BATCH}, 1, 28, 28], 'float32');
  out.push(torch.keep(torch.noGrad(() => model.forward(x))));
}
report(out, rss0);
`,
};

interface Outcome {
  rss0: number;
  peak: number;
  outputs: number;
  rows: number;
  finite: boolean;
}

/** Runs a module script in a child, killing it when its RSS passes KILL_AT; its last output line, parsed. */
function runWatched(script: string): Promise<{ out: Outcome | null; killedAt: number; stderr: string; code: number | null }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, ['--input-type=module', '-e', script], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    let killedAt = 0;
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    const watch = setInterval(() => {
      try {
        const rss = Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${child.pid}/status`, 'utf8'))?.[1] ?? 0) * 1024;
        if (rss > KILL_AT) {
          killedAt = rss;
          child.kill('SIGKILL');
        }
      } catch {
        // exited
      }
    }, 50);
    child.on('close', (code) => {
      clearInterval(watch);
      const last = stdout.trim().split('\n').pop();
      resolve({ out: code === 0 && last ? (JSON.parse(last) as Outcome) : null, killedAt, stderr, code });
    });
  });
}

for (const [name, script] of Object.entries(CASES)) {
  test(`evaluation loop over the Fashion-MNIST test set, ${name}: peak RSS stays within 3 forward passes of activations`, async (t) => {
    if (!existsSync(path.join(FASHION, 't10k-images-idx3-ubyte.gz')) && !existsSync(path.join(FASHION, 't10k-images-idx3-ubyte'))) {
      t.skip('dataset-fashion-mnist is not installed');
      return;
    }
    const r = await runWatched(script);
    assert.equal(r.killedAt, 0, `RSS passed ${(r.killedAt / MiB).toFixed(0)} MiB: the loop keeps its garbage`);
    assert.ok(r.out, `child exited ${r.code}: ${r.stderr}`);
    const { rss0, peak, outputs, rows, finite } = r.out;
    assert.equal(outputs, 20);
    assert.equal(rows, 10000);
    assert.ok(finite);
    const growth = peak - rss0;
    t.diagnostic(`RSS before the loop ${(rss0 / MiB).toFixed(0)} MiB, peak ${(peak / MiB).toFixed(0)} MiB: +${(growth / MiB).toFixed(0)} MiB; one forward's activations ${(ACTIVATIONS / MiB).toFixed(0)} MiB`);
    assert.ok(growth < BOUND, `peak RSS ${(growth / MiB).toFixed(0)} MiB above the start, bound ${(BOUND / MiB).toFixed(0)} MiB`);
  });
}

test('loader workers start under the parent\'s Node flags, per-process V8 flags included (--expose-gc, --max-old-space-size)', async (t) => {
  if (!existsSync(path.join(FASHION, 't10k-images-idx3-ubyte.gz')) && !existsSync(path.join(FASHION, 't10k-images-idx3-ubyte'))) {
    t.skip('dataset-fashion-mnist is not installed');
    return;
  }
  const script = `
import { torch, openDataset, DataLoader, defaultTransforms } from ${ROOT};
const ds = openDataset('fashion-mnist', 'test');
const loader = new DataLoader(ds, { batchSize: 100, shuffle: false, workers: 2, transforms: defaultTransforms(ds, 'test') });
let n = 0;
for await (const { x } of loader.epoch(0)) { n += x.shape[0]; if (n >= 1000) break; }
await loader.close();
console.log(typeof gc, n);
`;
  const r = await new Promise<{ code: number | null; out: string; err: string }>((resolve) => {
    const c = spawn(process.execPath, ['--expose-gc', '--max-old-space-size=3000', '--input-type=module', '-e', script]);
    let out = '';
    let err = '';
    c.stdout.on('data', (d) => (out += d));
    c.stderr.on('data', (d) => (err += d));
    c.on('close', (code) => resolve({ code, out, err }));
  });
  assert.equal(r.code, 0, r.err);
  assert.equal(r.out.trim(), 'function 1000');
});
