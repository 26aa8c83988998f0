/**
 * Exponential moving average of a model's weights (parameters and float
 * buffers): ema = decay * ema + (1 - decay) * current, after every step.
 * Integer buffers (num_batches_tracked) are copied.
 */
import * as torch from '../torch/index.js';
import type { Tensor } from '../torch/index.js';
import type { Module, StateDict } from '../nn/index.js';

export class ModelEma {
  readonly shadow: StateDict;

  constructor(model: Module, readonly decay: number) {
    if (!(decay > 0 && decay < 1)) throw new RangeError(`EMA decay must be in (0, 1), got ${decay}`);
    this.shadow = new Map([...model.stateDict()].map(([k, t]) => [k, torch.keep(t.clone())]));
  }

  update(model: Module): void {
    torch.noGrad(() =>
      torch.tidy(() => {
        const current = model.stateDict();
        const floats: Tensor[] = [];
        const targets: Tensor[] = [];
        for (const [k, t] of current) {
          const e = this.shadow.get(k)!;
          if (torch.isFloating(t.dtype)) {
            targets.push(e);
            floats.push(t);
          } else e.copy_(t);
        }
        torch.foreach.mul_(targets, this.decay);
        torch.foreach.add_(targets, floats, 1 - this.decay);
      }),
    );
  }

  /** Loads saved EMA weights (from a checkpoint). */
  load(sd: Map<string, Tensor>): void {
    torch.noGrad(() => {
      for (const [k, t] of this.shadow) {
        const src = sd.get(k);
        if (!src) throw new Error(`EMA state is missing '${k}'`);
        t.copy_(src);
      }
    });
  }

  dispose(): void {
    for (const t of this.shadow.values()) t.dispose();
  }
}
