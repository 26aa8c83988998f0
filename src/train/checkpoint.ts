/**
 * Training checkpoints: self-describing PyTorch zip files (`torch.load`-able)
 * written atomically. `latest.pth` holds everything needed to continue exactly:
 *   { format: 'repopt-checkpoint', version, model: state dict, optimizer: {state, param_groups, step},
 *     ema: state dict | None, epoch (completed), next_batch, iteration, best_acc, config, meta }
 * Grad Mults are not stored: they are rebuilt from the same scales on resume.
 */
import fs from 'node:fs';
import * as torch from '../torch/index.js';
import type { Tensor } from '../torch/index.js';
import { loadPth, savePth, extractStateDict } from '../io/pth.js';
import { PyFloat, PyOrderedDict, type PyValue } from '../io/pickle.js';
import type { Module, StateDict } from '../nn/index.js';
import type { Optimizer, OptimizerStateDict } from '../optim/index.js';

export const CHECKPOINT_FORMAT = 'repopt-checkpoint';
export const CHECKPOINT_VERSION = 1;

export interface TrainingState {
  epoch: number;
  nextBatch: number;
  iteration: number;
  bestAcc: number;
}

function stateDictValue(sd: StateDict): PyOrderedDict<PyValue> {
  const od = new PyOrderedDict<PyValue>();
  for (const [k, t] of sd) od.set(k, t);
  return od;
}

function toPy(v: unknown): PyValue {
  if (v === null || v === undefined) return null;
  if (typeof v === 'number') return Number.isInteger(v) ? v : new PyFloat(v);
  if (typeof v === 'string' || typeof v === 'boolean') return v;
  if (v instanceof torch.Tensor) return v;
  if (Array.isArray(v)) return v.map(toPy);
  if (v instanceof Map) return new Map([...v].map(([k, x]) => [k as PyValue, toPy(x)]));
  if (typeof v === 'object') return new Map(Object.entries(v as object).map(([k, x]) => [k, toPy(x)]));
  return String(v);
}

function fromPy(v: PyValue): unknown {
  if (v instanceof PyFloat) return v.value;
  if (v instanceof Map) return Object.fromEntries([...v].map(([k, x]) => [String(k), fromPy(x as PyValue)]));
  if (Array.isArray(v)) return v.map((x) => fromPy(x as PyValue));
  return v;
}

export function optimizerToPy<H>(sd: OptimizerStateDict<H>): PyValue {
  const state = new Map<PyValue, PyValue>();
  for (const [name, s] of sd.state) state.set(name, new Map([...s].map(([k, t]) => [k as PyValue, t as PyValue])));
  return new Map<PyValue, PyValue>([
    ['state', state],
    ['param_groups', sd.groups.map((g) => toPy({ names: g.names, ...g.hyper }))],
    ['step', sd.step],
  ]);
}

export function optimizerFromPy<H>(v: PyValue, label: string): OptimizerStateDict<H> {
  if (!(v instanceof Map)) throw new Error(`${label}: optimizer state is not a dict`);
  const stateV = v.get('state');
  const groupsV = v.get('param_groups');
  if (!(stateV instanceof Map) || !Array.isArray(groupsV)) throw new Error(`${label}: optimizer state lacks 'state' or 'param_groups'`);
  const state = new Map<string, Map<string, Tensor>>();
  for (const [name, s] of stateV) {
    if (!(s instanceof Map)) throw new Error(`${label}: optimizer state of '${String(name)}' is not a dict`);
    state.set(String(name), new Map([...s].map(([k, t]) => {
      if (!(t instanceof torch.Tensor)) throw new Error(`${label}: optimizer state '${String(name)}.${String(k)}' is not a tensor`);
      return [String(k), t];
    })));
  }
  const groups = groupsV.map((g) => {
    const { names, ...hyper } = fromPy(g as PyValue) as { names: string[] } & Record<string, unknown>;
    return { names, hyper: hyper as H };
  });
  return { state, groups, step: Number(v.get('step') ?? 0) };
}

/** The current epoch's running training sums, so a mid-epoch resume reports the whole epoch. */
export interface EpochSums {
  loss: number;
  correct: number;
  seen: number;
}

/**
 * The first tensor holding NaN or ±inf (e.g. a BatchNorm running_var after divergence), as
 * "name (NaN|inf)", or null when every floating tensor is finite.
 */
export function findNonFinite(tensors: Iterable<[string, Tensor]>): string | null {
  for (const [name, t] of tensors) {
    if (!torch.isFloating(t.dtype) || t.numel === 0) continue;
    // max |x| is NaN when any element is NaN, inf when any is infinite: one reduction per tensor.
    const m = torch.tidy(() => t.detach().abs().max().to('float64').item());
    if (!Number.isFinite(m)) return `${name} (${Number.isNaN(m) ? 'NaN' : 'inf'})`;
  }
  return null;
}

/** A checkpoint or state dict that holds NaN or inf: never written, and refused when read for use. */
export class NonFiniteError extends Error {
  constructor(readonly file: string, readonly tensor: string, message: string) {
    super(message);
    this.name = 'NonFiniteError';
  }
}

export interface SaveOptions {
  model: Module;
  optimizer: Optimizer<{ lr: number }>;
  ema?: StateDict | null;
  state: TrainingState;
  epochSums?: EpochSums | null;
  config: Record<string, unknown>;
  meta?: Record<string, unknown>;
}

export function saveTrainingCheckpoint(path: string, o: SaveOptions): void {
  torch.tidy(() => {
    const value = new Map<PyValue, PyValue>([
      ['format', CHECKPOINT_FORMAT],
      ['version', CHECKPOINT_VERSION],
      ['model', stateDictValue(o.model.stateDict())],
      ['optimizer', optimizerToPy(o.optimizer.stateDict())],
      ['ema', o.ema ? stateDictValue(o.ema) : null],
      ['epoch', o.state.epoch],
      ['next_batch', o.state.nextBatch],
      ['iteration', o.state.iteration],
      ['best_acc', new PyFloat(o.state.bestAcc)],
      ['epoch_sums', o.epochSums ? new Map<PyValue, PyValue>([['loss', new PyFloat(o.epochSums.loss)], ['correct', o.epochSums.correct], ['seen', o.epochSums.seen]]) : null],
      ['config', toPy(o.config)],
      ['meta', toPy(o.meta ?? {})],
    ]);
    savePth(path, value);
  });
}

export interface LoadedCheckpoint {
  model: StateDict;
  optimizer: OptimizerStateDict<{ lr: number }>;
  ema: StateDict | null;
  state: TrainingState;
  /** Null in checkpoints saved at an epoch's end, or by repopt before the sums were kept. */
  epochSums: EpochSums | null;
  config: Record<string, unknown>;
  meta: Record<string, unknown>;
}

export function loadTrainingCheckpoint(path: string): LoadedCheckpoint {
  if (!fs.existsSync(path)) throw new Error(`${path}: no such checkpoint`);
  const v = loadPth(path);
  if (!(v instanceof Map) || v.get('format') !== CHECKPOINT_FORMAT) {
    throw new Error(`${path}: not a repopt training checkpoint (no format '${CHECKPOINT_FORMAT}'); a plain state dict is loaded as a run's initial weights (init) instead`);
  }
  const version = Number(v.get('version'));
  if (version > CHECKPOINT_VERSION) throw new Error(`${path}: checkpoint version ${version} is newer than this repopt understands (${CHECKPOINT_VERSION})`);
  const num = (k: string) => {
    const x = v.get(k);
    const n = x instanceof PyFloat ? x.value : Number(x);
    if (!Number.isFinite(n)) throw new Error(`${path}: checkpoint field '${k}' is missing or not a number`);
    return n;
  };
  const emaV = v.get('ema');
  const sums = fromPy((v.get('epoch_sums') ?? null) as PyValue) as Partial<EpochSums> | null;
  return {
    model: extractStateDict(v.get('model') as PyValue, `${path} (model)`),
    optimizer: optimizerFromPy(v.get('optimizer') as PyValue, path),
    ema: emaV ? extractStateDict(emaV as PyValue, `${path} (ema)`) : null,
    state: { epoch: num('epoch'), nextBatch: num('next_batch'), iteration: num('iteration'), bestAcc: num('best_acc') },
    epochSums: sums && typeof sums.loss === 'number' ? { loss: sums.loss, correct: Number(sums.correct), seen: Number(sums.seen) } : null,
    config: (fromPy(v.get('config') as PyValue) ?? {}) as Record<string, unknown>,
    meta: (fromPy(v.get('meta') as PyValue) ?? {}) as Record<string, unknown>,
  };
}

/** Saves a model's plain state dict (PyTorch's `torch.save(model.state_dict())` format). */
export function saveStateDict(path: string, sd: StateDict): void {
  torch.tidy(() => savePth(path, stateDictValue(sd)));
}

/**
 * Loads a plain state dict, `{"model": ...}`, or a repopt checkpoint's model. Weights holding NaN or inf
 * (a diverged run) are refused with a NonFiniteError unless `allowNonFinite`: evaluating, deploying or
 * exporting them would only report NaN.
 */
export function loadStateDictFile(path: string, o: { allowNonFinite?: boolean } = {}): StateDict {
  if (!fs.existsSync(path)) throw new Error(`${path}: no such file`);
  const sd = extractStateDict(loadPth(path), path);
  const bad = o.allowNonFinite ? null : findNonFinite(sd);
  if (bad !== null) {
    for (const t of sd.values()) t.dispose();
    throw new NonFiniteError(path, bad, `${path}: the weights hold non-finite values (${bad}): the run that saved them diverged; use an earlier checkpoint or retrain with a lower learning rate`);
  }
  return sd;
}

/**
 * A state dict that does not fit the model, in the user's terms: the file, the model, and a few of the keys
 * (a wrong architecture lists hundreds).
 */
export function notFitting(file: string, label: string, e: unknown): Error {
  const msg = (e as Error).message.replace(/^loadStateDict: /, '').replace(/((?:missing|unexpected) keys): ([^;]*)/g, (_m, what: string, list: string) => {
    const keys = list.split(', ');
    return `${keys.length} ${what}: ${keys.slice(0, 6).join(', ')}${keys.length > 6 ? ', ...' : ''}`;
  });
  return new Error(`${file}: does not fit the model ${label} (a checkpoint of another architecture or mode?): ${msg}`);
}
