/**
 * The deployed model in three runtimes, side by side in one run (issue 27): ours (libtorch), ONNX
 * Runtime native (onnxruntime-node, CPU execution provider) and ONNX Runtime WebAssembly
 * (onnxruntime-web in Node, the build the browser page runs), FP32 and INT8, batch 1 and 64.
 *
 *   node dist/bench/ort.js [--models demo,bench] [--threads 1] [--reps 5] [--json]
 *
 * Models, weights and INT8 as in bench/inference.ts (random weights, randomised BN statistics; INT8:
 * per-channel int8 weights, uint8 activations from min-max calibration on one random batch, the same
 * QDQ file for both ONNX Runtimes). Our INT8 is the fake-quant simulation (float arithmetic, for
 * accuracy studies), not an int8 speed path. Every runtime on one thread (libtorch threads 1, ONNX
 * Runtime intra-op 1, wasm 1). Latency = the median over reps (the variants interleaved rep by rep) of
 * one forward, timed in the process's CPU time (onnxruntime-node runs on a worker thread of the same
 * process, which this counts; on a shared machine CPU time does not count the time others hold the core).
 * img/s = batch / latency. Ratios are against ours FP32 at the same batch.
 */
import os from 'node:os';
import fs from 'node:fs';
import * as torch from '../src/torch/index.js';
import { type Tensor } from '../src/torch/index.js';
import { calibrate, quantizeModel, exportOnnx, OnnxRunner, hasOrtNode } from '../src/deploy/index.js';
import { MODELS, benchModels, median, now } from './inference.js';

export interface OrtRow { model: string; runtime: string; precision: 'FP32' | 'INT8'; batch: number; latencyMs: number; imgPerSec: number; vsOurs: number; maxAbsDiff: number }

export async function benchOrt(name: string, reps: number): Promise<OrtRow[]> {
  const m = MODELS[name];
  const { multi, deployed } = benchModels(name);
  multi.dispose();
  const calib = torch.keep(torch.randn([64, m.inChannels, m.size, m.size]));
  const q = quantizeModel(deployed, calibrate(deployed, [calib]), 'minmax');
  const fp32 = exportOnnx(deployed);
  const int8 = exportOnnx(q);
  const runners = {
    nodeFp32: await OnnxRunner.create(fp32, { backend: 'node' }),
    nodeInt8: await OnnxRunner.create(int8, { backend: 'node' }),
    webFp32: await OnnxRunner.create(fp32, { backend: 'web' }),
    webInt8: await OnnxRunner.create(int8, { backend: 'web' }),
  };
  const rows: OrtRow[] = [];
  try {
    for (const batch of [1, 64]) {
      const x = torch.keep(torch.randn([batch, m.inChannels, m.size, m.size]));
      const ref = { FP32: torch.keep(torch.noGrad(() => deployed.forward(x))), INT8: torch.keep(torch.noGrad(() => q.forward(x))) };
      const variants: [string, 'FP32' | 'INT8', () => Tensor | Promise<Tensor>][] = [
        ['ours (libtorch)', 'FP32', () => torch.noGrad(() => deployed.forward(x))],
        ['onnxruntime-node (CPU EP)', 'FP32', () => runners.nodeFp32.run(x)],
        ['onnxruntime-web (wasm)', 'FP32', () => runners.webFp32.run(x)],
        ['ours (libtorch, fake-quant simulation)', 'INT8', () => torch.noGrad(() => q.forward(x))],
        ['onnxruntime-node (CPU EP)', 'INT8', () => runners.nodeInt8.run(x)],
        ['onnxruntime-web (wasm)', 'INT8', () => runners.webInt8.run(x)],
      ];
      // Warm every variant (V8 tiers the wasm up in background threads), then interleave them rep by rep.
      const once = async (fn: () => Tensor | Promise<Tensor>) => (await fn()).dispose();
      for (let i = 0; i < 3; i++) for (const [, , fn] of variants) await once(fn);
      await new Promise((r) => setTimeout(r, 1000));
      const times = variants.map(() => [] as number[]);
      const n = batch === 1 ? reps * 4 : reps;
      for (let i = 0; i < n; i++) {
        for (const [k, [, , fn]] of variants.entries()) {
          const t0 = now();
          await once(fn);
          times[k].push(now() - t0);
        }
      }
      const oursMs = median(times[0]);
      for (const [k, [runtime, precision, fn]] of variants.entries()) {
        const ms = median(times[k]);
        const y = await fn();
        const diff = torch.tidy(() => y.sub(ref[precision]).abs().max().item());
        y.dispose();
        rows.push({ model: name, runtime, precision, batch, latencyMs: ms, imgPerSec: (batch * 1000) / ms, vsOurs: oursMs / ms, maxAbsDiff: diff });
      }
      x.dispose();
      ref.FP32.dispose();
      ref.INT8.dispose();
    }
  } finally {
    for (const r of Object.values(runners)) await r.release();
    calib.dispose();
    deployed.dispose();
  }
  return rows;
}

const isMain = process.argv[1]?.endsWith('ort.js');
if (isMain) {
  const args = process.argv.slice(2);
  const opt = (k: string, d: string) => {
    const i = args.indexOf(`--${k}`);
    return i < 0 ? d : args[i + 1];
  };
  if (!(await hasOrtNode())) {
    console.error('bench/ort needs onnxruntime-node: npm install --no-save --ignore-scripts onnxruntime-node@~1.30.0 (see the README)');
    process.exit(2);
  }
  torch.setNumThreads(Number(opt('threads', '1')));
  const reps = Number(opt('reps', '5'));
  const t0 = performance.now();
  const all: OrtRow[] = [];
  for (const name of opt('models', 'demo,bench').split(',')) {
    if (!MODELS[name]) throw new Error(`unknown model '${name}' (${Object.keys(MODELS).join(', ')})`);
    all.push(...(await benchOrt(name, reps)));
  }
  const cpu = /model name\s*:\s*(.*)/.exec(fs.readFileSync('/proc/cpuinfo', 'utf8'))?.[1] ?? os.cpus()[0]?.model ?? '?';
  if (args.includes('--json')) console.log(JSON.stringify({ cpu, threads: torch.getNumThreads(), loadavg: os.loadavg(), seconds: (performance.now() - t0) / 1000, rows: all }));
  else {
    console.log(`${cpu}, ${os.cpus().length} vCPU; ${torch.getNumThreads()} libtorch thread(s), onnxruntime-node intra-op 1 thread, onnxruntime-web wasm 1 thread; CPU time; loadavg ${os.loadavg().map((x) => x.toFixed(2)).join(' ')}; ${((performance.now() - t0) / 1000).toFixed(0)} s`);
    console.log('| model | runtime | precision | batch | latency ms | img/s | vs ours FP32 | max abs diff vs ours (same precision) |');
    console.log('|---|---|---|---:|---:|---:|---:|---:|');
    for (const r of all) {
      console.log(`| ${MODELS[r.model].label} | ${r.runtime} | ${r.precision} | ${r.batch} | ${r.latencyMs.toFixed(r.latencyMs < 10 ? 3 : 1)} | ${r.imgPerSec.toFixed(0)} | ${r.vsOurs.toFixed(2)}x | ${r.maxAbsDiff.toExponential(1)} |`);
    }
  }
}
