/**
 * The options of a training run (`runTraining`, src/train/run.ts) and their defaults. Light on purpose (types
 * and constants only, no libtorch): the CLI's flag specs take their defaults from here, so `repopt train --help`
 * and the library cannot disagree.
 */
import type { ModelSpec } from '../models/family.js';
import type { DistEnv } from '../distributed/env.js';
import type { ScheduleKind } from './schedule.js';
import type { OptimizerKind } from '../optim/kinds.js';
import type { SettleRule } from './drift.js';

/** The model to train: a registered architecture (`repopt models`), a custom RepOpt-VGG (blocks and widths) or a network file (`file`). */
export type ModelChoice = Omit<ModelSpec, 'inChannels' | 'numClasses'>;

/**
 * What a run trains: `target` (RepOptimizer: the plain model with Grad Mults from `scales`), `plain` (the same
 * model, ordinary optimizer), `hs` (Hyper-Search: the model with trainable scales; the run writes scales.pth),
 * or the family's multi-branch baseline (`repvgg` for RepOpt-VGG, `rep` for RepOpt-GhostNet); RepOpt-VGG
 * also trains as QARepVGG (`qarepvgg`: BN after the branch sum, a bare 1x1, the quantization-friendly baseline);
 * RepOpt-MobileOne's baseline is MobileOne's own form (`mobileone`); `csla` trains the multi-branch twin (constant
 * scales) with a plain optimizer, the baseline of a user's network (`model: { file }`).
 */
export type TrainingMode = 'target' | 'plain' | 'hs' | 'repvgg' | 'qarepvgg' | 'rep' | 'mobileone' | 'csla';
export const TRAINING_MODES: readonly TrainingMode[] = ['target', 'plain', 'hs', 'repvgg', 'qarepvgg', 'rep', 'mobileone', 'csla'];

export interface TrainingRunOptions {
  // ---- data
  /** The training data set: `cifar10:DIR`, `cifar100:DIR`, `mnist[:DIR]`, `fashion-mnist[:DIR]`, `folder:DIR`, `synthetic[:N]`. */
  data: string;
  /** Evaluate on this data set's test split instead of `data`'s. */
  testData?: string;
  /** Resize folder images to N x N. */
  imageSize?: number;
  /** Random crop / flip of training images (default true). */
  augment?: boolean;
  /** Shuffle the training set each epoch (default true). */
  shuffle?: boolean;
  /** Evaluate the test split after each epoch (default true). */
  evaluate?: boolean;
  /** Loader worker threads preparing batches; 0: in the calling thread (default 1). */
  workers?: number;

  // ---- model
  model: ModelChoice;
  /** Default `target`. */
  mode?: TrainingMode;
  /** The searched scales (a Hyper-Search scales.pth or the release's file); needed by mode `target`, refused by the others. */
  scales?: string;
  /** Load this state dict as it is (no Rule of Initialization). */
  init?: string;
  /** Rule of Initialization of identity branches: from the searched scale, or 1 (default `searched`). */
  identityInit?: 'searched' | 'one';
  /**
   * Fine-tune from this checkpoint of the same family and shape (ours or the release's `torch.save` files): the
   * classifier is re-initialised when the number of classes differs, every other tensor must match by name and
   * shape; no Rule of Initialization (the Grad Mults still come from `scales`). With mode `hs`: a warm-started
   * Hyper-Search (src/train/pretrained.ts, docs/fine-tuning.md).
   */
  pretrained?: string;
  /** Parameter name prefixes to freeze (requiresGrad off, left out of the optimizer), e.g. ['stage0', 'stage1']. */
  freeze?: string[];
  /** Hyper-Search: end when the scales' drift stays below `drift` for `epochs` epochs (default 2); a string is `DRIFT[:EPOCHS]`. */
  stopWhenSettled?: SettleRule | string;

  // ---- optimization
  /** Default `sgd`. */
  optimizer?: OptimizerKind;
  /** QARepVGG (mode `qarepvgg`): its custom L2 (the official recipe) instead of weight decay on the 3x3 and 1x1 kernels. */
  customL2?: boolean;
  /** AdamW Grad Mults from signed scales (the release's rule) instead of |s|. */
  signedAdamW?: boolean;
  epochs?: number;
  /** Batch size (per process when data-parallel). */
  batchSize?: number;
  /** Learning rate (default 0.1 for SGD, 1e-3 for AdamW). */
  lr?: number;
  /** `lr` is per 256 images: scaled by the total batch / 256 (the release's rule). */
  lrPer256?: boolean;
  momentum?: number;
  nesterov?: boolean;
  /** Weight decay, on what the release decays (kernels, classifier weight, scale_identity) unless `decayAll`. */
  weightDecay?: number;
  decayAll?: boolean;
  /** Learning-rate schedule, stepped per iteration (default cosine). */
  schedule?: ScheduleKind;
  /** Linear warm-up epochs (fractions allowed). */
  warmupEpochs?: number;
  labelSmoothing?: number;
  /** Keep an exponential moving average of the weights with this decay. */
  emaDecay?: number;
  /** Clip the gradients' global norm (under RepOpt: the CSLA model's norm). */
  clipNorm?: number;
  /** Seed of initialisation, shuffling and augmentation. */
  seed?: number;

  // ---- the run
  /** The run's folder (default runs/search-TIME for Hyper-Search, runs/train-TIME otherwise). */
  out?: string;
  /** Continue the run in `out` exactly where it stopped (its settings must be the same). */
  resume?: boolean;
  /**
   * With `resume`: settings that may differ from the saved run's, taking the new value (only `lr`: continue a
   * diverged run with a lower learning rate). Recorded in the log's `resume` record and in config.json.
   */
  override?: string[];
  /** A log record every N steps. */
  logEvery?: number;
  /** Stop after this many steps in all (a checkpoint is written; `resume` continues). */
  maxSteps?: number;
  /** Also write latest.pth every N steps inside an epoch. */
  saveEvery?: number;
  /** Also write latest.pth every M minutes. */
  saveEveryMinutes?: number;
  /** No progress output. */
  quiet?: boolean;
  /** libtorch intra-op threads (default: libtorch's; data-parallel: cores / local processes). */
  threads?: number;
  /**
   * This process's rank in a data-parallel job; default: torchrun's environment variables (RANK, WORLD_SIZE,
   * MASTER_ADDR, ...), or none. `null`: a single process whatever the environment says.
   */
  distributed?: DistEnv | null;
  /** Give up on a rendezvous or collective after this many seconds. */
  distTimeoutSec?: number;
  /**
   * Data-parallel: every BatchNorm normalises training batches with statistics over all ranks (PyTorch's
   * SyncBatchNorm; 2 small allreduces per BN layer in forward, 2 in backward). No effect in one process.
   */
  syncBatchNorm?: boolean;
  /** Data-parallel: average gradient buckets during backward (DistributedDataParallel's overlap), not after it. */
  overlapAllreduce?: boolean;
  /** Data-parallel: gradient bucket size in MiB (DistributedDataParallel's bucket_cap_mb, default 25). */
  bucketCapMb?: number;
  /** Where the run's summary lines go (default console.log); progress goes to stderr unless `quiet`. */
  log?: (line: string) => void;
}

/** The defaults of `TrainingRunOptions` (the learning rate's depends on the optimizer). */
export const TRAINING_DEFAULTS = {
  mode: 'target',
  identityInit: 'searched',
  optimizer: 'sgd',
  workers: 1,
  epochs: 10,
  batchSize: 64,
  lr: { sgd: 0.1, adamw: 1e-3 },
  momentum: 0.9,
  weightDecay: 4e-5,
  schedule: 'cosine',
  warmupEpochs: 0,
  labelSmoothing: 0.1,
  seed: 0,
  logEvery: 50,
  distTimeoutSec: 300,
  bucketCapMb: 25,
} as const;
