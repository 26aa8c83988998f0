/**
 * A whole training run from one options object, what `repopt search` and `repopt train` do: the loaders,
 * config.json (written atomically; a resumed run must have the same settings), joining the data-parallel
 * group (torchrun's variables), the model and optimizer (`setupRun`), the training loop, and after a
 * Hyper-Search the searched scales (scales.pth + scales.json). Also `evaluateCheckpoint`, what `repopt eval` does.
 *
 *   const search = await runTraining({ data: 'fashion-mnist', model: { arch: 'RepOpt-VGG-A0' }, mode: 'hs', epochs: 1 });
 *   await runTraining({ data: 'fashion-mnist', model: { arch: 'RepOpt-VGG-A0' }, scales: search.scales!.file });
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import * as torch from '../torch/index.js';
import type { OptimizerKind } from '../optim/index.js';
import { openDataset, type Dataset } from '../data/dataset.js';
import { DataLoader } from '../data/loader.js';
import { defaultTransforms } from '../data/transforms.js';
import { OptionError } from '../errors.js';
import { DataParallel } from '../distributed/data-parallel.js';
import { ProcessGroup } from '../distributed/process-group.js';
import { distEnvFrom, type DistEnv } from '../distributed/env.js';
import { threadsPerWorker, watchLauncher } from '../distributed/launch.js';
import { scaledLr } from './schedule.js';
import { train, type TrainResult } from './trainer.js';
import { evaluate, type EvalResult } from './evaluate.js';
import { loadCheckpointModel, prepareCheckpointModel } from './checkpoint-model.js';
import { loadModelFile, modelFilePath } from '../models/csla-family.js';
import { armName, familyOf } from '../models/family.js';
import { archLabel, modelMode, setupRun, type ModelConfig, type RunMode, type RunSetup } from './setup.js';
import { loadTrainingCheckpoint, loadStateDictFile, type LoadedCheckpoint } from './checkpoint.js';
import { holdRunFolder } from './lock.js';
import { readJsonl } from './log.js';
import { writeFileAtomic } from '../io/durable.js';
import { describePretrained } from './pretrained.js';
import { ScaleDrift, checkSettleRule, parseSettleRule, type SettleRule } from './drift.js';
import { TRAINING_DEFAULTS, TRAINING_MODES, type ModelChoice, type TrainingMode, type TrainingRunOptions } from './run-options.js';

export { TRAINING_DEFAULTS, TRAINING_MODES, type ModelChoice, type TrainingMode, type TrainingRunOptions };

/** What a run writes to OUT/config.json: everything needed to rebuild it (and to refuse a resume that differs). */
export interface TrainingRunConfig {
  command: 'search' | 'train';
  mode: TrainingMode;
  data: string;
  model: ModelConfig;
  optimizer: OptimizerKind;
  epochs: number;
  batchSize: number;
  /** After any linear scaling (`lrPer256`). */
  lr: number;
  momentum: number;
  nesterov: boolean;
  weightDecay: number;
  schedule: string;
  warmupEpochs: number;
  labelSmoothing: number;
  ema: number | null;
  clip: number | null;
  seed: number;
  /** Absolute paths. */
  scales: string | null;
  init: string | null;
  /** Fine-tuned from this checkpoint (absolute path), the frozen name prefixes, the search's settle rule. */
  pretrained?: string | null;
  freeze?: string[];
  stopWhenSettled?: Required<SettleRule> | null;
  augment: boolean;
  shuffle: boolean;
  worldSize: number;
  syncBatchNorm: boolean;
  /** QARepVGG's custom L2 instead of weight decay on its kernels. */
  customL2: boolean;
  /** The model's readable name and the run's arm name (reports group and label runs by it); not compared on resume. */
  label?: string;
  arm?: string;
}

/** The settings a resumed run must share with the saved one (another number of processes changes every rank's data). */
const RESUME_KEYS = ['mode', 'model', 'optimizer', 'epochs', 'batchSize', 'lr', 'schedule', 'seed', 'scales', 'worldSize', 'syncBatchNorm', 'customL2'] as const;
/** Settings a resume may change when the user says so (`override`): a lower lr continues a diverged run. */
export const OVERRIDABLE_KEYS = ['lr'] as const;

export interface TrainingRunResult extends TrainResult {
  /** A resume of a run that had ended: nothing was trained or written. */
  alreadyFinished?: boolean;
  /** The run's folder. */
  out: string;
  /** Trainable and frozen parameters of the trained model. */
  params: number;
  /** Hyper-Search run to its end: the scale file written (and its JSON summary); otherwise null. */
  scales: { file: string; summary: string } | null;
  config: TrainingRunConfig;
}

// ------------------------------------------------------------------ options

type Resolved = TrainingRunOptions & Required<Pick<TrainingRunOptions,
  'mode' | 'optimizer' | 'identityInit' | 'workers' | 'epochs' | 'batchSize' | 'lr' | 'momentum' | 'weightDecay' | 'schedule' |
  'warmupEpochs' | 'labelSmoothing' | 'seed' | 'logEvery' | 'distTimeoutSec' | 'log'>>;

const isInt = (v: number, min: number) => Number.isInteger(v) && v >= min;

/** Defaults filled in and every value checked: a bad option is an OptionError naming it, never a crash later. */
function resolveOptions(o: TrainingRunOptions): Resolved {
  const mode = o.mode ?? TRAINING_DEFAULTS.mode;
  if (!TRAINING_MODES.includes(mode)) throw new OptionError('mode', `mode must be one of ${TRAINING_MODES.join(', ')}, got '${mode}'`);
  const optimizer = o.optimizer ?? TRAINING_DEFAULTS.optimizer;
  if (optimizer !== 'sgd' && optimizer !== 'adamw') throw new OptionError('optimizer', `optimizer must be sgd or adamw, got '${optimizer}'`);
  const identityInit = o.identityInit ?? TRAINING_DEFAULTS.identityInit;
  if (identityInit !== 'searched' && identityInit !== 'one') throw new OptionError('identityInit', `identityInit must be searched or one, got '${identityInit}'`);
  const schedule = o.schedule ?? TRAINING_DEFAULTS.schedule;
  if (schedule !== 'cosine' && schedule !== 'constant') throw new OptionError('schedule', `schedule must be cosine or constant, got '${schedule}'`);
  if (typeof o.data !== 'string' || o.data === '') throw new OptionError('data', 'data is required: a data set such as fashion-mnist, cifar10:DIR or synthetic');
  checkModel(o.model);
  const r: Resolved = {
    ...o,
    mode,
    optimizer,
    identityInit,
    schedule,
    workers: o.workers ?? TRAINING_DEFAULTS.workers,
    epochs: o.epochs ?? TRAINING_DEFAULTS.epochs,
    batchSize: o.batchSize ?? TRAINING_DEFAULTS.batchSize,
    lr: o.lr ?? TRAINING_DEFAULTS.lr[optimizer],
    momentum: o.momentum ?? TRAINING_DEFAULTS.momentum,
    weightDecay: o.weightDecay ?? TRAINING_DEFAULTS.weightDecay,
    warmupEpochs: o.warmupEpochs ?? TRAINING_DEFAULTS.warmupEpochs,
    labelSmoothing: o.labelSmoothing ?? TRAINING_DEFAULTS.labelSmoothing,
    seed: o.seed ?? TRAINING_DEFAULTS.seed,
    logEvery: o.logEvery ?? TRAINING_DEFAULTS.logEvery,
    distTimeoutSec: o.distTimeoutSec ?? TRAINING_DEFAULTS.distTimeoutSec,
    log: o.log ?? ((line: string) => console.log(line)),
  };
  const checks: [keyof TrainingRunOptions, number | undefined, boolean, string][] = [
    ['epochs', r.epochs, isInt(r.epochs, 1), 'a positive integer'],
    ['batchSize', r.batchSize, isInt(r.batchSize, 1), 'a positive integer'],
    ['workers', r.workers, isInt(r.workers, 0), 'an integer >= 0'],
    ['lr', r.lr, r.lr > 0 && Number.isFinite(r.lr), 'a positive number'],
    ['momentum', r.momentum, r.momentum >= 0 && r.momentum <= 1, 'in [0, 1]'],
    ['weightDecay', r.weightDecay, r.weightDecay >= 0 && Number.isFinite(r.weightDecay), 'a number >= 0'],
    ['warmupEpochs', r.warmupEpochs, r.warmupEpochs >= 0 && Number.isFinite(r.warmupEpochs), 'a number >= 0'],
    ['labelSmoothing', r.labelSmoothing, r.labelSmoothing >= 0 && r.labelSmoothing <= 1, 'in [0, 1]'],
    ['seed', r.seed, isInt(r.seed, 0), 'an integer >= 0'],
    ['logEvery', r.logEvery, isInt(r.logEvery, 1), 'a positive integer'],
    ['distTimeoutSec', r.distTimeoutSec, r.distTimeoutSec > 0, 'a positive number'],
    ['bucketCapMb', r.bucketCapMb, r.bucketCapMb === undefined || (r.bucketCapMb > 0 && Number.isFinite(r.bucketCapMb)), 'a positive number'],
    ['emaDecay', r.emaDecay, r.emaDecay === undefined || (r.emaDecay > 0 && r.emaDecay <= 1), 'in (0, 1]'],
    ['clipNorm', r.clipNorm, r.clipNorm === undefined || r.clipNorm > 0, 'a positive number'],
    ['imageSize', r.imageSize, r.imageSize === undefined || isInt(r.imageSize, 1), 'a positive integer'],
    ['maxSteps', r.maxSteps, r.maxSteps === undefined || isInt(r.maxSteps, 1), 'a positive integer'],
    ['saveEvery', r.saveEvery, r.saveEvery === undefined || isInt(r.saveEvery, 1), 'a positive integer'],
    ['saveEveryMinutes', r.saveEveryMinutes, r.saveEveryMinutes === undefined || r.saveEveryMinutes > 0, 'a positive number'],
    ['threads', r.threads, r.threads === undefined || isInt(r.threads, 1), 'a positive integer'],
  ];
  for (const [option, value, ok, what] of checks) if (!ok) throw new OptionError(option, `${option} must be ${what}, got ${value}`);
  for (const k of r.override ?? []) {
    if (!(OVERRIDABLE_KEYS as readonly string[]).includes(k)) throw new OptionError('override', `override can change ${OVERRIDABLE_KEYS.join(', ')} on resume, not '${k}'`);
  }
  if (r.override?.length && !r.resume) throw new OptionError('override', 'override changes a saved run\'s settings: it goes with resume');
  if (r.freeze !== undefined && (!Array.isArray(r.freeze) || r.freeze.some((p) => typeof p !== 'string' || p === ''))) throw new OptionError('freeze', `freeze must be a list of parameter name prefixes, got ${JSON.stringify(r.freeze)}`);
  if (r.stopWhenSettled !== undefined && mode !== 'hs') throw new OptionError('stopWhenSettled', `stopWhenSettled ends a Hyper-Search (mode hs); this run's mode is ${mode}`);
  return r;
}

function checkModel(m: ModelChoice | undefined): void {
  if (!m || (m.arch === undefined && m.blocks === undefined && m.widths === undefined && m.file === undefined)) {
    throw new OptionError('model', 'give a model: an architecture (e.g. RepOpt-VGG-A0, see listArchs()), custom RepOpt-VGG blocks and widths, or a network file');
  }
  const given = [m.arch !== undefined, m.blocks !== undefined || m.widths !== undefined, m.file !== undefined].filter(Boolean).length;
  if (given > 1) throw new OptionError('model', 'give one model: an architecture, custom blocks and widths, or a network file');
  if (m.file === undefined && m.arch === undefined && !(m.blocks && m.widths)) throw new OptionError('model', 'a custom RepOpt-VGG needs both blocks and widths (4 values each, stages 1-4)');
}

// ------------------------------------------------------------------ the run

/** This process's rank in a data-parallel job, or null. */
async function joinGroup(denv: DistEnv | null, timeoutSec: number, bucketBytes: number): Promise<DataParallel | null> {
  if (!denv) return null;
  watchLauncher();
  const group = await ProcessGroup.init({ ...denv, timeoutSec });
  return new DataParallel(group, bucketBytes);
}

function loaders(o: Resolved, denv: DistEnv | null) {
  const { imageSize, batchSize, seed, workers } = o;
  const trainSet = openDataset(o.data, 'train', { imageSize });
  const augment = o.augment ?? true;
  const trainLoader = new DataLoader(trainSet, {
    batchSize,
    shuffle: o.shuffle ?? true,
    seed,
    augment,
    transforms: defaultTransforms(trainSet, 'train', augment),
    workers,
    // Data-parallel: this rank's DistributedSampler shard, and drop_last as the release's loader.
    ...(denv ? { shard: { rank: denv.rank, worldSize: denv.worldSize, pad: true }, dropLast: true } : {}),
  });
  if (trainLoader.batchesPerEpoch === 0) {
    throw new OptionError('batchSize', `batch size ${batchSize} is larger than this rank's ${trainLoader.samplesPerEpoch} training samples; lower it`);
  }
  let testLoader: DataLoader | null = null;
  if (o.evaluate ?? true) {
    const testSet = openDataset(o.testData ?? o.data, 'test', { imageSize });
    testLoader = new DataLoader(testSet, {
      batchSize: Math.max(batchSize, 256),
      shuffle: false,
      augment: false,
      transforms: defaultTransforms(testSet, 'test', false),
      workers,
      // Evaluation sharded without padding (the release's rank::W sampler); sums reduced over ranks.
      ...(denv ? { shard: { rank: denv.rank, worldSize: denv.worldSize, pad: false } } : {}),
    });
  }
  return { trainSet, trainLoader, testLoader };
}

function modelConfig(m: ModelChoice, ds: Dataset): ModelConfig {
  const file = m.file === undefined ? undefined : modelFilePath(m.file);
  return { arch: m.arch, blocks: m.blocks, widths: m.widths, strides: m.strides, file, inChannels: ds.channels, numClasses: ds.numClasses };
}

/**
 * Refuses to resume a run whose saved settings differ (the run would not be the one that was started),
 * except the `override` keys the user chose to change; returns those changes ({ key: { from, to } }).
 */
function checkResumable(configPath: string, config: TrainingRunConfig, override: readonly string[]): Record<string, { from: unknown; to: unknown }> {
  if (!fs.existsSync(configPath)) return {};
  const saved = JSON.parse(fs.readFileSync(configPath, 'utf8')) as Record<string, unknown>;
  // Runs saved before worldSize / syncBatchNorm were recorded ran in one process, without SyncBatchNorm.
  const before: Record<string, unknown> = { worldSize: 1, syncBatchNorm: false, customL2: false };
  const differs = RESUME_KEYS.filter((k) => JSON.stringify(k in saved ? saved[k] : before[k]) !== JSON.stringify(config[k]));
  const refused = differs.filter((k) => !override.includes(k));
  if (refused.length) {
    const hint = refused.every((k) => (OVERRIDABLE_KEYS as readonly string[]).includes(k)) ? ` or say so (override: ${refused.join(', ')})` : '';
    throw new OptionError('resume', `the saved run in ${path.dirname(configPath)} has different settings (${refused.join(', ')}); resume it with the same settings${hint} or start a new run`);
  }
  return Object.fromEntries(differs.map((k) => [k, { from: saved[k], to: config[k] }]));
}

/**
 * Whether the run in `out` ended and wrote everything: all epochs in latest.pth, final.pth (and a search's
 * scales.pth) and the log's `end` record. A run cut between those writes resumes to write the rest.
 */
function finished(out: string, ck: LoadedCheckpoint, epochs: number, search: boolean): boolean {
  if (ck.state.epoch < epochs || !fs.existsSync(path.join(out, 'final.pth'))) return false;
  if (search && !fs.existsSync(path.join(out, 'scales.pth'))) return false;
  const log = path.join(out, 'log.jsonl');
  return fs.existsSync(log) && readJsonl(log).some((r) => r.type === 'end' && r.iteration === ck.state.iteration);
}

/**
 * Trains one run: Hyper-Search (`mode: 'hs'`, then OUT/scales.pth), RepOpt training (`mode: 'target'` with
 * `scales`), or a baseline. Writes OUT/config.json, log.jsonl, latest.pth every epoch and final.pth, holding
 * OUT/run.lock meanwhile (another run in OUT is refused with a RunLockedError); a run stopped
 * by SIGINT/SIGTERM returns with `stopSignal` set and `resume: true` continues it (`alreadyFinished` when it
 * had ended). Weights that became NaN/inf are never saved: a DivergedError, after a `diverged` log record. Data-parallel when started by
 * a launcher (torchrun's variables, or `distributed`): only rank 0 writes files and logs.
 * Bad options throw an OptionError naming the option.
 */
export async function runTraining(options: TrainingRunOptions): Promise<TrainingRunResult> {
  const o = resolveOptions(options);
  if (o.model.file !== undefined) await loadModelFile(o.model.file);
  const command = o.mode === 'hs' ? 'search' : 'train';
  const denv = o.distributed === undefined ? distEnvFrom() : o.distributed;
  const main = !denv || denv.rank === 0; // rank 0 writes config.json, logs and the scales
  const out = o.out ?? path.join('runs', `${command}-${Date.now()}`);
  const threads = o.threads ?? (denv ? threadsPerWorker(denv.localWorldSize) : undefined);
  if (threads !== undefined) torch.setNumThreads(threads);
  // The release scales by the total batch over all ranks.
  const lr = o.lrPer256 ? scaledLr(o.lr, o.batchSize * (denv?.worldSize ?? 1)) : o.lr;
  const resume = o.resume ?? false;
  const settle = o.stopWhenSettled === undefined ? null : checkSettleRule(typeof o.stopWhenSettled === 'string' ? parseSettleRule(o.stopWhenSettled) : o.stopWhenSettled);
  const configPath = path.join(out, 'config.json');
  const latest = path.join(out, 'latest.pth');
  // Rank 0 holds the folder for the run's lifetime: a second run (or resume) in it is refused with this pid.
  const held = main ? holdRunFolder(out) : null;
  try {
    if (!resume && fs.existsSync(latest)) throw new OptionError('out', `${out} already holds a run (latest.pth); resume it or choose another folder`);
    return await runLocked(o, { out, denv, main, lr, configPath, latest, settle });
  } finally {
    held?.release();
  }
}

async function runLocked(
  o: Resolved,
  c: { out: string; denv: DistEnv | null; main: boolean; lr: number; configPath: string; latest: string; settle: Required<SettleRule> | null },
): Promise<TrainingRunResult> {
  const { mode, seed, epochs, batchSize, optimizer, schedule, log } = o;
  const { out, denv, main, lr, configPath, latest, settle } = c;
  const search = mode === 'hs';
  const command = search ? 'search' : 'train';
  const resume = o.resume ?? false;
  if (main && o.workers > os.availableParallelism()) {
    // As PyTorch's DataLoader warns: more workers than cores only slow the run down.
    process.stderr.write(`repopt: warning: ${o.workers} loader workers requested; the suggested maximum on this system is ${os.availableParallelism()} (its cores); ` +
      'excessive workers may slow the run down or exhaust memory, lower --workers if so\n');
  }

  torch.manualSeed(seed);
  const { trainSet, trainLoader, testLoader } = loaders(o, denv);
  let dist: DataParallel | null = null;
  let checkpoint: LoadedCheckpoint | undefined;
  try {
    const model = modelConfig(o.model, trainSet);
    const config: TrainingRunConfig = {
      command,
      mode,
      data: o.data,
      model,
      optimizer,
      epochs,
      batchSize,
      lr,
      momentum: o.momentum,
      nesterov: o.nesterov ?? false,
      weightDecay: o.weightDecay,
      schedule,
      warmupEpochs: o.warmupEpochs,
      labelSmoothing: o.labelSmoothing,
      ema: o.emaDecay ?? null,
      clip: o.clipNorm ?? null,
      seed,
      scales: o.scales ? path.resolve(o.scales) : null,
      init: o.init ? path.resolve(o.init) : null,
      pretrained: o.pretrained ? path.resolve(o.pretrained) : null,
      ...(o.freeze?.length ? { freeze: o.freeze } : {}),
      stopWhenSettled: settle,
      augment: o.augment ?? true,
      shuffle: o.shuffle ?? true,
      worldSize: denv?.worldSize ?? 1,
      syncBatchNorm: o.syncBatchNorm ?? false,
      customL2: o.customL2 ?? false,
      label: archLabel(model),
      arm: armName(familyOf(model), mode),
    };
    const overrides = resume ? checkResumable(configPath, config, o.override ?? []) : {};
    if (resume && fs.existsSync(latest)) {
      checkpoint = loadTrainingCheckpoint(latest);
      if (finished(out, checkpoint, epochs, search)) {
        // Finished: "already finished", and nothing written (no second `end` record, config.json untouched).
        return { state: checkpoint.state, alreadyFinished: true, interrupted: false, stopSignal: null, trainImgPerSec: 0, peakRssBytes: process.resourceUsage().maxRSS * 1024, seconds: 0, out, params: 0, scales: null, config };
      }
    }
    dist = await joinGroup(denv, o.distTimeoutSec, Math.round((o.bucketCapMb ?? TRAINING_DEFAULTS.bucketCapMb) * 1024 * 1024));
    const run = setupRun({
      model,
      mode,
      optimizer: { kind: optimizer, lr, momentum: config.momentum, nesterov: config.nesterov, weightDecay: config.weightDecay, decayAll: o.decayAll ?? false },
      scales: o.scales,
      init: o.init,
      pretrained: o.pretrained,
      freeze: o.freeze,
      identityInit: o.identityInit,
      signedAdamW: o.signedAdamW ?? false,
      resuming: resume && fs.existsSync(latest),
      customL2: o.customL2 ?? false,
    });
    try {
      if (!main) fs.mkdirSync(out, { recursive: true });
      if (main) {
        // Atomically (the other ranks of a resumed run read it); an overridden lr is the run's lr from now on.
        writeFileAtomic(configPath, JSON.stringify(config, null, 2) + '\n', 'run settings');
      }
      const params = run.model.numParameters();
      if (!o.quiet && main) {
        const nThreads = torch.getNumThreads();
        log(`${command}: ${archLabel(model)} mode ${mode}, ${params.toLocaleString('en-US')} params, ${trainSet.name} (${trainSet.length} images), ` +
          `${epochs} epochs x ${trainLoader.batchesPerEpoch} steps${dist ? ` (${dist.worldSize} processes x batch ${batchSize}, ${nThreads} thread${nThreads === 1 ? '' : 's'} each${config.syncBatchNorm ? ', SyncBatchNorm' : ''})` : ''}, ${optimizer}${run.optimizer.gradMults.size ? ' with Grad Mults' : ''}, lr ${lr}, out ${out}`);
      }
      if (!o.quiet && main && run.pretrained) log(describePretrained(run.pretrained));
      if (!o.quiet && main && run.frozen) log(`frozen: ${run.frozen.length} parameters (${o.freeze!.join(', ')}), not trained`);
      const drift = search ? scaleDrift(run, out, resume, latest, settle) : null;
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
          emaDecay: o.emaDecay,
          clipNorm: o.clipNorm,
          resume,
          checkpoint,
          resumeNote: Object.keys(overrides).length ? { overrides } : undefined,
          logEvery: o.logEvery,
          config: { ...config },
          label: search ? 'search' : mode,
          quiet: o.quiet,
          maxSteps: o.maxSteps,
          saveEvery: o.saveEvery,
          saveEveryMinutes: o.saveEveryMinutes,
          dist: dist ?? undefined,
          syncBatchNorm: config.syncBatchNorm,
          overlapAllreduce: o.overlapAllreduce ?? false,
          ...(drift ? {
            onEpochEnd: (epoch: number, record: Record<string, unknown>) => {
              const step = drift.epoch(epoch, epochs);
              Object.assign(record, step.record);
              if (!o.quiet && main) {
                process.stderr.write(`search epoch ${epoch}: ${ScaleDrift.describe(step.record, settle)}\n`);
                for (const w of step.record.scaleWarnings ?? []) log(`warning: ${w}`);
              }
              return step.stop;
            },
          } : {}),
        },
      );
      if (result.stopReason && main && !o.quiet) log(`search stopped early: ${result.stopReason}`);
      let scales: TrainingRunResult['scales'] = null;
      if (main && search && !result.interrupted && (result.state.epoch >= epochs || result.stopReason)) {
        const searched = run.family.extractScales(run.model);
        try {
          scales = run.family.saveScales(path.join(out, 'scales.pth'), searched, run.model, archLabel(model));
        } finally {
          for (const t of searched.values()) t.dispose();
        }
        if (!o.quiet) log(`scales written to ${scales.file} (summary ${scales.summary})`);
      }
      return { ...result, out, params, scales, config };
    } finally {
      run.model.dispose();
      run.optimizer.dispose();
    }
  } finally {
    if (checkpoint) {
      // Disposed by train() once used; a run that stopped before (finished, or an error) disposes them here.
      for (const t of [...checkpoint.model.values(), ...(checkpoint.ema?.values() ?? [])]) if (!t.isDisposed) t.dispose();
      for (const st of checkpoint.optimizer.state.values()) for (const t of st.values()) if (!t.isDisposed) t.dispose();
    }
    dist?.group.destroy();
    await trainLoader.close();
    await testLoader?.close();
  }
}

/** The search's drift tracker, from the model's scales now (a resumed run: from its latest.pth and its last epoch record). */
function scaleDrift(run: Pick<RunSetup, 'model' | 'family'>, out: string, resume: boolean, latest: string, settle: Required<SettleRule> | null): ScaleDrift {
  let last: Record<string, unknown> | undefined;
  if (resume && fs.existsSync(latest)) {
    const sd = loadStateDictFile(latest);
    try {
      run.model.loadStateDict(sd);
    } finally {
      for (const t of sd.values()) t.dispose();
    }
    const logFile = path.join(out, 'log.jsonl');
    if (fs.existsSync(logFile)) last = readJsonl(logFile).filter((r) => r.type === 'epoch').pop();
  }
  return new ScaleDrift(run.family, run.model, settle, last);
}

// ------------------------------------------------------------------ evaluation

export interface CheckpointEvalOptions {
  /** A repopt checkpoint, a plain state dict (e.g. the release's) or a deployed one. */
  checkpoint: string;
  /** The data set whose test split is evaluated. */
  data: string;
  /** The model; default: the run's config.json beside the checkpoint. */
  model?: ModelChoice;
  /** The mode the checkpoint was saved in; default: read from its keys. */
  mode?: RunMode | 'deploy';
  imageSize?: number;
  /** Default 256. */
  batchSize?: number;
  /** Loader worker threads (default 1). */
  workers?: number;
}

export interface CheckpointEvaluation extends EvalResult {
  /** The model's label (architecture name or custom RepOpt-VGG). */
  arch: string;
  /** The mode the checkpoint was evaluated in. */
  mode: string;
  /** The data set's name. */
  dataset: string;
}

/** Top-1, top-5 and mean cross-entropy of a checkpoint on a data set's test split (input channels and classes must match). */
export async function evaluateCheckpoint(o: CheckpointEvalOptions): Promise<CheckpointEvaluation> {
  const testSet = openDataset(o.data, 'test', { imageSize: o.imageSize });
  await prepareCheckpointModel({ checkpoint: o.checkpoint, model: o.model });
  const loaded = loadCheckpointModel(
    { checkpoint: o.checkpoint, model: o.model },
    { mode: o.mode === undefined || o.mode === 'deploy' ? o.mode : modelMode(o.mode), inChannels: testSet.channels, numClasses: testSet.numClasses },
  );
  const model = loaded.model;
  try {
    const loader = new DataLoader(testSet, { batchSize: o.batchSize ?? 256, shuffle: false, augment: false, transforms: defaultTransforms(testSet, 'test', false), workers: o.workers ?? 1 });
    try {
      const r = await evaluate(model, loader);
      return { arch: loaded.family.label(loaded.config), mode: loaded.mode, dataset: testSet.name, ...r };
    } finally {
      await loader.close();
    }
  } finally {
    model.dispose();
  }
}
