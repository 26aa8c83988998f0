/**
 * The optimizer kinds, one name each from flag to trainer: SGD (momentum, Nesterov) and AdamW; RepSGD /
 * RepAdamW are the same with Grad Mults. Light on purpose (no libtorch): the CLI's flag specs read it.
 */
export type OptimizerKind = 'sgd' | 'adamw';
export const OPTIMIZER_KINDS: readonly OptimizerKind[] = ['sgd', 'adamw'];
