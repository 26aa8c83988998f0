/**
 * RepOptimizers: PyTorch's SGD and AdamW with the Grad Mults of the model's
 * CSLA blocks. The mults are constants rebuilt from the scales (never saved as
 * optimizer state), keyed by parameter name; parameters without a mult (BN,
 * classifier, ...) follow the plain rule.
 *
 *   const mults = repOptHandler(target, scales).gradMults('sgd');
 *   const opt = new RepSGD(target.namedParameters(), { lr: 0.1, momentum: 0.9 }, mults);
 *   for (const m of mults.values()) m.dispose();   // optional: the optimizer holds its own references
 *
 * Ownership: the optimizer keeps its own reference to each mult (an alias of the same storage), so
 * the `mults` passed in stay the caller's to dispose; `opt.dispose()` frees the optimizer's.
 */
import type { Tensor } from '../torch/index.js';
import { SGD, type SGDOptions } from '../optim/sgd.js';
import { AdamW, type AdamWOptions } from '../optim/adamw.js';
import type { GroupSpec, NamedParameters } from '../optim/optimizer.js';

export type GradMults = Map<string, Tensor>;

export class RepSGD extends SGD {
  constructor(params: NamedParameters | GroupSpec<SGDOptions>[], options: Partial<SGDOptions> & { lr: number }, mults: GradMults) {
    super(params, options);
    this.setGradMults(mults);
  }
}

export class RepAdamW extends AdamW {
  constructor(params: NamedParameters | GroupSpec<AdamWOptions>[], options: Partial<AdamWOptions> & { lr: number }, mults: GradMults) {
    super(params, options);
    this.setGradMults(mults);
  }
}
