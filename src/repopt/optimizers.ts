/**
 * RepOptimizers: PyTorch's SGD and AdamW with the Grad Mults of the model's
 * CSLA blocks. The mults are constants rebuilt from the scales (never saved as
 * optimizer state), keyed by parameter name; parameters without a mult (BN,
 * classifier, ...) follow the plain rule.
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
