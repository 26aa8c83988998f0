/** A per-channel scale (the branches' scales of Hyper-Search and CSLA blocks; the release's `ScaleLayer`, key `weight`). */
import * as torch from '../torch/index.js';
import type { Tensor } from '../torch/index.js';
import { Module } from '../nn/index.js';

/**
 * A trainable (or frozen) per-channel scale: y = x * weight[c] (`weight` [C]). Frozen, it stays a
 * parameter with `requiresGrad` off, or with `frozenAsBuffer` becomes a buffer (the key stays `weight`).
 */
export class ScaleLayer extends Module {
  readonly weight: Tensor;
  constructor(readonly numFeatures: number, init: number, opts: { trainable?: boolean; frozenAsBuffer?: boolean; dtype?: torch.DType } = {}) {
    super();
    const w = torch.full([numFeatures], init, { dtype: opts.dtype ?? 'float32' });
    if (opts.trainable !== false) this.weight = this.registerParameter('weight', w);
    else if (opts.frozenAsBuffer) this.weight = this.registerBuffer('weight', w);
    else this.weight = this.registerParameter('weight', w).requiresGrad_(false);
  }
  forward(x: Tensor): Tensor {
    return x.mul(this.weight.view([1, this.numFeatures, 1, 1]));
  }
}

