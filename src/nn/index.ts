/** repopt's neural-network modules (PyTorch's torch.nn, same names and state-dict keys). */
export { Module, type StateDict, type LoadResult } from './module.js';
export * from './layers.js';
export * as init from './init.js';
export { toChannelsLast_ } from './memory-format.js';
export { syncBatchNorm, type BatchStatsReducer, type SyncBatchNormOptions } from './sync-batch-norm.js';
export type { GraphExportable, GraphOps, GraphValue } from './graph-types.js';
