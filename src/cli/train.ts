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
import { familyOf } from '../models/family.js';
import { UsageError, parseCommand, type Flags } from './flags.js';
import { EVAL_COMMAND, SEARCH_COMMAND, TRAIN_COMMAND } from './commands.js';
import { applyThreads } from './threads.js';
import { DataParallel, ProcessGroup, distEnvFrom, threadsPerWorker, watchLauncher, type DistEnv } from '../distributed/index.js';

type TrainFlags = Flags<typeof TRAIN_COMMAND.flags>;
type SearchFlags = Flags<typeof SEARCH_COMMAND.flags>;

export interface RunSummary {
  result: TrainResult;
  params: number;
  out: string;
}

/** The model configuration of the model flags, with input channels and classes from the data. */
export function modelConfig(f: { arch?: string; blocks?: number[]; widths?: number[]; strides?: number[] }, ds: Dataset): ModelConfig {
  if (f.arch && (f.blocks || f.widths)) throw new UsageError('give either --arch or --blocks/--widths, not both');
  if (!f.arch && !(f.blocks && f.widths)) throw new UsageError('give --arch NAME (e.g. RepOpt-VGG-A0) or --blocks 2,2,1,1 --widths 0.25,0.25,0.25,0.25');
  return { arch: f.arch, blocks: f.blocks, widths: f.widths, strides: f.strides, inChannels: ds.channels, numClasses: ds.numClasses };
}

/** This process's rank in a data-parallel job (torchrun's variables), or null. */
async function joinGroup(denv: DistEnv | null, timeoutSec: number): Promise<DataParallel | null> {
  if (!denv) return null;
  watchLauncher();
  const group = await ProcessGroup.init({ ...denv, timeoutSec });
  return new DataParallel(group);
}

function loaders(f: SearchFlags, batchSize: number, seed: number, denv: DistEnv | null) {
  const imageSize = f['image-size'];
  const trainSet = openDataset(f.data, 'train', { imageSize });
  const augment = !f['no-augment'];
  const trainLoader = new DataLoader(trainSet, {
    batchSize,
    shuffle: !f['no-shuffle'],
    seed,
    augment,
    transforms: defaultTransforms(trainSet, 'train', augment),
    workers: f.workers,
    // Data-parallel: this rank's DistributedSampler shard, and drop_last as the release's loader.
    ...(denv ? { shard: { rank: denv.rank, worldSize: denv.worldSize, pad: true }, dropLast: true } : {}),
  });
  if (trainLoader.batchesPerEpoch === 0) {
    throw new UsageError(`--batch-size ${batchSize} is larger than this rank's ${trainLoader.samplesPerEpoch} training samples; lower it`);
  }
  let testLoader: DataLoader | null = null;
  if (!f['no-eval']) {
    const testSet = openDataset(f['test-data'] ?? f.data, 'test', { imageSize });
    testLoader = new DataLoader(testSet, {
      batchSize: Math.max(batchSize, 256),
      shuffle: false,
      augment: false,
      transforms: defaultTransforms(testSet, 'test', false),
      workers: f.workers,
      // Evaluation sharded without padding (the release's rank::W sampler); sums reduced over ranks.
      ...(denv ? { shard: { rank: denv.rank, worldSize: denv.worldSize, pad: false } } : {}),
    });
  }
  return { trainSet, trainLoader, testLoader };
}

/** Shared by search and train: parse, build, train. */
export async function runTraining(argv: string[], command: 'search' | 'train', log: (l: string) => void): Promise<RunSummary> {
  // Search has no RepOpt flags: it always trains the hs model with plain SGD.
  const f: TrainFlags = command === 'search'
    ? { ...parseCommand(SEARCH_COMMAND, argv).flags, mode: 'target', scales: undefined, 'identity-init': 'searched', optimizer: 'sgd', 'signed-adamw': false }
    : parseCommand(TRAIN_COMMAND, argv).flags;
  const mode: RunMode = command === 'search' ? 'hs' : f.mode;
  const denv = distEnvFrom();
  const main = !denv || denv.rank === 0; // rank 0 writes config.json, logs and the scales
  const out = f.out ?? path.join('runs', `${command}-${Date.now()}`);
  const { seed, epochs, clip } = f;
  const batchSize = f['batch-size'];
  applyThreads(f.threads ?? (denv ? threadsPerWorker(denv.localWorldSize) : undefined));
  const optimizerKind = f.optimizer;
  const schedule = f.schedule;
  const baseLr = f.lr ?? (optimizerKind === 'sgd' ? 0.1 : 1e-3);
  // The release scales by the total batch over all ranks.
  const lr = f['lr-per-256'] ? scaledLr(baseLr, batchSize * (denv?.worldSize ?? 1)) : baseLr;
  const resume = f.resume;
  const configPath = path.join(out, 'config.json');
  if (!resume && fs.existsSync(path.join(out, 'latest.pth'))) {
    throw new UsageError(`${out} already holds a run (latest.pth); pass --resume to continue it or choose another --out`);
  }

  torch.manualSeed(seed);
  const { trainSet, trainLoader, testLoader } = loaders(f, batchSize, seed, denv);
  let dist: DataParallel | null = null;
  try {
    dist = await joinGroup(denv, f['dist-timeout']);
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
      momentum: f.momentum,
      nesterov: f.nesterov,
      weightDecay: f.wd,
      schedule,
      warmupEpochs: f.warmup,
      labelSmoothing: f['label-smoothing'],
      ema: f.ema ?? null,
      clip: clip ?? null,
      seed,
      scales: f.scales ? path.resolve(f.scales) : null,
      init: f.init ? path.resolve(f.init) : null,
      augment: !f['no-augment'],
      shuffle: !f['no-shuffle'],
      worldSize: denv?.worldSize ?? 1,
    };
    if (resume && fs.existsSync(configPath)) {
      const saved = JSON.parse(fs.readFileSync(configPath, 'utf8')) as Record<string, unknown>;
      // A different number of processes changes every rank's data: refused like the other settings.
      const differs = ['mode', 'model', 'optimizer', 'epochs', 'batchSize', 'lr', 'schedule', 'seed', 'scales', 'worldSize'].filter(
        (k) => JSON.stringify(k in saved ? saved[k] : k === 'worldSize' ? 1 : undefined) !== JSON.stringify((config as Record<string, unknown>)[k]),
      );
      if (differs.length) throw new UsageError(`--resume with different settings than the saved run (${differs.join(', ')}); resume with the same flags`);
    }
    const run = setupRun({
      model,
      mode,
      optimizer: { kind: optimizerKind, lr, momentum: config.momentum, nesterov: config.nesterov, weightDecay: config.weightDecay, decayAll: f['wd-all'] },
      scales: f.scales,
      init: f.init,
      identityInit: f['identity-init'],
      signedAdamW: f['signed-adamw'],
      resuming: resume && fs.existsSync(path.join(out, 'latest.pth')),
    });
    fs.mkdirSync(out, { recursive: true });
    if (main) {
      // Atomically: the other ranks of a resumed run read it.
      fs.writeFileSync(`${configPath}.tmp-${process.pid}`, JSON.stringify(config, null, 2) + '\n');
      fs.renameSync(`${configPath}.tmp-${process.pid}`, configPath);
    }
    const params = run.model.numParameters();
    if (!f.quiet && main) {
      log(`${command}: ${archLabel(model)} mode ${mode}, ${params.toLocaleString('en-US')} params, ${trainSet.name} (${trainSet.length} images), ` +
        `${epochs} epochs x ${trainLoader.batchesPerEpoch} steps${dist ? ` (${dist.worldSize} processes x batch ${batchSize}, ${torch.getNumThreads()} thread${torch.getNumThreads() === 1 ? '' : 's'} each)` : ''}, ${optimizerKind}${run.optimizer.gradMults.size ? ' with Grad Mults' : ''}, lr ${lr}, out ${out}`);
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
        emaDecay: f.ema,
        clipNorm: clip,
        resume,
        logEvery: f['log-every'],
        config,
        label: command === 'search' ? 'search' : mode,
        quiet: f.quiet,
        maxIterations: f['max-steps'],
        saveEvery: f['save-every'],
        saveEveryMinutes: f['save-every-min'],
        dist: dist ?? undefined,
      },
    );
    if (main && command === 'search' && !result.interrupted && result.state.epoch >= epochs) {
      const scales = run.family.extractScales(run.model);
      const saved = run.family.saveScales(path.join(out, 'scales.pth'), scales, run.model, archLabel(model));
      for (const t of scales.values()) t.dispose();
      if (!f.quiet) log(`scales written to ${saved.file} (summary ${saved.summary})`);
    }
    run.model.dispose();
    run.optimizer.dispose();
    return { result, params, out };
  } finally {
    dist?.group.destroy();
    await trainLoader.close();
    await testLoader?.close();
  }
}

/**
 * `repopt eval --checkpoint FILE --data SPEC`: the model from --arch / --blocks --widths or the run's
 * config.json beside the checkpoint, the mode from --mode or the state dict, the classes from the data.
 */
export async function runEval(argv: string[], log: (l: string) => void): Promise<number> {
  const { flags: f } = parseCommand(EVAL_COMMAND, argv);
  applyThreads(f.threads);
  const testSet = openDataset(f.data, 'test', { imageSize: f['image-size'] });
  const { loadCheckpointModel } = await import('../deploy/study.js');
  const loaded = loadCheckpointModel(
    { checkpoint: f.checkpoint, model: { arch: f.arch, blocks: f.blocks, widths: f.widths, strides: f.strides } },
    { mode: f.mode === undefined || f.mode === 'deploy' ? f.mode : modelMode(f.mode), inChannels: testSet.channels, numClasses: testSet.numClasses },
  );
  const model = loaded.model;
  const loader = new DataLoader(testSet, { batchSize: f['batch-size'], shuffle: false, augment: false, transforms: defaultTransforms(testSet, 'test', false), workers: f.workers });
  try {
    const r = await evaluate(model, loader);
    if (f.json) log(JSON.stringify({ checkpoint: f.checkpoint, data: f.data, arch: loaded.family.label(loaded.config), mode: loaded.mode, ...r }));
    else log(`${f.checkpoint} (${loaded.family.label(loaded.config)}, ${loaded.mode}) on ${testSet.name} test (${r.count} images): top-1 ${(r.top1 * 100).toFixed(2)}%  top-5 ${(r.top5 * 100).toFixed(2)}%  loss ${r.loss.toFixed(4)}`);
    return 0;
  } finally {
    await loader.close();
    model.dispose();
  }
}
