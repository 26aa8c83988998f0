/**
 * One training step of SmallVGG (stem conv3x3 3->C, `depth` conv3x3 C->C, each
 * with BN + ReLU, global average pool, linear to 10) on a fixed random batch,
 * timed. Mirrors bench/train_step.py step for step; bench/run.mjs alternates
 * the two and writes the table.
 *
 *   node dist/bench/train-step.js --width 32 [--depth 4] [--batch 32] [--size 32]
 *        [--warmup 10] [--steps 30] [--reps 1] [--threads N]
 *
 * A step = zeroGrad, forward, cross entropy, backward, SGD step, inside torch.tidy.
 * Prints one JSON line: ms/step of each repetition (mean over `steps` steps),
 * process CPU time per step (all threads), the median single step, peak RSS (process.resourceUsage().maxRSS, KiB) and threads.
 */
import * as torch from '../src/torch/index.js';
import { F } from '../src/torch/index.js';
import { SGD } from '../src/optim/index.js';
import { SmallVGG } from '../src/models/smallvgg.js';

interface Args {
  width: number;
  depth: number;
  batch: number;
  size: number;
  warmup: number;
  steps: number;
  reps: number;
  threads: number;
}

function parseArgs(argv: string[]): Args {
  const a: Args = { width: 32, depth: 4, batch: 32, size: 32, warmup: 10, steps: 30, reps: 1, threads: torch.getNumThreads() };
  for (let i = 0; i < argv.length; i++) {
    const flag = argv[i];
    const key = flag.replace(/^--/, '') as keyof Args;
    if (!flag.startsWith('--') || !(key in a)) throw new Error(`train-step: unknown argument '${flag}'`);
    const v = Number(argv[++i]);
    if (!Number.isInteger(v) || v < 0) throw new Error(`train-step: --${key} expects a non-negative integer`);
    a[key] = v;
  }
  return a;
}

function median(xs: number[]): number {
  const s = [...xs].sort((x, y) => x - y);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

const args = parseArgs(process.argv.slice(2));
torch.setNumThreads(args.threads);
torch.manualSeed(0);

const model = new SmallVGG({ width: args.width, depth: args.depth, numClasses: 10 });
const opt = new SGD(model.namedParameters(), { lr: 0.01, momentum: 0.9, weightDecay: 1e-4 });
const x = torch.keep(torch.randn([args.batch, 3, args.size, args.size]));
const y = torch.keep(torch.randint(0, 10, [args.batch]));

function step(): void {
  torch.tidy(() => {
    opt.zeroGrad();
    const loss = F.crossEntropy(model.forward(x), y);
    loss.backward();
    opt.step();
  });
}

for (let i = 0; i < args.warmup; i++) step();

const msPerStep: number[] = [];
const single: number[] = [];
const cpuMsPerStep: number[] = [];
for (let r = 0; r < args.reps; r++) {
  const c0 = process.cpuUsage();
  const t0 = performance.now();
  for (let i = 0; i < args.steps; i++) {
    const s = performance.now();
    step();
    single.push(performance.now() - s);
  }
  msPerStep.push((performance.now() - t0) / Math.max(1, args.steps));
  const c = process.cpuUsage(c0);
  cpuMsPerStep.push((c.user + c.system) / 1e3 / Math.max(1, args.steps));
}

// The loss after the timed steps: a check that both sides train the same net.
const finalLoss = torch.tidy(() => torch.noGrad(() => F.crossEntropy(model.forward(x), y).item()));

console.log(
  JSON.stringify({
    impl: 'repopt',
    width: args.width,
    depth: args.depth,
    batch: args.batch,
    size: args.size,
    warmup: args.warmup,
    steps: args.steps,
    threads: torch.getNumThreads(),
    msPerStep,
    cpuMsPerStep,
    medianStepMs: median(single),
    maxRSSKiB: process.resourceUsage().maxRSS,
    liveTensors: torch.liveTensors(),
    finalLoss,
    runtime: `node ${process.version}`,
  }),
);

model.dispose();
opt.dispose();
x.dispose();
y.dispose();
