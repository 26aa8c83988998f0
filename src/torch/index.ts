/**
 * repopt's tensor layer: PyTorch semantics from TypeScript, computed by libtorch.
 *
 *   import * as torch from './torch/index.js';
 *   const x = torch.randn([2, 3], { requiresGrad: true });
 *   x.mul(x).sum().backward();
 */
export { Tensor, type Scalar, type Dims, type NestedArray } from './tensor.js';
export type { DType, TypedArray, MemoryFormat } from './dtype.js';
export { isFloating } from './dtype.js';
export * from './creation.js';
export { Generator, manualSeed } from './random.js';
export { tidy, keep, noGrad, enableGrad, isGradEnabled, liveTensors } from './scope.js';
export { collectHandles, cpuCacheStats, emptyCpuCache } from './gc.js';
export { turnEventLoop } from './event-loop.js';
export type { CpuCacheStats } from './native.js';
export { setNumThreads, getNumThreads, parallelInfo, blasNumThreads } from './threads.js';
export { cat, stack, where, pad } from './functional.js';
export * as F from './functional.js';
export { setFusedKernels, getFusedKernels, convSmallOutputProblems, fusedKernelModel, type FusedKernelModel, type KernelIsa } from './fused.js';
export * as foreach from './foreach.js';
export { schemaOf, defOp } from './ops.js';
