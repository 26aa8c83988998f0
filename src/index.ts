/**
 * repopt: RepOptimizer (Ding et al., "Re-parameterizing Your Optimizers rather than Architectures",
 * ICLR 2023, arXiv 2205.15242) for TypeScript on libtorch. The public API, one import:
 *
 *   import { torch, F, Module, Conv2d, CslaBlock, RepSGD, reparameterizeModel } from 'repopt';
 *
 * Layers of the library, also reachable as subpaths ('repopt/torch', 'repopt/nn', 'repopt/optim',
 * 'repopt/repopt', 'repopt/models', 'repopt/deploy'):
 *   torch    tensors, autograd, functional ops (PyTorch semantics, computed by libtorch)
 *   nn       Module and PyTorch's standard layers, same state-dict keys
 *   optim    SGD, AdamW, gradient clipping
 *   repopt   CSLA block descriptions, Grad Mults, the Rule of Initialization, RepSGD / RepAdamW,
 *            the three block forms (CslaBlock), re-parameterization to the deploy form
 *   models   the zoo (RepOpt-VGG, RepOpt-GhostNet), its registry and scale files
 *   deploy   fused deploy networks, INT8 quantization, ONNX export (ONNX Runtime loads lazily)
 *   io, data, train   PyTorch checkpoints, datasets and loaders, the training loop, whole runs (runTraining:
 *                     search / train as the CLI does them; evaluateCheckpoint)
 *   distributed       data-parallel training on libtorch's c10d (process group, DDP semantics, launcher)
 */
export * as torch from './torch/index.js';
export { Tensor, F, tidy, keep, noGrad, enableGrad, manualSeed, type DType } from './torch/index.js';
export * from './nn/index.js';
export * from './optim/index.js';
export * from './repopt/index.js';
export * from './models/index.js';
export * from './deploy/index.js';
export { loadPth, savePth, loadPthAsync, savePthAsync, extractStateDict } from './io/pth.js';
export { saveStateDict, loadStateDictFile, saveTrainingCheckpoint, loadTrainingCheckpoint, findNonFinite, NonFiniteError } from './train/checkpoint.js';
export { openDataset, type Dataset } from './data/dataset.js';
export { defaultTransforms, NORMALIZATION, type TransformSpec, type Normalization } from './data/transforms.js';
export { DataLoader, type LoaderOptions, type Batch } from './data/loader.js';
export { SyntheticImages, type SyntheticOptions } from './data/synthetic.js';
export { train, DivergedError, type TrainerOptions, type TrainResult } from './train/trainer.js';
export { evaluate, top1, type EvalResult } from './train/evaluate.js';
export {
  runTraining, evaluateCheckpoint, TRAINING_DEFAULTS, TRAINING_MODES,
  type TrainingRunOptions, type TrainingRunResult, type TrainingMode, type ModelChoice, type TrainingRunConfig, type CheckpointEvalOptions, type CheckpointEvaluation,
} from './train/run.js';
export { buildModel, buildOptimizer, setupRun, modelMode, type ModelConfig, type RunMode, type OptimizerConfig, type SetupOptions, type RunSetup } from './train/setup.js';
export { benchTrainStep, benchOptimizerOverhead, benchPeak, searchMaxBatch, type BenchOptions, type BenchResult } from './train/bench.js';
export { collectBatches, disposeBatches } from './data/batches.js';
export { OptionError } from './errors.js';
export { WriteError, writeFileAtomic } from './io/durable.js';
export { lockRunFolder, RunLockedError, type RunLock } from './train/lock.js';
export { catchStopSignals, turnEventLoop, exitCodeFor, InterruptedError, STOP_SIGNALS, type StopSignal, type StopScope } from './train/interrupt.js';
export { ModelEma } from './train/ema.js';
export { lrAt, scaledLr, type Schedule } from './train/schedule.js';
export { ProcessGroup, DistributedError, DataParallel, distEnvFrom, launchWorkers, shardIndices, convertSyncBatchNorm, revertSyncBatchNorm, type ProcessGroupOptions, type DistEnv, type Shard } from './distributed/index.js';
