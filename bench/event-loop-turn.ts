/**
 * The cost of letting the event loop turn once per training step (what makes
 * SIGINT/SIGTERM, timers and N-API finalizers work during training; see
 * src/train/interrupt.ts).
 *
 *   node dist/bench/event-loop-turn.js [--data fashion-mnist] [--batch 64] [--blocks 50] [--steps 20]
 *
 * 1. turnEventLoop() alone: microseconds per call on an idle loop.
 * 2. The demo's model (RepOpt-VGG blocks 2,2,2,1, widths 0.25, strides 1,1,2,2,2,
 *    target architecture, SGD with Nesterov momentum) trained on the demo's data
 *    through the default loader (one worker thread) and the default libtorch
 *    threads, the trainer's step (forward, label-smoothed cross entropy,
 *    backward, SGD step, zero grad). Blocks of `steps` steps alternate between
 *    "without" (the old loop: next batch straight away) and "with" (await
 *    turnEventLoop() after each step, as the trainer does now); the medians of
 *    the blocks' ms/step are reported, so drift on a shared machine hits both.
 */
import * as torch from '../src/torch/index.js';
import { F } from '../src/torch/index.js';
import { openDataset } from '../src/data/dataset.js';
import { DataLoader } from '../src/data/loader.js';
import { defaultTransforms } from '../src/data/transforms.js';
import { buildModel, buildOptimizer } from '../src/train/setup.js';
import { turnEventLoop } from '../src/train/interrupt.js';

function arg(name: string, dflt: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : dflt;
}
const data = arg('data', 'fashion-mnist');
const batch = Number(arg('batch', '64'));
const blocks = Number(arg('blocks', '50'));
const steps = Number(arg('steps', '20'));
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

// 1. The call alone.
for (let i = 0; i < 1000; i++) await turnEventLoop();
const calls = 20000;
let t = performance.now();
for (let i = 0; i < calls; i++) await turnEventLoop();
const perCallUs = ((performance.now() - t) / calls) * 1000;

// 2. Training steps with and without it.
const ds = openDataset(data, 'train');
const loader = new DataLoader(ds, { batchSize: batch, seed: 0, transforms: defaultTransforms(ds, 'train', true) });
const model = buildModel({ blocks: [2, 2, 2, 1], widths: [0.25, 0.25, 0.25, 0.25], strides: [1, 1, 2, 2, 2], inChannels: ds.channels, numClasses: ds.numClasses }, 'target');
const opt = buildOptimizer(model, { kind: 'sgd', lr: 0.01, momentum: 0.9, nesterov: true, weightDecay: 1e-4 });
model.train();
const msPerStep: Record<'without' | 'with', number[]> = { without: [], with: [] };
async function* batches() {
  for (let e = 0; ; e++) yield* loader.epoch(e);
}
const source = batches();
async function step(): Promise<void> {
  const { x, y } = (await source.next()).value!;
  torch.tidy(() => {
    const l = F.crossEntropy(model.forward(x), y, { labelSmoothing: 0.1 });
    l.backward();
    opt.step();
    return l.item();
  });
  opt.zeroGrad();
  x.dispose();
  y.dispose();
}
for (let i = 0; i < steps; i++) await step(); // warm-up
for (let b = 0; b < 2 * blocks; b++) {
  const kind = b % 4 === 1 || b % 4 === 2 ? 'with' : 'without'; // ABBA order
  t = performance.now();
  for (let i = 0; i < steps; i++) {
    await step();
    if (kind === 'with') await turnEventLoop();
  }
  msPerStep[kind].push((performance.now() - t) / steps);
}
await source.return(undefined);
await loader.close();
const without = median(msPerStep.without);
const withTurn = median(msPerStep.with);
console.log(JSON.stringify({
  data, batch, threads: torch.getNumThreads(), loaderWorkers: loader.workers, blocks: msPerStep.with.length, stepsPerBlock: steps,
  turnEventLoopUs: Number(perCallUs.toFixed(2)),
  msPerStepWithout: Number(without.toFixed(3)), msPerStepWith: Number(withTurn.toFixed(3)),
  differenceMs: Number((withTurn - without).toFixed(3)), differencePct: Number((((withTurn - without) / without) * 100).toFixed(2)),
}));
model.dispose();
opt.dispose();
