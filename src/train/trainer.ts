/**
 * The training loop shared by `repopt search`, `repopt train` (RepOpt, RepVGG
 * and plain baselines) and the demo: JSONL logs, atomic self-describing
 * checkpoints every epoch (never one holding NaN/inf: the run stops with a
 * `diverged` record), exact resume (mid-epoch too, the epoch's running sums
 * included), Ctrl-C saves and exits
 * cleanly. Data-parallel with `dist` (one process per rank, each with its shard
 * of the data): gradients averaged before the optimizer, the stop decision and
 * metrics agreed over ranks, and only rank 0 logs, shows progress and writes files.
 */
import fs from 'node:fs';
import path from 'node:path';
import * as torch from '../torch/index.js';
import { F, type Tensor } from '../torch/index.js';
import type { Module, StateDict } from '../nn/index.js';
import { clipGradNorm, clipGradNormCsla, type Optimizer } from '../optim/index.js';
import { lrAt, type ScheduleKind } from './schedule.js';
import { ModelEma } from './ema.js';
import { JsonlLog } from './log.js';
import { Progress } from './progress.js';
import { evaluate, type BatchSource, type EvalResult } from './evaluate.js';
import { InterruptedError, catchStopSignals, turnEventLoop, type StopSignal } from './interrupt.js';
import { findNonFinite, loadTrainingCheckpoint, saveStateDict, saveTrainingCheckpoint, type EpochSums, type LoadedCheckpoint, type TrainingState } from './checkpoint.js';
import type { DataParallel } from '../distributed/data-parallel.js';
import { convertSyncBatchNorm, revertSyncBatchNorm } from '../distributed/sync-batch-norm.js';

export interface TrainLoader extends BatchSource {
  readonly batchesPerEpoch: number;
  readonly batchSize: number;
}

export interface TrainerSetup {
  model: Module;
  optimizer: Optimizer<{ lr: number }>;
  /** SGD Grad Mults of the re-parameterised kernels: clipping then uses the CSLA model's norm. */
  cslaMults?: ReadonlyMap<string, Tensor>;
  /** A penalty added to the loss before backward (QARepVGG's custom L2); the logged loss stays the criterion's. */
  regularizer?: () => Tensor;
}

export interface TrainerOptions {
  out: string;
  epochs: number;
  /** Base learning rate (after any linear scaling). */
  lr: number;
  schedule: ScheduleKind;
  warmupEpochs: number;
  labelSmoothing: number;
  emaDecay?: number;
  clipNorm?: number;
  resume: boolean;
  /** With `resume`: latest.pth as the caller already loaded it (default: read here). Its tensors are disposed. */
  checkpoint?: LoadedCheckpoint;
  /** With `resume`: added to the log's `resume` record (e.g. the settings the user overrode). */
  resumeNote?: Record<string, unknown>;
  /** Iterations between step records in the JSONL log. */
  logEvery: number;
  /** Everything needed to rebuild the run, stored in checkpoints. */
  config: Record<string, unknown>;
  label?: string;
  quiet?: boolean;
  /** Stop after this many optimizer steps in total (tests, interruption drills). */
  maxSteps?: number;
  /** Also save latest.pth every this many steps inside an epoch (bounds the work a SIGKILL loses). */
  saveEvery?: number;
  /** Also save latest.pth when this many minutes have passed since the last save. */
  saveEveryMinutes?: number;
  /** Data-parallel training: this process is one rank (its loaders read its shards). */
  dist?: DataParallel;
  /**
   * Data-parallel: every BatchNorm normalises training batches with statistics over all ranks
   * (PyTorch's SyncBatchNorm; 2 small allreduces per BN in forward, 2 in backward). Without
   * `dist` it has no effect, as PyTorch's SyncBatchNorm without a process group.
   */
  syncBatchNorm?: boolean;
  /**
   * Data-parallel: average each bucket of gradients during backward, as soon as backward has produced
   * it (DistributedDataParallel's overlap), instead of all of them after backward. The same averages.
   */
  overlapAllreduce?: boolean;
  /**
   * Called at the end of each epoch (1-based) with its log record before it is written: it may add fields; a
   * returned reason ends the run there as a finished one (final.pth, the end record with `stopReason`).
   */
  onEpochEnd?: (epoch: number, record: Record<string, unknown>) => string | null;
}

/** The run stopped because its loss or weights became NaN or infinite (a `diverged` record is in the log). */
export class DivergedError extends Error {
  constructor(readonly iteration: number, readonly what: string, message: string) {
    super(message);
    this.name = 'DivergedError';
  }
}

export interface TrainResult {
  state: TrainingState;
  lastEval?: EvalResult;
  emaEval?: EvalResult;
  /** Stopped by a signal (latest.pth holds where). */
  interrupted: boolean;
  /** The signal that stopped the run (exit with exitCodeFor(it)), or null. */
  stopSignal: StopSignal | null;
  trainImgPerSec: number;
  peakRssBytes: number;
  seconds: number;
  /** Why `onEpochEnd` ended the run before its last epoch, or absent. */
  stopReason?: string;
}

/**
 * A run's files (latest.pth, best.pth, final.pth) and its divergence record: nothing non-finite is ever
 * written (a DivergedError after a `diverged` log record), and periodic saves are timed here.
 */
class RunFiles {
  readonly latestPath: string;
  /** The iteration latest.pth holds, or null. */
  savedIteration: number | null = null;
  /** The learning rate of the last step (for the divergence record). */
  lastLr: number | null = null;
  #lastSaveAt = performance.now();

  constructor(
    private readonly setup: TrainerSetup,
    private readonly o: TrainerOptions,
    private readonly log: JsonlLog | null,
    private readonly ema: ModelEma | null,
    /** Rank 0 writes; the other ranks only keep the timing. */
    private readonly main: boolean,
  ) {
    this.latestPath = path.join(o.out, 'latest.pth');
  }

  diverged(state: TrainingState, what: string, loss: number | null): DivergedError {
    // JSON has no NaN or Infinity: a non-finite loss is recorded as its name.
    this.log?.write('diverged', { ...state, what, loss: loss === null || Number.isFinite(loss) ? loss : String(loss), lr: this.lastLr, lastSaved: this.savedIteration });
    const kept = this.savedIteration === null ? 'no checkpoint was written' : `${this.latestPath} keeps iteration ${this.savedIteration}, the last finite state`;
    return new DivergedError(state.iteration, what,
      `training diverged at iteration ${state.iteration}${this.lastLr === null ? '' : ` (lr ${this.lastLr})`}: ${what}; ${kept}. ` +
        `Lower the learning rate${this.savedIteration === null ? '' : ' and resume (repopt train ... --resume --override lr --lr LOWER)'}`);
  }

  /** Refuses weights with NaN/inf: such a checkpoint would only resume into the same divergence. */
  private checkFinite(state: TrainingState, tensors: Iterable<[string, Tensor]>): void {
    const bad = torch.tidy(() => findNonFinite(tensors));
    if (bad !== null) throw this.diverged(state, `${bad.split(' ')[0]} holds ${bad.includes('NaN') ? 'NaN' : 'inf'} (not saved)`, null);
  }

  /** latest.pth: everything a resume needs (the epoch's running sums when mid-epoch). */
  saveLatest(state: TrainingState, sums: EpochSums): void {
    if (this.main) {
      const { model, optimizer } = this.setup;
      const ema = this.ema;
      torch.tidy(() => {
        const opt = optimizer.stateDict();
        this.checkFinite(state, [...model.stateDict(), ...(ema ? [...ema.shadow].map(([k, t]): [string, Tensor] => [`ema.${k}`, t]) : []),
          ...[...opt.state].flatMap(([n, st]) => [...st].map(([k, t]): [string, Tensor] => [`optimizer.${n}.${k}`, t]))]);
        saveTrainingCheckpoint(this.latestPath, { model, optimizer, ema: ema?.shadow ?? null, state, epochSums: state.nextBatch > 0 ? sums : null, config: this.o.config, meta: { saved: new Date().toISOString() } });
      });
      this.savedIteration = state.iteration;
    }
    this.#lastSaveAt = performance.now();
  }

  /** best.pth / final.pth: plain weights, checked as latest.pth (rank 0 only). */
  saveWeights(state: TrainingState, file: string, weights: () => StateDict): void {
    if (!this.main) return;
    torch.tidy(() => {
      const w = weights();
      this.checkFinite(state, w);
      saveStateDict(path.join(this.o.out, file), w);
    });
  }

  /** Whether `saveEvery` steps or `saveEveryMinutes` have passed. */
  periodicSaveDue(iteration: number): boolean {
    const o = this.o;
    return (o.saveEvery !== undefined && iteration % o.saveEvery === 0) ||
      (o.saveEveryMinutes !== undefined && performance.now() - this.#lastSaveAt >= o.saveEveryMinutes * 60_000);
  }
}

/** One optimizer step on a batch: forward, loss (+ regularizer), backward, [average over ranks], [clip], step. Returns this rank's loss and hits. */
async function optimizerStep(setup: TrainerSetup, x: Tensor, y: Tensor, o: TrainerOptions, ema: ModelEma | null): Promise<[number, number]> {
  const { model, optimizer } = setup;
  const dist = o.dist;
  const [loss, hits] = torch.tidy(() => {
    try {
      const logits = model.forward(x);
      const l = F.crossEntropy(logits, y, { labelSmoothing: o.labelSmoothing });
      (setup.regularizer ? l.add(setup.regularizer()) : l).backward(); // grads are None here: cleared after every step below
      return [l.item(), torch.noGrad(() => logits.argmax(1).eq(y).sum().item())];
    } catch (e) {
      throw dist ? dist.group.explain(e) : e; // SyncBatchNorm's collectives run inside forward and backward
    }
  });
  // Averaged before the optimizer: Grad Mults and clipping (by the CSLA model's norm) act on the mean
  // (with overlapAllreduce the buckets were launched during backward; this waits for them).
  if (dist) await dist.averageGradients(model);
  torch.tidy(() => {
    if (o.clipNorm) {
      if (setup.cslaMults) clipGradNormCsla(model.namedParameters(), o.clipNorm, setup.cslaMults);
      else clipGradNorm(model.parameters(), o.clipNorm);
    }
    optimizer.step();
  });
  optimizer.zeroGrad(); // frees the gradients while the next batch loads and during evaluation
  ema?.update(model);
  return [loss, hits];
}

/**
 * The step boundary: lets signal handlers run and returns the stop decision. Data-parallel, one small
 * allreduce gives every rank the global loss and hits and the same decision (a signal seen by any rank),
 * so all leave at the same step; a signal arriving during this agreement counts at the next step.
 */
async function stepBoundary(dist: DataParallel | undefined, stop: { readonly signal: StopSignal | null }, loss: number, hits: number, n: number): Promise<{ loss: number; hits: number; n: number; stop: StopSignal | null }> {
  await turnEventLoop();
  if (!dist) return { loss, hits, n, stop: stop.signal };
  const seen = stop.signal;
  const [lossN, hitsAll, nAll, ints, terms] = await dist.sum([loss * n, hits, n, seen === 'SIGINT' ? 1 : 0, seen === 'SIGTERM' ? 1 : 0]);
  return { loss: lossN / nAll, hits: hitsAll, n: nAll, stop: terms > 0 ? 'SIGTERM' : ints > 0 ? 'SIGINT' : null };
}

/** The end of an epoch: the signal any rank saw (data-parallel: agreed over ranks). */
async function agreedSignal(dist: DataParallel | undefined, signal: StopSignal | null): Promise<StopSignal | null> {
  if (!dist) return signal;
  const [ints, terms] = await dist.sum([signal === 'SIGINT' ? 1 : 0, signal === 'SIGTERM' ? 1 : 0]);
  return terms > 0 ? 'SIGTERM' : ints > 0 ? 'SIGINT' : null;
}

const noSums = (): EpochSums => ({ loss: 0, correct: 0, seen: 0 });

export async function train(setup: TrainerSetup, loader: TrainLoader, testLoader: BatchSource | null, o: TrainerOptions): Promise<TrainResult> {
  for (const [k, v] of [['saveEvery', o.saveEvery], ['saveEveryMinutes', o.saveEveryMinutes]] as const) {
    if (v !== undefined && !(v > 0 && (k === 'saveEveryMinutes' || Number.isInteger(v)))) throw new Error(`train: ${k} must be a positive ${k === 'saveEvery' ? 'integer' : 'number'}, got ${v}`);
  }
  const { model, optimizer } = setup;
  const dist = o.dist;
  const main = dist?.isMain ?? true; // rank 0 logs, shows progress and writes files
  const quiet = o.quiet || !main;
  const label = o.label ?? 'train';
  fs.mkdirSync(o.out, { recursive: true });
  const log = main ? new JsonlLog(path.join(o.out, 'log.jsonl')) : null;
  const ema = o.emaDecay ? new ModelEma(model, o.emaDecay) : null;
  const files = new RunFiles(setup, o, log, ema, main);
  const perEpoch = loader.batchesPerEpoch;
  const schedule = { kind: o.schedule, baseLr: o.lr, totalIters: o.epochs * perEpoch, warmupIters: Math.round(o.warmupEpochs * perEpoch) };
  let state: TrainingState = { epoch: 0, nextBatch: 0, iteration: 0, bestAcc: 0 };
  // The current epoch's running sums (loss x images, hits, images): saved, so a mid-epoch resume reports the whole epoch.
  let sums = noSums();

  const stopScope = catchStopSignals({ notice: main ? 'saving a checkpoint at the next step boundary' : 'stopping with the other ranks' });
  let stopSignal: StopSignal | null = null;
  let stoppedEarly = false;
  let stopReason: string | null = null;
  let lastEval: EvalResult | undefined;
  let emaEval: EvalResult | undefined;
  let imgs = 0;
  let trainSeconds = 0;
  const t0 = performance.now();
  try {
    // 1. Resume: weights, optimizer state, EMA, position and the epoch's sums from latest.pth.
    if (o.resume && (o.checkpoint || fs.existsSync(files.latestPath))) {
      const ck = o.checkpoint ?? loadTrainingCheckpoint(files.latestPath);
      try {
        model.loadStateDict(ck.model);
        optimizer.loadStateDict(ck.optimizer);
        if (ema && ck.ema) ema.load(ck.ema);
      } finally {
        for (const t of [...ck.model.values(), ...(ck.ema?.values() ?? [])]) t.dispose();
        for (const s of ck.optimizer.state.values()) for (const t of s.values()) t.dispose();
      }
      state = ck.state;
      files.savedIteration = state.iteration;
      if (ck.epochSums && state.nextBatch > 0) sums = { ...ck.epochSums };
      log?.write('resume', { ...state, ...(log.repairedBytes ? { repairedLogBytes: log.repairedBytes } : {}), ...o.resumeNote });
      if (!quiet) process.stderr.write(`resuming from ${files.latestPath}: epoch ${state.epoch}, batch ${state.nextBatch}\n`);
    } else if (o.resume && !o.quiet) {
      process.stderr.write(`no checkpoint at ${files.latestPath}; starting fresh\n`);
    }
    // 2. Data-parallel start-up (DDP's sync: every rank trains from rank 0's weights and EMA).
    if (dist) {
      await dist.broadcastModule(model);
      if (ema) await dist.broadcastState(ema.shadow);
      if (o.syncBatchNorm) convertSyncBatchNorm(model, dist.group);
      if (o.overlapAllreduce) dist.overlapGradients(model);
    }
    if (state.iteration === 0) {
      // The Grad Mults in force (sum per kernel): the log shows that a RepOpt run really applied its scales.
      const gradMults = Object.fromEntries(torch.tidy(() => [...optimizer.gradMults].map(([n, m]) => [n, m.to('float64').sum().item()])));
      log?.write('start', { config: o.config, params: model.numParameters(), threads: torch.getNumThreads(), gradMults });
    }

    // 3. The epochs: steps, then the end-of-epoch evaluation, record and checkpoint.
    model.train();
    outer: for (let epoch = state.epoch; epoch < o.epochs; epoch++) {
      const progress = new Progress(`${label} epoch ${epoch + 1}/${o.epochs}`, perEpoch);
      if (!(epoch === state.epoch && state.nextBatch > 0)) sums = noSums();
      const seenBefore = sums.seen; // images of this epoch trained before a resume (not timed here)
      const epochStart = performance.now();
      let stepsThisEpoch = 0;
      for await (const { x, y, index } of loader.epoch(epoch, state.nextBatch)) {
        const lr = lrAt(schedule, state.iteration);
        optimizer.setLr(lr);
        files.lastLr = lr;
        const ts = performance.now();
        const [localLoss, localHits] = await optimizerStep(setup, x, y, o, ema);
        const localN = y.shape[0];
        x.dispose();
        y.dispose();
        torch.collectHandles(); // frees the step's handle bookkeeping before the next step allocates
        const { loss, hits, n, stop } = await stepBoundary(dist, stopScope, localLoss, localHits, localN);
        if (!Number.isFinite(loss)) throw files.diverged(state, `the loss became ${loss}`, loss);
        trainSeconds += (performance.now() - ts) / 1000;
        imgs += n;
        sums = { loss: sums.loss + loss * n, correct: sums.correct + hits, seen: sums.seen + n };
        stepsThisEpoch++;
        state = { ...state, epoch, nextBatch: index + 1, iteration: state.iteration + 1 };
        const rate = (sums.seen - seenBefore) / ((performance.now() - epochStart) / 1000);
        if (!quiet) {
          const remaining = (perEpoch - index - 1 + (o.epochs - epoch - 1) * perEpoch) * loader.batchSize * (dist?.worldSize ?? 1);
          progress.update(index + 1, { loss: sums.loss / sums.seen, acc: sums.correct / sums.seen, imgPerSec: rate, lr }, remaining / rate);
        }
        if (state.iteration % o.logEvery === 0) log?.write('step', { epoch, batch: index, iteration: state.iteration, loss, lr, imgPerSec: rate });
        // Stop (a signal, or maxSteps) or save periodically; the end of the epoch saves anyway.
        stopSignal = stop;
        if (stopSignal || (o.maxSteps !== undefined && state.iteration >= o.maxSteps)) {
          if (!quiet) progress.done();
          files.saveLatest(state, sums);
          log?.write('interrupt', { ...state, signal: stopSignal });
          stoppedEarly = true;
          break outer;
        }
        if (index + 1 < perEpoch && files.periodicSaveDue(state.iteration)) {
          files.saveLatest(state, sums);
          log?.write('checkpoint', { ...state });
        }
      }
      if (!quiet) progress.done();
      state = { ...state, epoch: epoch + 1, nextBatch: 0 };
      const record: Record<string, unknown> = {
        epoch: epoch + 1,
        iteration: state.iteration,
        trainLoss: sums.seen ? sums.loss / sums.seen : null,
        trainAcc: sums.seen ? sums.correct / sums.seen : null,
        imgPerSec: stepsThisEpoch ? (sums.seen - seenBefore) / ((performance.now() - epochStart) / 1000) : null,
        lr: lrAt(schedule, Math.max(0, state.iteration - 1)),
      };
      if (testLoader) {
        try {
          // Data-parallel: a signal takes effect after the evaluation (ranks agree on it at the epoch's end).
          const evalStop = dist ? undefined : stopScope;
          lastEval = await evaluateRanks(model, testLoader, dist, evalStop);
          if (ema) emaEval = await evaluateWeights(model, ema.shadow, testLoader, evalStop, dist);
        } catch (e) {
          if (!(e instanceof InterruptedError)) throw e;
          // Stopped while evaluating: keep the epoch's training; --resume evaluates it again.
          state = { ...state, epoch, nextBatch: perEpoch };
          files.saveLatest(state, sums);
          stopSignal = e.signal;
          log?.write('interrupt', { ...state, signal: stopSignal, during: 'evaluation' });
          stoppedEarly = true;
          break;
        }
        record.valTop1 = lastEval.top1;
        record.valTop5 = lastEval.top5;
        record.valLoss = lastEval.loss;
        if (emaEval) record.emaTop1 = emaEval.top1;
        const acc = Math.max(lastEval.top1, emaEval?.top1 ?? 0);
        if (acc > state.bestAcc) {
          state = { ...state, bestAcc: acc };
          const bestWeights = emaEval && emaEval.top1 > lastEval.top1 && ema ? ema.shadow : null;
          files.saveWeights(state, 'best.pth', () => bestWeights ?? model.stateDict());
          record.best = true;
        }
        if (!quiet) {
          process.stderr.write(
            `${label} epoch ${epoch + 1}: train loss ${(record.trainLoss as number)?.toFixed(4)} acc ${(((record.trainAcc as number) ?? 0) * 100).toFixed(2)}%, ` +
              `val top-1 ${(lastEval.top1 * 100).toFixed(2)}% top-5 ${(lastEval.top5 * 100).toFixed(2)}%${emaEval ? `, EMA top-1 ${(emaEval.top1 * 100).toFixed(2)}%` : ''}\n`,
          );
        }
      }
      stopReason = o.onEpochEnd?.(epoch + 1, record) ?? null;
      log?.write('epoch', record);
      sums = noSums();
      files.saveLatest(state, sums);
      stopSignal = await agreedSignal(dist, stopScope.signal);
      if (stopSignal) {
        log?.write('interrupt', { ...state, signal: stopSignal });
        stoppedEarly = true;
        break;
      }
      if (stopReason) break;
    }
    // 4. The end: final.pth and the end record (not after a stop: --resume continues).
    if (!stoppedEarly) {
      files.saveWeights(state, 'final.pth', () => model.stateDict());
      log?.write('end', {
        ...state,
        seconds: (performance.now() - t0) / 1000,
        trainImgPerSec: trainSeconds > 0 ? imgs / trainSeconds : 0,
        // Data-parallel: the share of the step time in collectives (rank 0's view).
        ...(dist ? { worldSize: dist.worldSize, commSeconds: dist.commSeconds, trainSeconds } : {}),
        peakRssBytes: process.resourceUsage().maxRSS * 1024,
        params: model.numParameters(),
        valTop1: lastEval?.top1 ?? null,
        emaTop1: emaEval?.top1 ?? null,
        ...(stopReason ? { stopReason } : {}),
      });
    }
    // No rank reports done before rank 0's files are written.
    if (dist) await dist.barrier();
  } finally {
    if (o.syncBatchNorm) revertSyncBatchNorm(model);
    dist?.stopOverlap();
    stopScope.close();
    log?.close();
    ema?.dispose();
  }
  return {
    state,
    lastEval,
    emaEval,
    interrupted: stopSignal !== null,
    stopSignal,
    trainImgPerSec: trainSeconds > 0 ? imgs / trainSeconds : 0,
    peakRssBytes: process.resourceUsage().maxRSS * 1024,
    seconds: (performance.now() - t0) / 1000,
    ...(stopReason && !stoppedEarly ? { stopReason } : {}),
  };
}

/** Evaluation over every rank's shard: sums reduced over ranks (the metrics of the whole set). */
async function evaluateRanks(model: Module, loader: BatchSource, dist: DataParallel | undefined, stop?: { readonly signal: StopSignal | null }): Promise<EvalResult> {
  if (!dist) return evaluate(model, loader, { stop });
  const r = await evaluate(model, loader, { allowEmpty: true });
  const [top1, top5, loss, count] = await dist.sum([r.top1 * r.count, r.top5 * r.count, r.loss * r.count, r.count]);
  if (count === 0) throw new Error('evaluation set is empty');
  return { top1: top1 / count, top5: top5 / count, loss: loss / count, count };
}

/** Evaluates `model` with other weights swapped in temporarily (e.g. the EMA). */
async function evaluateWeights(model: Module, weights: StateDict, loader: BatchSource, stop?: { readonly signal: StopSignal | null }, dist?: DataParallel): Promise<EvalResult> {
  const saved = torch.tidy(() => new Map([...model.stateDict()].map(([k, t]) => [k, torch.keep(t.clone())])));
  try {
    model.loadStateDict(weights);
    return await evaluateRanks(model, loader, dist, stop);
  } finally {
    model.loadStateDict(saved);
    for (const t of saved.values()) t.dispose();
  }
}
