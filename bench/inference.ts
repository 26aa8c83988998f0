/**
 * Inference speed, the paper's other claim (issue 13): the deployed plain network against the
 * un-fused multi-branch model (RepVGG mode, BN in eval) and against the exported ONNX in ONNX
 * Runtime (onnxruntime-web, the project's dependency: WebAssembly, 1 thread), FP32 and INT8.
 *
 *   node dist/bench/inference.js [--models bench,demo] [--threads 1] [--reps 9] [--json]
 *
 * Models: the bench model (blocks 1,2,4,1, widths 0.75,0.75,0.75,2.5, 3x64x64, 100 classes) and the
 * demo's (blocks 2,2,2,1, widths 0.25 x4, strides 1,1,2,2,2, 1x28x28, 10 classes), random weights
 * (speed does not depend on values; BN running statistics are randomised so the fusion is not
 * trivial). INT8: the deployed network quantized by src/deploy (per-channel int8 weights, uint8
 * activations from min-max calibration on one random batch), exported as QDQ ONNX, which ONNX
 * Runtime fuses into its int8 kernels; on libtorch our INT8 network is fake-quantized (float
 * arithmetic simulating int8, for accuracy studies), shown for completeness, not a speed path.
 * Latency = the median over reps (the variants interleaved rep by rep) of one forward at batch 1 and at batch 64,
 * timed with the process's CPU time at 1 thread (the machine is shared: CPU time does not count
 * the time others take the core away; ONNX Runtime's WebAssembly runs on this thread too), wall
 * time otherwise. img/s = batch / latency. Outputs are checked against the deployed FP32 network.
 */
import os from 'node:os';
import * as torch from '../src/torch/index.js';
import { type Tensor } from '../src/torch/index.js';
import { RepOptVGG, type RepOptVGGConfig } from '../src/models/repoptvgg.js';
import { deployVGG, calibrate, quantizeModel, exportOnnx, OnnxRunner, type DeployVGG } from '../src/deploy/index.js';

export interface InferModel { label: string; cfg: RepOptVGGConfig; strides: number[]; inChannels: number; classes: number; size: number }
export const MODELS: Record<string, InferModel> = {
  bench: { label: 'bench model (1,2,4,1; 0.75,0.75,0.75,2.5; 3x64x64)', cfg: { numBlocks: [1, 2, 4, 1], widthMultiplier: [0.75, 0.75, 0.75, 2.5] }, strides: [2, 2, 2, 2, 2], inChannels: 3, classes: 100, size: 64 },
  demo: { label: "demo's model (2,2,2,1; 0.25 x4; 1x28x28)", cfg: { numBlocks: [2, 2, 2, 1], widthMultiplier: [0.25, 0.25, 0.25, 0.25] }, strides: [1, 1, 2, 2, 2], inChannels: 1, classes: 10, size: 28 },
};

export function now(): number {
  if (torch.getNumThreads() !== 1) return performance.now();
  const c = process.cpuUsage();
  return (c.user + c.system) / 1e3;
}

export const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};

function maxAbsDiff(a: Tensor, b: Tensor): number {
  return torch.tidy(() => a.sub(b).abs().max().item());
}

export interface InferRow { model: string; variant: string; batch: number; latencyMs: number; imgPerSec: number; maxAbsDiff: number }

/** A benchmark model, multi-branch (eval) and its deploy form: random weights, randomised BN statistics (so fusion folds real numbers), seed 0. */
export function benchModels(name: string): { multi: RepOptVGG; deployed: DeployVGG } {
  const m = MODELS[name];
  torch.manualSeed(0);
  const multi = new RepOptVGG({ ...m.cfg, mode: 'repvgg', numClasses: m.classes, inChannels: m.inChannels, strides: m.strides });
  torch.noGrad(() => {
    for (const [k, t] of multi.namedBuffers()) {
      if (k.endsWith('running_mean')) torch.tidy(() => void t.copy_(torch.randn(t.shape).mul(0.1)));
      if (k.endsWith('running_var')) torch.tidy(() => void t.copy_(torch.rand(t.shape).add(0.5)));
    }
  });
  multi.eval();
  return { multi, deployed: deployVGG(multi) };
}

export async function benchInference(name: string, reps: number): Promise<InferRow[]> {
  const m = MODELS[name];
  const { multi, deployed } = benchModels(name);
  const calib = torch.keep(torch.randn([64, m.inChannels, m.size, m.size]));
  const q = quantizeModel(deployed, calibrate(deployed, [calib]), 'minmax');
  const ortFp32 = await OnnxRunner.create(exportOnnx(deployed));
  const ortInt8 = await OnnxRunner.create(exportOnnx(q));
  const rows: InferRow[] = [];
  try {
    for (const batch of [1, 64]) {
      const x = torch.keep(torch.randn([batch, m.inChannels, m.size, m.size]));
      const ref = torch.keep(torch.noGrad(() => deployed.forward(x)));
      const variants: [string, () => Tensor | Promise<Tensor>][] = [
        ['deployed plain (libtorch, FP32)', () => torch.noGrad(() => deployed.forward(x))],
        ['multi-branch repvgg, un-fused (libtorch, FP32)', () => torch.noGrad(() => multi.forward(x))],
        ['ONNX Runtime web (wasm), FP32', () => ortFp32.run(x)],
        ['ONNX Runtime web (wasm), INT8 QDQ', () => ortInt8.run(x)],
        ['fake-quant INT8 (libtorch, simulated)', () => torch.noGrad(() => q.forward(x))],
      ];
      // warm every variant (ONNX Runtime's WebAssembly is compiled and tiered up by V8 in background
      // threads, whose CPU time would count against whatever runs next), then interleave the variants
      // rep by rep so that anything else the machine does is spread over all of them
      const once = async (fn: () => Tensor | Promise<Tensor>) => (await fn()).dispose();
      for (let i = 0; i < 3; i++) for (const [, fn] of variants) await once(fn);
      await new Promise((r) => setTimeout(r, 2000));
      const times = variants.map(() => [] as number[]);
      const r = batch === 1 ? reps * 3 : reps;
      for (let i = 0; i < r; i++) {
        for (const [k, [, fn]] of variants.entries()) {
          const t0 = now();
          await once(fn);
          times[k].push(now() - t0);
        }
      }
      for (const [k, [variant, fn]] of variants.entries()) {
        const ms = median(times[k]);
        const y = await fn();
        const diff = maxAbsDiff(y, ref);
        y.dispose();
        rows.push({ model: name, variant, batch, latencyMs: ms, imgPerSec: (batch * 1000) / ms, maxAbsDiff: diff });
      }
      x.dispose();
      ref.dispose();
    }
  } finally {
    await ortFp32.release();
    await ortInt8.release();
    calib.dispose();
    q.dispose();
    deployed.dispose();
    multi.dispose();
  }
  return rows;
}

const isMain = process.argv[1]?.endsWith('inference.js');
if (isMain) {
  const args = process.argv.slice(2);
  const opt = (k: string, d: string) => {
    const i = args.indexOf(`--${k}`);
    return i < 0 ? d : args[i + 1];
  };
  torch.setNumThreads(Number(opt('threads', '1')));
  const reps = Number(opt('reps', '9'));
  const all: InferRow[] = [];
  for (const name of opt('models', 'bench,demo').split(',')) {
    if (!MODELS[name]) throw new Error(`unknown model '${name}' (${Object.keys(MODELS).join(', ')})`);
    all.push(...(await benchInference(name, reps)));
  }
  if (args.includes('--json')) console.log(JSON.stringify({ threads: torch.getNumThreads(), loadavg: os.loadavg(), rows: all }));
  else {
    console.log(`${torch.getNumThreads()} libtorch thread(s), ONNX Runtime wasm 1 thread; loadavg ${os.loadavg().map((x) => x.toFixed(2)).join(' ')}`);
    console.log('| model | variant | batch | latency ms | img/s | max abs diff vs deployed FP32 |');
    console.log('|---|---|---:|---:|---:|---:|');
    for (const r of all) {
      console.log(`| ${MODELS[r.model].label} | ${r.variant} | ${r.batch} | ${r.latencyMs.toFixed(r.latencyMs < 10 ? 3 : 1)} | ${r.imgPerSec.toFixed(0)} | ${r.maxAbsDiff.toExponential(1)} |`);
    }
  }
}
