/**
 * `repopt search`, `repopt train` and `repopt eval`: flags -> a run.
 *   search: Hyper-Search (the `hs` model, plain SGD), writes OUT/scales.pth (+ .json)
 *   train:  --mode target (RepOptimizer from --scales), repvgg or plain baselines
 *   eval:   top-1/top-5/loss of a checkpoint on a data set
 */
import fs from 'node:fs';
import path from 'node:path';
import * as torch from '../torch/index.js';
import { openDataset, type Dataset } from '../data/dataset.js';
import { DataLoader } from '../data/loader.js';
import { defaultTransforms } from '../data/transforms.js';
import { train, type TrainResult } from '../train/trainer.js';
import { scaledLr, type ScheduleKind } from '../train/schedule.js';
import { evaluate } from '../train/evaluate.js';
import { loadStateDictFile } from '../train/checkpoint.js';
import { archLabel, buildModel, modelMode, setupRun, type ModelConfig, type RunMode } from '../train/setup.js';
import { extractVggScales } from '../models/repoptvgg.js';
import { layoutScheme } from '../models/repoptvgg-handler.js';
import { saveScaleFile } from '../models/scales.js';
import { UsageError, parseFlags, type FlagSpec } from './flags.js';

const MODEL_FLAGS: FlagSpec = {
  arch: 'string',
  blocks: 'list',
  widths: 'list',
  strides: 'list',
  'image-size': 'number',
};

const TRAIN_FLAGS: FlagSpec = {
  ...MODEL_FLAGS,
  data: 'string',
  'test-data': 'string',
  mode: 'string',
  scales: 'string',
  init: 'string',
  optimizer: 'string',
  epochs: 'number',
  'batch-size': 'number',
  lr: 'number',
  'lr-per-256': 'boolean',
  momentum: 'number',
  nesterov: 'boolean',
  wd: 'number',
  'wd-all': 'boolean',
  schedule: 'string',
  warmup: 'number',
  'label-smoothing': 'number',
  ema: 'number',
  clip: 'number',
  seed: 'number',
  threads: 'number',
  workers: 'number',
  'no-augment': 'boolean',
  'no-shuffle': 'boolean',
  'no-eval': 'boolean',
  'identity-init': 'string',
  'signed-adamw': 'boolean',
  out: 'string',
  resume: 'boolean',
  'log-every': 'number',
  'max-steps': 'number',
  'save-every': 'number',
  'save-every-min': 'number',
  quiet: 'boolean',
};

export interface RunSummary {
  result: TrainResult;
  params: number;
  out: string;
}

function oneOf<T extends string>(flag: string, v: unknown, allowed: readonly T[], dflt: T): T {
  if (v === undefined) return dflt;
  if (!allowed.includes(v as T)) throw new UsageError(`--${flag} must be one of ${allowed.join(', ')}, got '${String(v)}'`);
  return v as T;
}

function modelConfig(f: Record<string, unknown>, ds: Dataset): ModelConfig {
  if (f.arch && (f.blocks || f.widths)) throw new UsageError('give either --arch or --blocks/--widths, not both');
  if (!f.arch && !(f.blocks && f.widths)) throw new UsageError('give --arch NAME (e.g. RepOpt-VGG-A0) or --blocks 2,2,1,1 --widths 0.25,0.25,0.25,0.25');
  return {
    arch: f.arch as string | undefined,
    blocks: f.blocks as number[] | undefined,
    widths: f.widths as number[] | undefined,
    strides: f.strides as number[] | undefined,
    inChannels: ds.channels,
    numClasses: ds.numClasses,
  };
}

function loaders(f: Record<string, unknown>, batchSize: number, seed: number) {
  const spec = f.data as string;
  if (!spec) throw new UsageError('--data SPEC is required (cifar10:DIR, cifar100:DIR, mnist[:DIR], fashion-mnist[:DIR], folder:DIR, synthetic)');
  const imageSize = f['image-size'] as number | undefined;
  const trainSet = openDataset(spec, 'train', { imageSize });
  const augment = f['no-augment'] !== true;
  const workers = (f.workers as number | undefined) ?? 1;
  const trainLoader = new DataLoader(trainSet, {
    batchSize,
    shuffle: f['no-shuffle'] !== true,
    seed,
    augment,
    transforms: defaultTransforms(trainSet, 'train', augment),
    workers,
  });
  let testLoader: DataLoader | null = null;
  if (f['no-eval'] !== true) {
    const testSet = openDataset((f['test-data'] as string | undefined) ?? spec, 'test', { imageSize });
    testLoader = new DataLoader(testSet, { batchSize: Math.max(batchSize, 256), shuffle: false, augment: false, transforms: defaultTransforms(testSet, 'test', false), workers });
  }
  return { trainSet, trainLoader, testLoader };
}

/** Shared by search and train: parse, build, train. */
export async function runTraining(argv: string[], command: 'search' | 'train', log: (l: string) => void): Promise<RunSummary> {
  const f = parseFlags(argv, TRAIN_FLAGS);
  const mode: RunMode = command === 'search' ? 'hs' : oneOf('mode', f.mode, ['target', 'repvgg', 'plain'] as const, 'target');
  if (command === 'search' && f.mode) throw new UsageError('search always trains the hs model; --mode is for train');
  const out = (f.out as string | undefined) ?? path.join('runs', `${command}-${Date.now()}`);
  const seed = (f.seed as number | undefined) ?? 0;
  const batchSize = (f['batch-size'] as number | undefined) ?? 64;
  const epochs = (f.epochs as number | undefined) ?? 10;
  if (!Number.isInteger(batchSize) || batchSize < 1) throw new UsageError(`--batch-size must be a positive integer, got ${batchSize}`);
  if (!Number.isInteger(epochs) || epochs < 1) throw new UsageError(`--epochs must be a positive integer, got ${epochs}`);
  if (f.threads !== undefined) torch.setNumThreads(f.threads as number);
  const optimizerKind = oneOf('optimizer', f.optimizer, ['sgd', 'adamw'] as const, 'sgd');
  if (command === 'search' && optimizerKind !== 'sgd') throw new UsageError('Hyper-Search trains with plain SGD');
  const schedule = oneOf<ScheduleKind>('schedule', f.schedule, ['cosine', 'constant'], 'cosine');
  const baseLr = (f.lr as number | undefined) ?? (optimizerKind === 'sgd' ? 0.1 : 1e-3);
  const lr = f['lr-per-256'] ? scaledLr(baseLr, batchSize) : baseLr;
  const clip = f.clip as number | undefined;
  if (clip !== undefined && !(clip > 0)) throw new UsageError(`--clip must be positive, got ${clip}`);
  const resume = f.resume === true;
  const saveEvery = f['save-every'] as number | undefined;
  if (saveEvery !== undefined && !(Number.isInteger(saveEvery) && saveEvery > 0)) throw new UsageError(`--save-every must be a positive integer (steps), got ${saveEvery}`);
  const saveEveryMin = f['save-every-min'] as number | undefined;
  if (saveEveryMin !== undefined && !(saveEveryMin > 0)) throw new UsageError(`--save-every-min must be a positive number of minutes, got ${saveEveryMin}`);
  const configPath = path.join(out, 'config.json');
  if (!resume && fs.existsSync(path.join(out, 'latest.pth'))) {
    throw new UsageError(`${out} already holds a run (latest.pth); pass --resume to continue it or choose another --out`);
  }

  torch.manualSeed(seed);
  const { trainSet, trainLoader, testLoader } = loaders(f, batchSize, seed);
  try {
    const model = modelConfig(f, trainSet);
    const config = {
      command,
      mode,
      data: f.data,
      model,
      optimizer: optimizerKind,
      epochs,
      batchSize,
      lr,
      momentum: (f.momentum as number | undefined) ?? 0.9,
      nesterov: f.nesterov === true,
      weightDecay: (f.wd as number | undefined) ?? 4e-5,
      schedule,
      warmupEpochs: (f.warmup as number | undefined) ?? 0,
      labelSmoothing: (f['label-smoothing'] as number | undefined) ?? 0.1,
      ema: f.ema ?? null,
      clip: clip ?? null,
      seed,
      scales: f.scales ? path.resolve(f.scales as string) : null,
      init: f.init ? path.resolve(f.init as string) : null,
      augment: f['no-augment'] !== true,
      shuffle: f['no-shuffle'] !== true,
    };
    if (resume && fs.existsSync(configPath)) {
      const saved = JSON.parse(fs.readFileSync(configPath, 'utf8')) as Record<string, unknown>;
      const differs = ['mode', 'model', 'optimizer', 'epochs', 'batchSize', 'lr', 'schedule', 'seed', 'scales'].filter(
        (k) => JSON.stringify(saved[k]) !== JSON.stringify((config as Record<string, unknown>)[k]),
      );
      if (differs.length) throw new UsageError(`--resume with different settings than the saved run (${differs.join(', ')}); resume with the same flags`);
    }
    const run = setupRun({
      model,
      mode,
      optimizer: { kind: optimizerKind, lr, momentum: config.momentum, nesterov: config.nesterov, weightDecay: config.weightDecay, decayAll: f['wd-all'] === true },
      scales: f.scales as string | undefined,
      init: f.init as string | undefined,
      identityInit: oneOf('identity-init', f['identity-init'], ['searched', 'one'] as const, 'searched'),
      signedAdamW: f['signed-adamw'] === true,
      resuming: resume && fs.existsSync(path.join(out, 'latest.pth')),
    });
    fs.mkdirSync(out, { recursive: true });
    fs.writeFileSync(configPath, JSON.stringify(config, null, 2) + '\n');
    const params = run.model.numParameters();
    if (f.quiet !== true) {
      log(`${command}: ${archLabel(model)} mode ${mode}, ${params.toLocaleString('en-US')} params, ${trainSet.name} (${trainSet.length} images), ` +
        `${epochs} epochs x ${trainLoader.batchesPerEpoch} steps, ${optimizerKind}${run.optimizer.gradMults.size ? ' with Grad Mults' : ''}, lr ${lr}, out ${out}`);
    }
    const result = await train(
      { model: run.model, optimizer: run.optimizer, cslaMults: run.cslaMults },
      trainLoader,
      testLoader,
      {
        out,
        epochs,
        lr,
        schedule,
        warmupEpochs: config.warmupEpochs,
        labelSmoothing: config.labelSmoothing,
        emaDecay: f.ema as number | undefined,
        clipNorm: clip,
        resume,
        logEvery: (f['log-every'] as number | undefined) ?? 50,
        config,
        label: command === 'search' ? 'search' : mode,
        quiet: f.quiet === true,
        maxIterations: f['max-steps'] as number | undefined,
        saveEvery,
        saveEveryMinutes: saveEveryMin,
      },
    );
    if (command === 'search' && !result.interrupted && result.state.epoch >= epochs) {
      const scales = extractVggScales(run.model);
      const saved = saveScaleFile(path.join(out, 'scales.pth'), scales, archLabel(model), { scheme: layoutScheme(run.model.layout) });
      for (const t of scales.values()) t.dispose();
      if (f.quiet !== true) log(`scales written to ${saved.file} (summary ${saved.summary})`);
    }
    run.model.dispose();
    run.optimizer.dispose();
    return { result, params, out };
  } finally {
    await trainLoader.close();
    await testLoader?.close();
  }
}

/** `repopt eval --checkpoint FILE --data SPEC`: uses the run's config.json beside the checkpoint, or model flags. */
export async function runEval(argv: string[], log: (l: string) => void): Promise<number> {
  const f = parseFlags(argv, { ...MODEL_FLAGS, checkpoint: 'string', data: 'string', mode: 'string', 'batch-size': 'number', threads: 'number', json: 'boolean', workers: 'number' });
  const file = f.checkpoint as string | undefined;
  if (!file) throw new UsageError('--checkpoint FILE is required');
  if (!f.data) throw new UsageError('--data SPEC is required');
  if (f.threads !== undefined) torch.setNumThreads(f.threads as number);
  const testSet = openDataset(f.data as string, 'test', { imageSize: f['image-size'] as number | undefined });
  const configFile = path.join(path.dirname(file), 'config.json');
  let modelCfg: ModelConfig;
  let mode: RunMode;
  if (f.arch || f.blocks) {
    modelCfg = modelConfig(f, testSet);
    mode = oneOf('mode', f.mode, ['target', 'repvgg', 'plain', 'hs'] as const, 'target');
  } else if (fs.existsSync(configFile)) {
    const saved = JSON.parse(fs.readFileSync(configFile, 'utf8')) as { model: ModelConfig; mode: RunMode };
    modelCfg = saved.model;
    mode = saved.mode;
  } else {
    throw new UsageError(`no config.json beside ${file}: give the model with --arch or --blocks/--widths (and --mode)`);
  }
  const model = buildModel(modelCfg, modelMode(mode));
  const sd = loadStateDictFile(file); // a plain state dict, {"model": ...}, or a repopt checkpoint's model
  model.loadStateDict(sd);
  for (const t of sd.values()) t.dispose();
  const loader = new DataLoader(testSet, { batchSize: (f['batch-size'] as number | undefined) ?? 256, shuffle: false, augment: false, transforms: defaultTransforms(testSet, 'test', false), workers: (f.workers as number | undefined) ?? 1 });
  try {
    const r = await evaluate(model, loader);
    if (f.json) log(JSON.stringify({ checkpoint: file, data: f.data, ...r }));
    else log(`${file} on ${testSet.name} test (${r.count} images): top-1 ${(r.top1 * 100).toFixed(2)}%  top-5 ${(r.top5 * 100).toFixed(2)}%  loss ${r.loss.toFixed(4)}`);
    return 0;
  } finally {
    await loader.close();
    model.dispose();
  }
}

