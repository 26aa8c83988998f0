/** RepOptimizer: CSLA block descriptions, the two rules, RepOptimizers and the equivalence checker. */
export * from './csla.js';
export { RepSGD, RepAdamW, type GradMults } from './optimizers.js';
export { runCase, CASES, TOLERANCE, type EquivalenceCase, type EquivalenceResult } from './equivalence.js';
export { RepOptHandler, assertFresh, type ReparamSite } from './handler.js';
export { reparameterizeModel, isReparameterizable, type Reparameterizable } from './reparam.js';
export {
  CslaBlock, CSLA_MODES, cslaBlocks, extractScales, loadScales, repOptSites, repOptHandler, initializeFromTwin,
  type CslaMode, type CslaBlockOptions, type BlockScales, type SiteOptions,
} from './block.js';
