/**
 * `repopt export --web DIR`: the page runs in Debian's Chromium, served from DIR over a local HTTP
 * server, with no console errors and no requests beyond DIR's files; its FP32 predictions on the
 * embedded Fashion-MNIST test images equal our library's (libtorch, images through the data loader),
 * its INT8 top-1 agrees with our simulation as the export check demands (>= 90%); drawing on the
 * canvas classifies the drawing.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import type { AddressInfo } from 'node:net';
import * as torch from '../src/torch/index.js';
import { openDataset } from '../src/data/dataset.js';
import { collectBatches, disposeBatches } from '../src/data/batches.js';
import { loadForDeploy } from '../src/deploy/study.js';
import { runExport } from '../src/cli/deploy.js';
import { REPO_ROOT } from './helpers/paths.js';
import { CHROMIUM, openWatchedPage } from './helpers/browser.js';

torch.setNumThreads(1);
const CLI = path.join(REPO_ROOT, 'dist/src/cli/main.js');
const FMNIST = '/usr/share/datasets/fashion-mnist';
const IMAGES = 12;

interface PagePrediction { top5: [number, number][]; ms: number }
interface PageState { ready: boolean; error: string | null; samples: { fp32: PagePrediction; int8: PagePrediction }[]; last: { fp32: PagePrediction; int8: PagePrediction } | null }

/** A static file server for one folder (what the user runs, e.g. python3 -m http.server). */
async function serve(dir: string): Promise<{ origin: string; close: () => Promise<void> }> {
  const types: Record<string, string> = { '.html': 'text/html', '.js': 'text/javascript', '.mjs': 'text/javascript', '.wasm': 'application/wasm', '.onnx': 'application/octet-stream' };
  const server = http.createServer((req, res) => {
    const name = decodeURIComponent(new URL(req.url ?? '/', 'http://x').pathname).replace(/^\/+/, '') || 'index.html';
    const file = path.join(dir, path.basename(name));
    if (!fs.existsSync(file)) {
      res.writeHead(404).end();
      return;
    }
    res.writeHead(200, { 'content-type': types[path.extname(file)] ?? 'application/octet-stream' });
    fs.createReadStream(file).pipe(res);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const { port } = server.address() as AddressInfo;
  return { origin: `http://127.0.0.1:${port}`, close: () => new Promise<void>((r) => server.close(() => r())) };
}

test('export --web: the page classifies in Chromium like our library, offline, FP32 and INT8 side by side', { skip: !fs.existsSync(FMNIST) && `no Fashion-MNIST at ${FMNIST}` }, async () => {
  assert.ok(fs.existsSync(CHROMIUM), `no browser at ${CHROMIUM}: run scripts/setup.sh --test (installs Debian's chromium) or set CHROMIUM`);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'repopt-web-'));
  // A few steps of training, so the logits have margins (random weights make near-ties INT8 flips).
  const train = spawnSync(process.execPath, [CLI, 'train', '--data', 'fashion-mnist', '--mode', 'repvgg', '--blocks', '1,1,1,1', '--widths', '0.25,0.25,0.25,0.25',
    '--strides', '1,2,2,2,2', '--epochs', '1', '--max-steps', '120', '--batch-size', '64', '--no-eval', '--threads', '1', '--out', path.join(dir, 'run')], { encoding: 'utf8', env: { ...process.env, CI: 'true' } });
  assert.equal(train.status, 0, train.stderr);
  const ckpt = path.join(dir, 'run', 'latest.pth');

  const web = path.join(dir, 'web');
  const lines: string[] = [];
  const status = await runExport(['--checkpoint', ckpt, '--web', web, '--calib', 'fashion-mnist', '--calib-images', '256', '--web-images', String(IMAGES), '--threads', '1'], (l) => lines.push(l));
  const out = lines.join('\n');
  assert.equal(status, 0, out);
  assert.match(out, new RegExp(`${IMAGES} test images, 1x28x28, a canvas to draw on`));
  const files = fs.readdirSync(web).sort();
  assert.deepEqual(files, ['app.js', 'index.html', 'model-fp32.onnx', 'model-int8.onnx', 'ort-wasm-simd-threaded.wasm', 'ort.wasm.bundle.min.mjs']);

  // Our predictions, independently of the page's inputs: the first images of the test split through the data loader.
  const m = loadForDeploy({ checkpoint: ckpt });
  const batches = await collectBatches(openDataset('fashion-mnist', 'test'), IMAGES, IMAGES, false, 0);
  const ours = torch.noGrad(() => torch.tidy(() => {
    const p = torch.F.softmax(m.deployed.forward(batches[0].x), 1);
    return { probs: p.toArray(), top1: p.argmax(1).toArray() };
  }));
  disposeBatches(batches);
  m.deployed.dispose();
  m.trained?.dispose();
  // The simulated INT8 top-1 the page embeds (computed by exportWeb from the same QuantizedNet it exported).
  const html = fs.readFileSync(path.join(web, 'index.html'), 'utf8');
  const embedded = JSON.parse(/<script type="application\/json" id="repopt-web">([\s\S]*?)<\/script>/.exec(html)![1].replace(/\\u003c/g, '<')) as { samples: { ours: { int8: [number, number][] } }[] };

  const server = await serve(web);
  const { browser, page, problems, requests } = await openWatchedPage();
  try {
    await page.goto(`${server.origin}/`, { waitUntil: 'load' });
    await page.waitForFunction('window.repoptWeb && (window.repoptWeb.ready || window.repoptWeb.error)', { timeout: 60_000 });
    const state = (await page.evaluate('window.repoptWeb')) as PageState;
    assert.equal(state.error, null);
    assert.equal(state.samples.length, IMAGES);
    const classes = 10;
    for (const [i, s] of state.samples.entries()) {
      assert.equal(s.fp32.top5.length, 5);
      assert.equal(s.fp32.top5[0][0], ours.top1[i], `image ${i}: FP32 top-1 in the page vs libtorch`);
      for (const [k, p] of s.fp32.top5) assert.ok(Math.abs(p - ours.probs[i * classes + k]) < 1e-4, `image ${i} class ${k}: page ${p} vs libtorch ${ours.probs[i * classes + k]}`);
      assert.ok(s.fp32.ms > 0 && s.int8.ms > 0);
    }
    const agree = state.samples.filter((s, i) => s.int8.top5[0][0] === embedded.samples[i].ours.int8[0][0]).length / IMAGES;
    assert.ok(agree >= 0.9, `INT8 top-1 agreement with the simulation ${agree}`);
    const statusText = await page.$eval('#status', (e) => e.textContent ?? '');
    assert.match(statusText, new RegExp(`FP32 ${IMAGES}/${IMAGES}`));

    // Draw a stroke: the drawing is classified by both models.
    const before = state.last;
    const box = (await (await page.$('#pad'))!.boundingBox())!;
    await page.mouse.move(box.x + 80, box.y + 60);
    await page.mouse.down();
    for (let k = 1; k <= 10; k++) await page.mouse.move(box.x + 80 + k * 12, box.y + 60 + k * 15);
    await page.mouse.up();
    await page.waitForFunction('document.getElementById("which").textContent === "(drawing)"', { timeout: 10_000 });
    const last = (await page.evaluate('window.repoptWeb.last')) as PageState['last'];
    assert.notDeepEqual(last, before);
    assert.equal(last!.fp32.top5.length, 5);
    assert.equal(last!.int8.top5.length, 5);
    assert.ok(Math.abs(last!.fp32.top5.reduce((a, [, p]) => a + p, 0) - 1) < 0.5);

    assert.deepEqual(problems, []);
    // Everything the page loads is one of DIR's files (a data: URL is no request on the network).
    const fetched = requests.filter((u) => !u.startsWith('data:'));
    assert.ok(fetched.every((u) => u.startsWith(`${server.origin}/`)), fetched.join('\n'));
    const names = [...new Set(fetched.map((u) => new URL(u).pathname.slice(1) || 'index.html'))].sort();
    assert.deepEqual(names, files.filter((f) => names.includes(f)));
    for (const f of ['index.html', 'app.js', 'ort.wasm.bundle.min.mjs', 'ort-wasm-simd-threaded.wasm', 'model-fp32.onnx', 'model-int8.onnx']) assert.ok(names.includes(f), `${f} not loaded: ${names.join(', ')}`);
  } finally {
    await browser.close();
    await server.close();
  }
});
