/** `repopt smoke`: trains a small conv net on synthetic data and shows the loss falling. */
import * as torch from '../torch/index.js';
import { F } from '../torch/index.js';
import { SGD } from '../optim/index.js';
import { SmallVGG } from '../models/smallvgg.js';
import { SyntheticImages } from '../data/synthetic.js';

export interface SmokeOptions {
  steps: number;
  batchSize: number;
  seed: number;
  log: (line: string) => void;
}

export function runSmoke(opts: SmokeOptions): { first: number; last: number } {
  torch.manualSeed(opts.seed);
  const data = new SyntheticImages({ numClasses: 10, size: 16, noise: 1.0, seed: opts.seed });
  const model = new SmallVGG({ width: 16, depth: 2 });
  const opt = new SGD(model.namedParameters(), { lr: 0.05, momentum: 0.9, nesterov: true, weightDecay: 1e-4 });
  opts.log(`smoke: SmallVGG (${model.numParameters()} params) on synthetic 16x16 images, ${torch.getNumThreads()} threads`);
  const losses: number[] = [];
  const t0 = performance.now();
  for (let step = 1; step <= opts.steps; step++) {
    const loss = torch.tidy(() => {
      const { x, y } = data.batch(opts.batchSize);
      const l = F.crossEntropy(model.forward(x), y);
      opt.zeroGrad();
      l.backward();
      opt.step();
      return l.item();
    });
    losses.push(loss);
    if (step % 10 === 0 || step === 1) {
      const avg = losses.slice(-10).reduce((a, b) => a + b, 0) / Math.min(10, losses.length);
      const ms = (performance.now() - t0) / step;
      opts.log(`step ${String(step).padStart(4)}  loss ${avg.toFixed(4)}  (${ms.toFixed(1)} ms/step)`);
    }
  }
  const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
  const first = mean(losses.slice(0, 10));
  const last = mean(losses.slice(-10));
  opts.log(`loss ${first.toFixed(4)} -> ${last.toFixed(4)} ${last < first ? '(falling: ok)' : '(NOT falling)'}`);
  model.dispose();
  opt.dispose();
  data.dispose();
  return { first, last };
}
