/** Optimizers: PyTorch's SGD and AdamW, which become RepOptimizers when Grad Mults are set. */
export { Optimizer, type NamedParameters, type GroupSpec, type Group, type OptimizerStateDict } from './optimizer.js';
export { SGD, type SGDOptions } from './sgd.js';
export { AdamW, type AdamWOptions } from './adamw.js';
export { clipGradNorm, clipGradNormCsla, cslaGradNorm } from './clip.js';
export { OPTIMIZER_KINDS, type OptimizerKind } from './kinds.js';
