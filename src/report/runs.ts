/**
 * Reading what runs already write (log.jsonl, config.json, scales.pth / scales.json,
 * final.pth, quant-demo.json) into plain data for the report. Nothing here trains
 * or evaluates; checkpoints are only loaded to compute the deployed weights'
 * statistics (the paper's Table 11) with src/deploy's own functions.
 */
import fs from 'node:fs';
import path from 'node:path';
import { readJsonlCounted } from '../train/log.js';
import type { ModelConfig, RunMode } from '../train/setup.js';
import { loadStateDictFile } from '../train/checkpoint.js';
import type { LayerWeightStats } from '../deploy/quant.js';
import { loadForDeploy, weightReport, type QuantReport } from '../deploy/study.js';
import { isModelFileLoaded, loadModelFile } from '../models/csla-family.js';

/** The subset of a run's config.json the report reads (train.ts writes more). */
export interface RunConfig {
  command?: 'search' | 'train';
  mode?: RunMode;
  data?: string;
  model?: ModelConfig;
  optimizer?: string;
  epochs?: number;
  batchSize?: number;
  lr?: number;
  momentum?: number;
  nesterov?: boolean;
  weightDecay?: number;
  schedule?: string;
  warmupEpochs?: number;
  labelSmoothing?: number;
  ema?: number | null;
  clip?: number | null;
  seed?: number;
  scales?: string | null;
  init?: string | null;
  augment?: boolean;
  shuffle?: boolean;
  [key: string]: unknown;
}

/** Logged steps (every --log-every iterations). */
export interface StepSeries {
  iteration: number[];
  /** Seconds since the run's start record (wall-clock, pauses between resumes included). */
  seconds: number[];
  loss: number[];
  lr: number[];
  imgPerSec: number[];
}

/** One point per finished epoch. */
export interface EpochSeries {
  epoch: number[];
  iteration: number[];
  seconds: number[];
  trainLoss: (number | null)[];
  trainAcc: (number | null)[];
  valTop1: (number | null)[];
  valLoss: (number | null)[];
  lr: (number | null)[];
  imgPerSec: (number | null)[];
  /** Hyper-Search: median and max over scale tensors of their relative change in the epoch, and each tensor's mean (src/train/drift.ts). */
  driftMedian: (number | null)[];
  driftMax: (number | null)[];
  scaleMeans: (Record<string, number> | null)[];
}

export interface RunEnd {
  seconds: number;
  trainImgPerSec: number;
  peakRssBytes: number;
  params: number;
  valTop1: number | null;
  /** Why the run ended before its last epoch (a settled search), or null. */
  stopReason: string | null;
}

/** The searched scales of one layer and branch: their distribution over channels. */
export interface ScaleStats {
  key: string;
  layer: string;
  branch: string;
  count: number;
  min: number;
  q25: number | null;
  median: number | null;
  q75: number | null;
  max: number;
  mean: number;
}

export interface RunData {
  dir: string;
  config: RunConfig;
  /** A short name for the kind of run: RepOpt-VGG, RepVGG, plain VGG, Hyper-Search, ... */
  arm: string;
  seed: number;
  steps: StepSeries;
  epochs: EpochSeries;
  end: RunEnd | null;
  resumes: number;
  /** The run stopped diverged (and was not resumed since), or null. */
  diverged: RunDivergence | null;
  threads: number | null;
  started: string | null;
  /** Lines of log.jsonl that did not parse (e.g. cut by a crash or a full disk): skipped. */
  unreadableLines: number;
  scales: ScaleStats[] | null;
  /** Statistics of the deployed kernels of final.pth (null when there is no final checkpoint). */
  weights: LayerWeightStats[] | null;
  /** Parameters of the deployed (plain conv3x3 + bias) network. */
  deployedParams: number | null;
}

/** Quantization results written by `repopt quant-demo` (arm name -> study). */
export interface QuantStudy {
  file: string;
  arms: Record<string, QuantReport>;
}

const num = (v: unknown): number | null => (typeof v === 'number' && Number.isFinite(v) ? v : null);

/** The arm's display name from the run's configuration. */
export function armName(config: RunConfig): string {
  if (config.command === 'search' || config.mode === 'hs') return 'Hyper-Search';
  if (typeof config.arm === 'string' && config.arm) return config.arm;
  if (config.mode === 'repvgg') return 'RepVGG';
  if (config.mode === 'qarepvgg') return 'QARepVGG';
  if (config.mode === 'plain') return 'plain VGG';
  if (config.mode === 'target') return config.scales ? 'RepOpt-VGG' : 'target (no scales)';
  return config.mode ?? 'run';
}

/**
 * The run folders under the given paths: a folder with a log.jsonl is a run; any other folder is searched
 * (three levels deep) for runs, in name order, so `repopt report runs/demo` takes every run of the demo.
 */
export function findRunDirs(paths: string[]): string[] {
  const out: string[] = [];
  const visit = (dir: string, depth: number) => {
    if (fs.existsSync(path.join(dir, 'log.jsonl'))) {
      out.push(dir);
      return;
    }
    if (depth === 0) return;
    const subs = fs.readdirSync(dir, { withFileTypes: true }).filter((e) => e.isDirectory()).map((e) => e.name).sort(naturalCompare);
    for (const s of subs) visit(path.join(dir, s), depth - 1);
  };
  for (const p of paths) {
    if (!fs.existsSync(p)) throw new Error(`${p}: no such folder`);
    if (!fs.statSync(p).isDirectory()) throw new Error(`${p}: not a folder (give run folders, each with a log.jsonl)`);
    const before = out.length;
    visit(p, 3);
    if (out.length === before) throw new Error(`${p}: no runs in it (a run folder holds a log.jsonl)`);
  }
  return [...new Set(out.map((d) => path.resolve(d)))];
}

/** "seed-2" < "seed-10". */
function naturalCompare(a: string, b: string): number {
  return a.localeCompare(b, 'en', { numeric: true });
}

/** quant-demo.json files in the given folders or their parents (the quant-demo's output folder). */
export function findQuantStudies(paths: string[]): QuantStudy[] {
  const files = new Set<string>();
  for (const p of paths) {
    for (const dir of [p, path.dirname(path.resolve(p))]) {
      const f = path.resolve(dir, 'quant-demo.json');
      if (fs.existsSync(f)) files.add(f);
    }
  }
  return [...files].map((file) => {
    let arms: unknown;
    try {
      arms = JSON.parse(fs.readFileSync(file, 'utf8'));
    } catch (e) {
      throw new Error(`${file}: not valid JSON (${(e as Error).message})`);
    }
    if (!arms || typeof arms !== 'object' || Object.values(arms).some((r) => !r || typeof r !== 'object' || !Array.isArray((r as QuantReport).rows))) {
      throw new Error(`${file}: not a quant-demo result (expected {arm: {fp32Deployed, rows: [...], weights: [...]}})`);
    }
    return { file, arms: arms as Record<string, QuantReport> };
  });
}

function quantile(sorted: number[], q: number): number {
  const pos = (sorted.length - 1) * q;
  const lo = Math.floor(pos);
  const hi = Math.ceil(pos);
  return sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo);
}

/** `stage1.0.scale_conv.weight` -> layer `stage1.0`, branch `conv`. */
export function splitScaleKey(key: string): { layer: string; branch: string } {
  const m = /^(.*?)\.?scale_([A-Za-z0-9]+)(?:\.weight)?$/.exec(key);
  return m ? { layer: m[1] || key, branch: m[2] } : { layer: key.replace(/\.weight$/, ''), branch: 'scale' };
}

export function scaleStatsOf(key: string, values: ArrayLike<number>): ScaleStats {
  const v = Array.from(values).sort((a, b) => a - b);
  if (v.length === 0) throw new Error(`scale ${key} is empty`);
  return {
    key,
    ...splitScaleKey(key),
    count: v.length,
    min: v[0],
    q25: quantile(v, 0.25),
    median: quantile(v, 0.5),
    q75: quantile(v, 0.75),
    max: v[v.length - 1],
    mean: v.reduce((a, b) => a + b, 0) / v.length,
  };
}

/** The searched scales: every value from scales.pth, else the min/mean/max summary in scales.json. */
function readScales(dir: string): ScaleStats[] | null {
  const pth = path.join(dir, 'scales.pth');
  if (fs.existsSync(pth)) {
    const sd = loadStateDictFile(pth);
    try {
      return [...sd].map(([key, t]) => scaleStatsOf(key, t.toArray()));
    } finally {
      for (const t of sd.values()) t.dispose();
    }
  }
  const json = path.join(dir, 'scales.json');
  if (fs.existsSync(json)) {
    const s = JSON.parse(fs.readFileSync(json, 'utf8')) as { scales?: { key: string; shape: number[]; min: number; mean: number; max: number }[] };
    if (!Array.isArray(s.scales)) throw new Error(`${json}: no scales list`);
    return s.scales.map((r) => ({ ...r, ...splitScaleKey(r.key), count: r.shape.reduce((a, b) => a * b, 1), q25: null, median: null, q75: null }));
  }
  return null;
}

/** Deployed-weight statistics and deployed parameter count of a run's final.pth (any model family). */
function readWeights(dir: string, config: RunConfig): { weights: LayerWeightStats[]; deployedParams: number } | null {
  const file = path.join(dir, 'final.pth');
  if (!fs.existsSync(file) || !config.model) return null;
  const { arch, blocks, widths, strides, file: netFile } = config.model;
  // A network file is imported by loadRunModels first; a run whose file is gone has no weight statistics.
  if (netFile !== undefined && !isModelFileLoaded(netFile)) return null;
  const m = loadForDeploy({ checkpoint: file, model: { arch, blocks, widths, strides, file: netFile } });
  try {
    return { weights: weightReport(m).deployed, deployedParams: m.deployed.numParameters() };
  } finally {
    m.trained?.dispose();
    m.deployed.dispose();
  }
}

/** Parses a run's log.jsonl records into series (exported for tests and tools). */
/** A run that stopped because its loss or weights became NaN/inf (the trainer's `diverged` record). */
export interface RunDivergence {
  iteration: number;
  what: string;
  lr: number | null;
  /** The iteration latest.pth keeps (the last finite state), or null. */
  lastSaved: number | null;
}

export function seriesOf(records: Record<string, unknown>[]): { steps: StepSeries; epochs: EpochSeries; end: RunEnd | null; resumes: number; threads: number | null; started: string | null; diverged: RunDivergence | null } {
  const steps: StepSeries = { iteration: [], seconds: [], loss: [], lr: [], imgPerSec: [] };
  const epochs: EpochSeries = { epoch: [], iteration: [], seconds: [], trainLoss: [], trainAcc: [], valTop1: [], valLoss: [], lr: [], imgPerSec: [], driftMedian: [], driftMax: [], scaleMeans: [] };
  let end: RunEnd | null = null;
  let resumes = 0;
  let threads: number | null = null;
  let diverged: RunDivergence | null = null;
  const startRecord = records.find((r) => r.type === 'start');
  const first = records.find((r) => typeof r.time === 'string');
  const t0 = Date.parse(String((startRecord ?? first)?.time ?? ''));
  const secondsOf = (r: Record<string, unknown>) => (Number.isFinite(t0) ? (Date.parse(String(r.time)) - t0) / 1000 : NaN);
  for (const r of records) {
    if (r.type === 'start') threads = num(r.threads);
    else if (r.type === 'resume') {
      resumes++;
      diverged = null; // resumed (e.g. --override lr): the divergence is behind it unless it recurs
    } else if (r.type === 'diverged') {
      diverged = { iteration: num(r.iteration) ?? NaN, what: String(r.what ?? 'diverged'), lr: num(r.lr), lastSaved: num(r.lastSaved) };
    }
    else if (r.type === 'step') {
      const it = num(r.iteration);
      const loss = num(r.loss);
      if (it === null || loss === null) continue;
      // A resumed run repeats no iteration: it continues from the last checkpoint, so drop logged steps the resume replays.
      while (steps.iteration.length && steps.iteration[steps.iteration.length - 1] >= it) {
        for (const k of Object.keys(steps) as (keyof StepSeries)[]) steps[k].pop();
      }
      steps.iteration.push(it);
      steps.seconds.push(secondsOf(r));
      steps.loss.push(loss);
      steps.lr.push(num(r.lr) ?? NaN);
      steps.imgPerSec.push(num(r.imgPerSec) ?? NaN);
    } else if (r.type === 'epoch') {
      const ep = num(r.epoch);
      if (ep === null) continue;
      epochs.epoch.push(ep);
      epochs.iteration.push(num(r.iteration) ?? NaN);
      epochs.seconds.push(secondsOf(r));
      epochs.trainLoss.push(num(r.trainLoss));
      epochs.trainAcc.push(num(r.trainAcc));
      epochs.valTop1.push(num(r.valTop1));
      epochs.valLoss.push(num(r.valLoss));
      epochs.lr.push(num(r.lr));
      epochs.imgPerSec.push(num(r.imgPerSec));
      const drift = (r.scaleDrift ?? null) as { median?: unknown; max?: unknown } | null;
      epochs.driftMedian.push(num(drift?.median));
      epochs.driftMax.push(num(drift?.max));
      epochs.scaleMeans.push(r.scaleMeans && typeof r.scaleMeans === 'object' ? (r.scaleMeans as Record<string, number>) : null);
    } else if (r.type === 'end') {
      end = {
        seconds: num(r.seconds) ?? NaN,
        trainImgPerSec: num(r.trainImgPerSec) ?? NaN,
        peakRssBytes: num(r.peakRssBytes) ?? NaN,
        params: num(r.params) ?? NaN,
        valTop1: num(r.valTop1),
        stopReason: typeof r.stopReason === 'string' ? r.stopReason : null,
      };
    }
  }
  return { steps, epochs, end, resumes, threads, started: startRecord ? String(startRecord.time) : null, diverged };
}

/**
 * Imports the network files (`--model FILE`) of the runs under `paths`, so that their final.pth can be
 * deployed for the weight statistics; a file that no longer loads is reported and its runs go without.
 */
export async function loadRunModels(paths: string[], log: (line: string) => void = () => {}): Promise<void> {
  for (const dir of findRunDirs(paths)) {
    const cfgFile = path.join(dir, 'config.json');
    if (!fs.existsSync(cfgFile)) continue;
    const file = (JSON.parse(fs.readFileSync(cfgFile, 'utf8')) as RunConfig).model?.file;
    if (file === undefined) continue;
    try {
      await loadModelFile(file);
    } catch (e) {
      log(`${dir}: its network file does not load, no weight statistics (${(e as Error).message})`);
    }
  }
}

export interface LoadRunOptions {
  /** Load final.pth for the deployed-weight statistics (default true; needs the native addon). */
  weights?: boolean;
}

/** Everything the report shows about one run folder. */
export function loadRun(dir: string, o: LoadRunOptions = {}): RunData {
  const logFile = path.join(dir, 'log.jsonl');
  if (!fs.existsSync(logFile)) throw new Error(`${dir}: no log.jsonl (not a run folder)`);
  let records: Record<string, unknown>[];
  let unreadableLines: number;
  try {
    ({ records, unreadable: unreadableLines } = readJsonlCounted(logFile));
  } catch (e) {
    throw new Error(`${logFile}: ${(e as Error).message}`);
  }
  // Unreadable lines are skipped (a cut last line); a log with nothing readable is not a run's.
  if (!records.length && unreadableLines) throw new Error(`${logFile}: no readable JSON record (${unreadableLines} unreadable line${unreadableLines === 1 ? '' : 's'})`);
  const cfgFile = path.join(dir, 'config.json');
  const startConfig = records.find((r) => r.type === 'start')?.config as RunConfig | undefined;
  const config: RunConfig = fs.existsSync(cfgFile) ? (JSON.parse(fs.readFileSync(cfgFile, 'utf8')) as RunConfig) : (startConfig ?? {});
  const s = seriesOf(records);
  const w = o.weights === false ? null : readWeights(dir, config);
  return {
    dir,
    config,
    arm: armName(config),
    seed: config.seed ?? 0,
    ...s,
    unreadableLines,
    scales: readScales(dir),
    weights: w?.weights ?? null,
    deployedParams: w?.deployedParams ?? null,
  };
}
