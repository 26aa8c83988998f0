/** Data-parallel training on libtorch's c10d (Gloo on CPU; NCCL in CUDA builds). */
export { ProcessGroup, DistributedError, DEFAULT_BUCKET_BYTES, type ProcessGroupOptions } from './process-group.js';
export { DataParallel } from './data-parallel.js';
export { distEnvFrom, type DistEnv } from './env.js';
export { launchWorkers, freePort, threadsPerWorker, watchLauncher, type LaunchOptions } from './launch.js';
export { shardIndices, type Shard } from '../data/loader.js';
export { convertSyncBatchNorm, revertSyncBatchNorm } from './sync-batch-norm.js';
