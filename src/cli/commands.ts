/**
 * Every command's flags and help, in one place: a typed spec per command (src/cli/flags.ts). The
 * parsers, `repopt <command> --help` and `repopt help` are generated from these specs, so help cannot
 * drift from what a command accepts. This module is light (no libtorch): help answers at once.
 *
 * Adding a flag: add it to the command's spec here; the runner reads it as `flags['the-name']`, typed.
 */
import os from 'node:os';
import { defineCommand, flag, type CommandSpec, type FlagSpec } from './flags.js';
import type { ObserverKind } from '../deploy/quant.js';
import type { BenchMode } from '../train/bench.js';
import { TRAINING_DEFAULTS as D } from '../train/run-options.js';
import { OPTIMIZER_KINDS } from '../optim/kinds.js';

/** The INT8 activation observers (src/deploy/quant.ts OBSERVERS). */
export const OBSERVER_CHOICES = ['minmax', 'percentile', 'mse'] as const satisfies readonly ObserverKind[];
/** The modes `repopt bench` times (src/train/bench.ts BENCH_MODES). */
const BENCH_MODE_CHOICES = ['target', 'repvgg', 'qarepvgg', 'hs'] as const satisfies readonly BenchMode[];
/** The quant-demo's network (also its defaults). */
export const QUANT_DEMO_ARCH = { blocks: [2, 2, 2, 1], widths: [0.25, 0.25, 0.25, 0.25], strides: [1, 1, 2, 2, 2] };

const DATA_SPEC_NOTE =
  'data SPEC: cifar10:DIR  cifar100:DIR (the binary versions)  mnist[:DIR]  fashion-mnist[:DIR] (IDX, plain or .gz)\n' +
  '           folder:DIR (one sub-folder per class of JPEG/PNG)  synthetic[:N]';

/** The model: a named architecture or a custom RepOpt-VGG. */
const SIGNALS_NOTE = 'signals: SIGINT (Ctrl-C) or SIGTERM saves latest.pth at the next step and exits 130 / 143; a second one quits at once';

const MODEL_FLAGS = {
  arch: flag.string('a named architecture (see `repopt models`)', { arg: 'NAME', group: 'model' }),
  blocks: flag.ints('a custom RepOpt-VGG instead: blocks of stages 1-4', { arg: 'B,B,B,B', count: 4, min: 1, group: 'model' }),
  widths: flag.numbers('with --blocks: width multipliers of stages 1-4', { arg: 'W,W,W,W', count: 4, above: 0, group: 'model' }),
  strides: flag.ints('RepOpt-VGG stage strides, stage0..stage4 (1 for small images)', { arg: 'S,S,S,S,S', count: 5, min: 1, max: 2, group: 'model' }),
};

/** A user's network (src/models/csla-family.ts), for the commands that train or load checkpoints. */
const MODEL_FILE_FLAG = {
  model: flag.string('your network instead: a .js file whose default export is (mode, { inChannels, numClasses }) => Module, built from CslaBlocks', { arg: 'FILE.js', group: 'model' }),
};

const THREADS_FLAG = {
  threads: flag.int('intra-op threads (default: libtorch\'s, one per core)', { min: 1 }),
};


// ------------------------------------------------------------------ training

/** Data-parallel training (torchrun's launcher flags; a worker reads torchrun's variables instead). */
export const LAUNCH_FLAG_NAMES = ['nproc', 'nnodes', 'node-rank', 'master-addr', 'master-port'] as const;
const DATA_PARALLEL_FLAGS = {
  nproc: flag.int('data-parallel: start N worker processes on this machine (torchrun --nproc_per_node); --batch-size is per process, threads default to cores / N', { min: 1, group: 'data-parallel' }),
  nnodes: flag.int('machines taking part (run the same command on each)', { min: 1, group: 'data-parallel' }),
  'node-rank': flag.int('this machine\'s index, 0 .. nnodes-1 (node 0 hosts rank 0)', { min: 0, group: 'data-parallel' }),
  'master-addr': flag.string('address of node 0, reachable from every machine (default 127.0.0.1)', { arg: 'HOST', group: 'data-parallel' }),
  'master-port': flag.int('rendezvous port on node 0 (default: a free port on one machine, 29500 on several)', { min: 1, max: 65535, arg: 'PORT', group: 'data-parallel' }),
  'sync-bn': flag.boolean('every BatchNorm normalises training batches with statistics over all ranks (PyTorch\'s SyncBatchNorm; 2 small allreduces per BN layer in forward and 2 in backward); no effect in one process, as PyTorch\'s', { group: 'data-parallel' }),
  'overlap-allreduce': flag.boolean('average each bucket of gradients during backward as soon as it is ready (DistributedDataParallel\'s overlap) instead of all after backward; the same averages', { group: 'data-parallel' }),
  'bucket-cap-mb': flag.number('gradient bucket size in MiB (DistributedDataParallel\'s bucket_cap_mb; with --overlap-allreduce the first bucket is 1 MiB)', { default: D.bucketCapMb, above: 0, arg: 'MIB', group: 'data-parallel' }),
  'dist-timeout': flag.number('give up on a rendezvous or collective after this many seconds (a dead rank is noticed at once)', { default: D.distTimeoutSec, above: 0, arg: 'SEC', group: 'data-parallel' }),
};

const TRAINING_FLAGS = {
  data: flag.string('training data (the test split is evaluated after each epoch)', { arg: 'SPEC', required: true, group: 'data' }),
  'test-data': flag.string('evaluate on this data set\'s test split instead', { arg: 'SPEC', group: 'data' }),
  'image-size': flag.int('resize folder images to N x N', { min: 1, group: 'data' }),
  'no-augment': flag.boolean('no random crop / flip', { group: 'data' }),
  'no-shuffle': flag.boolean('read the training set in order', { group: 'data' }),
  'no-eval': flag.boolean('skip the evaluation after each epoch', { group: 'data' }),
  workers: flag.int('loader worker threads preparing batches (0: in the main thread)', { default: D.workers, min: 0, group: 'data' }),
  ...MODEL_FLAGS,
  ...MODEL_FILE_FLAG,
  init: flag.string('load this state dict as it is (no Rule of Initialization)', { arg: 'FILE.pth', group: 'model' }),
  pretrained: flag.string('fine-tune from a checkpoint of the same family and shape (ours or the release\'s): a new classifier where the classes differ, every other tensor matched by name and shape, no Rule of Initialization; search: a warm-started Hyper-Search (docs/fine-tuning.md)', { arg: 'FILE.pth', group: 'model' }),
  freeze: flag.string('freeze the parameters whose names start with one of these prefixes (not trained; BN running statistics still update)', { arg: 'PREFIX[,PREFIX]', group: 'model' }),
  epochs: flag.int('epochs', { default: D.epochs, min: 1, group: 'optimization' }),
  'batch-size': flag.int('batch size', { default: D.batchSize, min: 1, group: 'optimization' }),
  lr: flag.number(`learning rate (default: ${D.lr.sgd} for sgd, ${D.lr.adamw} for adamw)`, { above: 0, group: 'optimization' }),
  'lr-per-256': flag.boolean('--lr is per 256 images: scaled by batch-size / 256 (the release\'s rule)', { group: 'optimization' }),
  momentum: flag.number('SGD momentum', { default: D.momentum, min: 0, max: 1, group: 'optimization' }),
  nesterov: flag.boolean('Nesterov momentum', { group: 'optimization' }),
  wd: flag.number('weight decay (the release\'s rule: kernels, classifier weight, scale_identity)', { default: D.weightDecay, min: 0, group: 'optimization' }),
  'wd-all': flag.boolean('decay every parameter', { group: 'optimization' }),
  schedule: flag.choice(['cosine', 'constant'] as const, 'learning-rate schedule, stepped per iteration', { default: D.schedule, group: 'optimization' }),
  warmup: flag.number('linear warm-up epochs (fractions allowed)', { default: D.warmupEpochs, min: 0, arg: 'EPOCHS', group: 'optimization' }),
  'label-smoothing': flag.number('label smoothing', { default: D.labelSmoothing, min: 0, max: 1, group: 'optimization' }),
  ema: flag.number('keep an exponential moving average of the weights', { above: 0, max: 1, arg: 'DECAY', group: 'optimization' }),
  clip: flag.number('clip the gradients\' global norm (under RepOpt: the CSLA model\'s norm)', { above: 0, arg: 'NORM', group: 'optimization' }),
  seed: flag.int('seed of initialisation, shuffling and augmentation', { default: D.seed, min: 0, group: 'optimization' }),
  out: flag.string('output folder (default: runs/COMMAND-TIME)', { arg: 'DIR', group: 'run' }),
  resume: flag.boolean('continue the run in --out exactly where it stopped', { group: 'run' }),
  override: flag.choices(['lr'] as const, 'with --resume: take these flags\' new values instead of refusing a changed setting (lr: continue a diverged run with a lower --lr)', { arg: 'lr', item: 'setting', group: 'run' }),
  'log-every': flag.int('a log record every N steps', { default: D.logEvery, min: 1, group: 'run' }),
  'max-steps': flag.int('stop after N steps in all (a checkpoint is written; --resume continues)', { min: 1, group: 'run' }),
  'save-every': flag.int('also write latest.pth every N steps inside an epoch', { min: 1, arg: 'STEPS', group: 'run' }),
  'save-every-min': flag.number('also write latest.pth every M minutes', { above: 0, arg: 'MINUTES', group: 'run' }),
  quiet: flag.boolean('no progress output', { group: 'run' }),
  ...THREADS_FLAG,
  ...DATA_PARALLEL_FLAGS,
};

/** runTraining's options whose flag is not `--<option in kebab case>` (an OptionError names the option). */
const TRAINING_OPTION_FLAGS = {
  augment: '--no-augment', shuffle: '--no-shuffle', evaluate: '--no-eval', lrPer256: '--lr-per-256', weightDecay: '--wd',
  decayAll: '--wd-all', warmupEpochs: '--warmup', emaDecay: '--ema', clipNorm: '--clip', saveEveryMinutes: '--save-every-min',
  distTimeoutSec: '--dist-timeout', signedAdamW: '--signed-adamw', syncBatchNorm: '--sync-bn',
};

export const SEARCH_COMMAND = defineCommand({
  name: 'search',
  summary: 'Hyper-Search: train the hs model (trainable scales) with plain SGD, write OUT/scales.pth',
  usage: '--data SPEC (--arch A | --blocks B --widths W | --model FILE.js) [options]',
  description: 'Hyper-Search: trains the hs model (every branch with a trainable per-channel scale) with plain SGD and writes the searched scales to OUT/scales.pth (+ scales.json), the input of `repopt train --scales`.',
  flags: {
    ...TRAINING_FLAGS,
    'stop-when-settled': flag.string('end the search once the scales\' drift (max over layers and branches of the relative change per epoch) stays below DRIFT for EPOCHS epochs (default 2); the scales are written', { arg: 'DRIFT[:EPOCHS]', group: 'run' }),
  },
  notes: `${DATA_SPEC_NOTE}\n${SIGNALS_NOTE}`,
  optionFlags: TRAINING_OPTION_FLAGS,
});

export const TRAIN_COMMAND = defineCommand({
  name: 'train',
  summary: 'RepOpt training (target model + Grad Mults from --scales) or a baseline',
  usage: '--data SPEC (--arch A | --blocks B --widths W | --model FILE.js) [--mode target|plain|repvgg|qarepvgg|rep|mobileone|csla] [--scales FILE] [options]',
  description: 'Trains the plain target model with a RepOptimizer (Grad Mults rebuilt from --scales; a fresh model gets the Rule of Initialization), or a baseline: --mode repvgg (multi-branch training) or --mode plain (the target model with ordinary SGD/AdamW).',
  flags: {
    mode: flag.choice(['target', 'plain', 'repvgg', 'qarepvgg', 'rep', 'mobileone', 'csla'] as const, 'what to train: target (RepOpt: the plain model with Grad Mults), plain (the same model, ordinary optimizer), or a multi-branch baseline: repvgg or qarepvgg (RepOpt-VGG), rep (RepOpt-GhostNet), mobileone (RepOpt-MobileOne), csla (any: the multi-branch twin with constant scales)', { default: D.mode, group: 'RepOpt' }),
    scales: flag.string('the searched scales (`repopt search` or the release\'s files); needed by --mode target', { arg: 'FILE', group: 'RepOpt' }),
    'identity-init': flag.choice(['searched', 'one'] as const, 'Rule of Initialization of identity branches', { default: D.identityInit, group: 'RepOpt' }),
    optimizer: flag.choice(OPTIMIZER_KINDS, 'optimizer', { default: D.optimizer, group: 'RepOpt' }),
    'custom-l2': flag.boolean('QARepVGG (--mode qarepvgg): its custom L2 instead of weight decay on the 3x3 and 1x1 kernels', { group: 'RepOpt' }),
    'signed-adamw': flag.boolean('AdamW Grad Mults from signed scales (the release\'s rule) instead of |s|', { group: 'RepOpt' }),
    ...TRAINING_FLAGS,
  },
  notes: `${DATA_SPEC_NOTE}\n${SIGNALS_NOTE}`,
  optionFlags: TRAINING_OPTION_FLAGS,
});

export const EVAL_COMMAND = defineCommand({
  name: 'eval',
  summary: 'top-1 / top-5 / loss of a checkpoint on a data set\'s test split',
  usage: '--checkpoint FILE --data SPEC [--arch A | --blocks B --widths W | --model FILE.js] [--mode M] [options]',
  description: 'Evaluates a checkpoint (a repopt run\'s checkpoint, a plain state dict such as the release\'s, or a deployed one) on the test split. The model comes from the run\'s config.json beside the checkpoint, or from --arch / --blocks --widths; the mode from the state dict (or --mode); input channels and classes from the data.',
  flags: {
    checkpoint: flag.string('the checkpoint or state dict', { arg: 'FILE', required: true }),
    data: flag.string('evaluation data (its test split)', { arg: 'SPEC', required: true }),
    mode: flag.choice(['target', 'plain', 'hs', 'csla', 'repvgg', 'qarepvgg', 'rep', 'mobileone', 'deploy'] as const, 'the mode the checkpoint was saved in (default: read from its keys; csla files read as hs)', { group: 'model' }),
    ...MODEL_FLAGS,
    ...MODEL_FILE_FLAG,
    'image-size': flag.int('resize folder images to N x N', { min: 1 }),
    'batch-size': flag.int('batch size', { default: 256, min: 1 }),
    workers: flag.int('loader worker threads', { default: 1, min: 0 }),
    json: flag.boolean('one JSON line'),
    ...THREADS_FLAG,
  },
  notes: DATA_SPEC_NOTE,
});

// ------------------------------------------------------------------ deployment

/** The checkpoint and, when no config.json is beside it, its model. */
const CHECKPOINT_FLAGS = {
  checkpoint: flag.string('a repopt checkpoint, a plain or deployed state dict', { arg: 'FILE', required: true }),
  ...MODEL_FLAGS,
  ...MODEL_FILE_FLAG,
  ...THREADS_FLAG,
};
const CHECKPOINT_NOTE = 'The model comes from config.json beside the checkpoint, or from --arch A | --blocks B --widths W [--strides S] | --model FILE.js; the mode, input channels and classes from the state dict.';

export const DEPLOY_COMMAND = defineCommand({
  name: 'deploy',
  summary: 'fuse branches / fold BN into the plain deployed network, write its state dict',
  usage: '--checkpoint FILE --out FILE.pth [options]',
  description: `Fuses a trained checkpoint into the plain inference network (every block conv3x3 + bias -> ReLU) and writes its state dict. ${CHECKPOINT_NOTE}`,
  flags: {
    ...CHECKPOINT_FLAGS,
    out: flag.string('the deployed state dict to write', { arg: 'FILE.pth', required: true }),
  },
});

const QUANT_POLICY_FLAGS = {
  'fp32-first': flag.boolean('keep the image input and the first conv in FP32', { group: 'INT8' }),
  'fp32-last': flag.boolean('keep the pooled features and the classifier in FP32', { group: 'INT8' }),
  percentile: flag.number('the percentile observer\'s percentile', { default: 99.99, above: 50, max: 100, group: 'INT8' }),
  'keep-float': flag.string('partial INT8: keep the K most sensitive layers (one layer quantized at a time, top-1 drop on the test split) or the named ones (comma list) in float', { arg: 'K|LAYERS', group: 'INT8' }),
};

export const EXPORT_COMMAND = defineCommand({
  name: 'export',
  summary: 'ONNX (opset 13, dynamic batch) of the deployed network, FP32 or INT8 QDQ, checked in ONNX Runtime',
  usage: '--checkpoint FILE (--out FILE.onnx [--int8 --calib SPEC] | --web DIR --calib SPEC) [options]',
  description: `Writes the deployed network as ONNX (opset 13; input [batch, C, height, width], output logits): FP32, or INT8 in QDQ form calibrated on --calib images. Then runs the file in ONNX Runtime (onnxruntime-node when installed, else onnxruntime-web) and compares with our logits (exit 1 beyond tolerance). With --web DIR: a static page in DIR that classifies images in the browser (onnxruntime-web, all files local), FP32 and INT8 side by side, on --web-images test images of --calib and on images drawn (grayscale) or picked (RGB); serve DIR with any static file server. ${CHECKPOINT_NOTE}`,
  flags: {
    ...CHECKPOINT_FLAGS,
    out: flag.string('the ONNX file to write', { arg: 'FILE.onnx' }),
    web: flag.string('write the browser demo page (FP32 + INT8) into this folder', { arg: 'DIR' }),
    'web-images': flag.int('test images embedded in the page', { default: 16, min: 1, max: 256 }),
    format: flag.choice(['onnx'] as const, 'output format', { default: 'onnx' }),
    'image-size': flag.int('image size of the random check images (and of folder calibration images)', { min: 1 }),
    'no-verify': flag.boolean('skip the ONNX Runtime check'),
    seed: flag.int('seed of the calibration sample and check images', { default: 0, min: 0 }),
    int8: flag.boolean('quantize: int8 weights, uint8 activations (QDQ)', { group: 'INT8' }),
    calib: flag.string('calibration data (its training split)', { arg: 'SPEC', group: 'INT8' }),
    'calib-images': flag.int('calibration images', { default: 512, min: 1, group: 'INT8' }),
    observer: flag.choice(OBSERVER_CHOICES, 'activation range observer', { default: 'minmax', group: 'INT8' }),
    'per-tensor': flag.boolean('one weight scale per tensor (default: per output channel)', { group: 'INT8' }),
    'weight-bits': flag.int('weight grid bits (int8 storage)', { default: 8, min: 2, max: 8, group: 'INT8' }),
    ...QUANT_POLICY_FLAGS,
  },
  notes: DATA_SPEC_NOTE,
});

export const QUANTIZE_COMMAND = defineCommand({
  name: 'quantize',
  summary: 'FP32 vs INT8 top-1 per observer (simulated in libtorch), ONNX Runtime agreement, optional QAT',
  usage: '--checkpoint FILE --data SPEC [options]',
  description: `Deploys a checkpoint, calibrates INT8 on the data's training split and measures top-1 on its test split, per activation observer, weight granularity and weight bit width; checks the best configuration in ONNX Runtime; optionally fine-tunes with QAT. ${CHECKPOINT_NOTE}`,
  flags: {
    ...CHECKPOINT_FLAGS,
    data: flag.string('calibration uses its training split, accuracy its test split', { arg: 'SPEC', required: true }),
    'calib-images': flag.int('calibration images', { default: 512, min: 1 }),
    'test-images': flag.int('test images (default: all)', { min: 1 }),
    'batch-size': flag.int('evaluation batch size', { default: 256, min: 1 }),
    seed: flag.int('seed of the calibration sample', { default: 0, min: 0 }),
    json: flag.boolean('one JSON line (the full report)'),
    weights: flag.boolean('also print per-layer weight statistics'),
    observers: flag.choices(OBSERVER_CHOICES, 'activation observers to compare', { default: OBSERVER_CHOICES, item: 'observer', group: 'INT8' }),
    'weight-scales': flag.choice(['channel', 'tensor', 'both'] as const, 'weight scale granularity', { default: 'channel', group: 'INT8' }),
    'weight-bits': flag.ints('weight bit widths to compare (int8 storage, narrower grid)', { default: [8], min: 2, max: 8, group: 'INT8' }),
    ...QUANT_POLICY_FLAGS,
    'onnx-images': flag.int('test images run in ONNX Runtime (0: skip)', { default: 1000, min: 0, group: 'INT8' }),
    sensitivity: flag.boolean('per-layer sensitivity (INT8 and 6-bit weights, one layer at a time), and the partial-INT8 accuracy / latency curve over K in ONNX Runtime (on --onnx-images images)', { group: 'INT8' }),
    'qat-epochs': flag.int('QAT epochs on the training split (0: none)', { default: 0, min: 0, group: 'QAT' }),
    'qat-bits': flag.int('weight bits QAT trains for (default: the smallest of --weight-bits)', { min: 2, max: 8, group: 'QAT' }),
    'qat-lr': flag.number('QAT learning rate', { default: 1e-3, above: 0, group: 'QAT' }),
    'qat-observer': flag.choice(OBSERVER_CHOICES, 'observer QAT starts from (default: the best one)', { group: 'QAT' }),
  },
  notes: DATA_SPEC_NOTE,
  optionFlags: { lr: '--qat-lr' },
});

export const INSPECT_WEIGHTS_COMMAND = defineCommand({
  name: 'inspect-weights',
  summary: 'per-layer weight std of the deployed kernels (overall, centre tap, surrounding taps)',
  usage: '--checkpoint FILE [options]',
  description: `Per-layer statistics of the deployed kernels (the paper's Table 11): std overall, of the centre tap and of the 8 surrounding taps, max |w|, and the int8 rounding error per tensor and per channel. ${CHECKPOINT_NOTE}`,
  flags: { ...CHECKPOINT_FLAGS, json: flag.boolean('one JSON line') },
});

export const QUANT_DEMO_COMMAND = defineCommand({
  name: 'quant-demo',
  summary: 'Fashion-MNIST: RepOpt-VGG vs RepVGG, FP32 and INT8 side by side',
  description: 'Hyper-Search, then RepOpt-VGG (target + RepSGD) and RepVGG of the same shape trained with the same recipe; both deployed, quantized (every observer, per-channel and per-tensor weights, narrower weight grids) and compared in one table; OUT/report.html shows it all (see `repopt report`). Finished runs in --out are reused.',
  flags: {
    data: flag.string('data set', { arg: 'SPEC', default: 'fashion-mnist' }),
    out: flag.string('output folder', { arg: 'DIR', default: 'runs/quant-demo' }),
    epochs: flag.int('training epochs of each model', { default: 1, min: 1 }),
    'search-epochs': flag.int('Hyper-Search epochs', { default: 1, min: 1 }),
    'batch-size': flag.int('training batch size', { default: 128, min: 1 }),
    lr: flag.number('learning rate (default: train\'s)', { above: 0 }),
    seed: flag.int('seed (with --seeds N: the first of N)', { default: 0, min: 0 }),
    seeds: flag.int('runs per arm, each in OUT/seed-K; the summary gives mean and spread', { default: 1, min: 1 }),
    blocks: flag.ints('blocks of stages 1-4', { arg: 'B,B,B,B', count: 4, min: 1, default: QUANT_DEMO_ARCH.blocks, group: 'model' }),
    widths: flag.numbers('width multipliers of stages 1-4', { arg: 'W,W,W,W', count: 4, above: 0, default: QUANT_DEMO_ARCH.widths, group: 'model' }),
    strides: flag.ints('stage strides, stage0..stage4', { arg: 'S,S,S,S,S', count: 5, min: 1, max: 2, default: QUANT_DEMO_ARCH.strides, group: 'model' }),
    'calib-images': flag.int('calibration images', { default: 512, min: 1, group: 'INT8' }),
    'test-images': flag.int('test images (default: all)', { min: 1, group: 'INT8' }),
    'weight-bits': flag.ints('weight bit widths (8: every observer; fewer: MSE activations)', { default: [8, 6, 5], min: 2, max: 8, group: 'INT8' }),
    'qat-epochs': flag.int('QAT epochs (0: none)', { default: 0, min: 0, group: 'INT8' }),
    'onnx-images': flag.int('test images run in ONNX Runtime (0: skip)', { default: 2000, min: 0, group: 'INT8' }),
    sensitivity: flag.boolean('also per-layer sensitivity and the partial-INT8 curve over K (in the report)', { group: 'INT8' }),
    ...THREADS_FLAG,
  },
  notes: DATA_SPEC_NOTE,
});

// ------------------------------------------------------------------ other commands

export const BENCH_COMMAND = defineCommand({
  name: 'bench',
  summary: 'training-step speed and peak memory (see bench/README.md)',
  description: 'Times the training step of one model in one mode (forward, backward, optimizer step), or: --modes (each mode in a fresh process, alternating, medians), --max-batch (the largest batch under a peak-RSS cap), --opt-overhead (RepSGD vs SGD step), --peak (the machine\'s matmul / conv GFLOP/s). Default model: A0 widths with blocks 1,2,4,1, 64x64 input, 100 classes.',
  flags: {
    ...MODEL_FLAGS,
    'image-size': flag.int('input size', { default: 64, min: 1, group: 'model' }),
    classes: flag.int('classes', { default: 100, min: 1, group: 'model' }),
    'in-channels': flag.int('input channels (1 for grey images)', { default: 3, min: 1, group: 'model' }),
    mode: flag.choice(BENCH_MODE_CHOICES, 'training mode', { default: 'target' }),
    modes: flag.choices(BENCH_MODE_CHOICES, 'compare these modes, each in a fresh process', { item: 'mode' }),
    optimizer: flag.choice(['repsgd', 'sgd'] as const, 'target mode: RepSGD (Grad Mults) or plain SGD', { default: 'repsgd' }),
    batch: flag.int('batch size (with --max-batch: the first probe)', { default: 32, min: 1 }),
    warmup: flag.int('untimed steps', { default: 3, min: 0 }),
    steps: flag.int('timed steps', { default: 10, min: 1 }),
    rounds: flag.int('rounds of --modes', { default: 3, min: 1 }),
    threads: flag.int('intra-op threads', { default: os.availableParallelism(), min: 1 }),
    'channels-last': flag.boolean('channels-last memory format (input and weights, as model.to(memory_format=torch.channels_last))'),
    seed: flag.int('seed', { default: 0, min: 0 }),
    json: flag.boolean('JSON output (one line)'),
    'max-batch': flag.boolean('search the largest batch under --mem-cap', { group: 'other measurements' }),
    'mem-cap': flag.number('peak-RSS cap of --max-batch', { above: 0, arg: 'MIB', group: 'other measurements' }),
    'opt-overhead': flag.boolean('RepSGD vs plain SGD optimizer step, alternating', { group: 'other measurements' }),
    reps: flag.int('repetitions of --opt-overhead (default 30) / --peak (default 7)', { min: 1, group: 'other measurements' }),
    peak: flag.boolean('the machine\'s measured peak GFLOP/s', { group: 'other measurements' }),
  },
});

export const SETUP_COMMAND = defineCommand({
  name: 'setup',
  summary: 'install the Debian libraries if missing (libtorch-dev, ...) and build the native addon',
  description:
    'The second of the two set-up commands of an installed package (npm install repopt; npx repopt setup). As root it\n' +
    'runs apt-get; otherwise it prints the apt-get line to run. Idempotent: quick when all is present.',
  flags: {},
});

export const MODELS_COMMAND = defineCommand({
  name: 'models',
  summary: 'the architectures, with params and MACs (target, 1000 classes, 224x224)',
  flags: { json: flag.boolean('one JSON array') },
});

export const DEMO_COMMAND = defineCommand({
  name: 'demo',
  summary: 'Fashion-MNIST: Hyper-Search, RepOpt-VGG vs RepVGG vs plain, a table and report.html',
  description: 'The paper\'s comparison end to end on a small RepOpt-VGG (blocks 2,2,2,1, widths 0.25 x 4, strides 1,1,2,2,2): Hyper-Search, RepOpt-VGG (target + RepSGD), the RepVGG and plain baselines with the same budget, then a table of accuracy, speed, peak memory and parameters, and OUT/report.html (see `repopt report`). Each run is its own process; an interrupted demo continues when run again. With --seeds N every arm runs N times (OUT/seed-K/...), the table gives mean ± sd and the summary says whether each difference exceeds the spread between seeds.',
  flags: {
    data: flag.string('data set', { arg: 'SPEC', default: 'fashion-mnist' }),
    out: flag.string('output folder', { arg: 'DIR', default: 'runs/demo' }),
    epochs: flag.int('training epochs of each model', { default: 2, min: 1 }),
    'search-epochs': flag.int('Hyper-Search epochs', { default: 1, min: 1 }),
    'batch-size': flag.int('batch size', { default: 64, min: 1 }),
    seeds: flag.int('runs per arm, seeds 0..N-1', { default: 1, min: 1 }),
    ...THREADS_FLAG,
  },
});

export const STUDY_COMMAND = defineCommand({
  name: 'study',
  summary: 'where the structural prior pays: plain, RepVGG, QARepVGG, RepOpt-VGG at two depths, seeds, INT8 / low-bit, one report',
  description: 'On Fashion-MNIST: plain VGG, RepVGG, QARepVGG and RepOpt-VGG (from searched scales and from the initial constant scales) at a shallow (blocks 2,2,2,1) and a deep (4,6,16,1) depth, --seeds runs per arm; then INT8 post-training quantization of every run (per-tensor and per-channel weights; 6- and 5-bit weights), the best INT8 model checked in ONNX Runtime, RepOpt-VGG against the Hyper-Search length, and the training speed and memory per arm side by side. Writes OUT/study.json, OUT/summary.md (tables and a verdict per comparison: Welch\'s t-test and the seed ranges) and OUT/report.html. Each run is its own process; an interrupted study continues where it stopped when run again. --quick runs the whole pipeline on tiny synthetic data.',
  flags: {
    data: flag.string('data set', { arg: 'SPEC', default: 'fashion-mnist' }),
    out: flag.string('output folder', { arg: 'DIR', default: 'runs/study' }),
    seeds: flag.int('runs per arm, seeds 0..N-1', { default: 3, min: 1 }),
    epochs: flag.int('training epochs of every run', { default: 1, min: 1 }),
    'search-epochs': flag.int('Hyper-Search epochs of the RepOpt-VGG arm', { default: 1, min: 1 }),
    'budget-search-epochs': flag.ints('longer Hyper-Searches for the search-budget curve (deep net), each followed by a RepOpt-VGG run; 0: none (the curve then has 0 and --search-epochs)', { default: [0], min: 0 }),
    depths: flag.choices(['shallow', 'deep'] as const, 'the depths: shallow = blocks 2,2,2,1 (8 conv layers), deep = 4,6,16,1 (28)', { default: ['shallow', 'deep'], item: 'depth' }),
    arms: flag.choices(['repopt', 'repopt-init', 'plain', 'repvgg', 'qarepvgg'] as const, 'the arms to train', { default: ['repopt', 'repopt-init', 'plain', 'repvgg', 'qarepvgg'], item: 'arm' }),
    'batch-size': flag.int('batch size', { default: 64, min: 1 }),
    lr: flag.number('learning rate (cosine schedule, 0.2 epochs of warm-up)', { default: 0.1, above: 0 }),
    'bench-rounds': flag.int('rounds of the side-by-side speed benchmark per arm (0: none)', { default: 3, min: 0 }),
    'quant-test-images': flag.int('test images for the quantization rows (the drop is paired: FP32 and quantized on the same images)', { default: 2000, min: 1 }),
    'report-only': flag.boolean('train nothing: quantize and report the finished runs (a study under way); the summary lists the missing ones'),
    quick: flag.boolean('the whole pipeline on tiny synthetic data (seconds; for tests and a first look)'),
    ...THREADS_FLAG,
  },
});

export const REPORT_COMMAND = defineCommand({
  name: 'report',
  summary: 'one self-contained HTML page of runs: curves, speed and memory, searched scales, deployed weights, quantization',
  description: 'Reads what runs wrote (log.jsonl, config.json, scales.pth / scales.json, final.pth, quant-demo.json) and writes one HTML file with everything inside (uPlot inlined; it fetches nothing and prints): the recipe, machine, versions and reproducing commands; per arm top-1, speed, memory and parameters with mean and spread over seeds; training curves against steps and wall-clock time; the searched scales per layer and branch; the deployed kernels\' centre-tap vs surrounding-tap std (the paper\'s Table 11); the quantization study. A folder without a log.jsonl is searched for runs (three levels deep).',
  positional: [{ name: 'RUN_DIR', help: 'run folders (with a log.jsonl) or folders of runs (runs/demo)', repeat: true }],
  flags: {
    out: flag.string('the HTML file (default: RUN_DIR/report.html for one folder, else report.html)', { arg: 'FILE.html' }),
    title: flag.string('the page\'s title', { arg: 'TEXT' }),
    'no-weights': flag.boolean('skip the deployed-weight statistics (no checkpoint is loaded)'),
  },
});

export const SMOKE_COMMAND = defineCommand({
  name: 'smoke',
  summary: 'train a small conv net on synthetic data and show the loss falling',
  flags: {
    steps: flag.int('training steps', { default: 100, min: 1 }),
    'batch-size': flag.int('batch size', { default: 32, min: 1 }),
    seed: flag.int('seed', { default: 0, min: 0 }),
    ...THREADS_FLAG,
  },
});

export const DTYPES = { f32: ['float32'], float32: ['float32'], f64: ['float64'], float64: ['float64'], both: ['float32', 'float64'] } as const;

export const CHECK_EQUIVALENCY_COMMAND = defineCommand({
  name: 'check-equivalency',
  summary: 'CSLA branches vs one kernel + Grad Mult, side by side (the method\'s equivalence)',
  description: 'Trains, side by side on the same random data, an explicit CSLA block (branches with constant scales, plain optimizer) and the single kernel with the Grad Mult, and prints the relative L1 difference of the fused kernels per case. Exit 1 when a case that must be equivalent is not.',
  flags: {
    dtype: flag.choice(['f32', 'f64', 'both', 'float32', 'float64'] as const, 'precision', { default: 'both' }),
    case: flag.string('only cases whose name contains TEXT'),
    json: flag.boolean('one JSON line'),
  },
});

export const SCALES_COMMAND = defineCommand({
  name: 'scales',
  summary: 'a scale file\'s re-parameterised kernels, scales and Grad Mults',
  usage: 'FILE --arch ARCH [--rule sgd|adamw] [--json]',
  positional: [{ name: 'FILE', help: 'a scale file (`repopt search` output or the release\'s)' }],
  flags: {
    arch: flag.string('the architecture the scales belong to', { arg: 'ARCH', required: true }),
    rule: flag.choice(OPTIMIZER_KINDS, 'Grad Mult rule', { default: 'sgd' }),
    json: flag.boolean('one JSON line'),
  },
});

/** Every command, in the order `repopt help` lists them. */
export const COMMAND_SPECS: readonly CommandSpec<FlagSpec>[] = [
  MODELS_COMMAND, DEMO_COMMAND, SMOKE_COMMAND, CHECK_EQUIVALENCY_COMMAND, SCALES_COMMAND, SEARCH_COMMAND, TRAIN_COMMAND, EVAL_COMMAND,
  DEPLOY_COMMAND, EXPORT_COMMAND, QUANTIZE_COMMAND, INSPECT_WEIGHTS_COMMAND, QUANT_DEMO_COMMAND, STUDY_COMMAND, REPORT_COMMAND, BENCH_COMMAND, SETUP_COMMAND,
];
