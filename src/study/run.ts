/**
 * `runStudy` (`repopt study`, issue 25): where does RepOpt-VGG's structural prior pay off? Plain VGG,
 * RepVGG, QARepVGG and RepOpt-VGG (from searched and from initial scales) at two depths, several seeds
 * each, on real data; then INT8 / low-bit post-training quantization of every run, the search budget,
 * a side-by-side speed benchmark per arm, and a verdict per comparison (study.json, summary.md,
 * report.html). Resumable: a finished run is never trained again, an interrupted one continues.
 */
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { openDataset } from '../data/dataset.js';
import { repOptVggFamily } from '../models/families.js';
import { runChildStage } from '../train/interrupt.js';
import * as torch from '../torch/index.js';
import { readJsonl } from '../train/log.js';
import { writeFileAtomic } from '../io/durable.js';
import { benchChild, type BenchMode } from '../train/bench.js';
import { quantizeStudy } from '../deploy/study.js';
import { convLayers, planRuns, recipeArgs, seedDir, type PlannedRun, type StudyOptions } from './plan.js';
import { budgetCurve, summarizeArms, verdicts, type ArmSummary, type BudgetPoint, type RunResult, type Verdict } from './results.js';
import { renderStudyReport, studySummary } from './report.js';

const ARM_PROCESS = path.join(path.dirname(fileURLToPath(import.meta.url)), 'arm-process.js');

/** Whether a run finished: its final checkpoint (and, for a search, its scales) exist. */
export function runDone(r: PlannedRun): boolean {
  return fs.existsSync(path.join(r.dir, 'final.pth')) && (!r.arm.startsWith('search') || fs.existsSync(path.join(r.dir, 'scales.pth')));
}

/** The paper's initial constant scales of a depth's hs model (what a search starts from), for the no-search arm. */
function writeInitialScales(o: StudyOptions, r: PlannedRun, file: string): void {
  const ds = openDataset(o.data, 'train');
  const m = r.options.model as { blocks: number[]; widths: number[]; strides: number[] };
  const spec = { ...m, inChannels: ds.channels, numClasses: ds.numClasses };
  const family = repOptVggFamily;
  const model = family.create(spec, 'hs');
  try {
    const scales = family.extractScales(model);
    try {
      fs.mkdirSync(path.dirname(file), { recursive: true });
      family.saveScales(file, scales, model, family.label(spec));
    } finally {
      for (const t of scales.values()) t.dispose();
    }
  } finally {
    model.dispose();
  }
}

/** Runs one training run in a child process (runChildStage); its output lines go to `log` with the run's key in front. */
function trainInChild(r: PlannedRun, resume: boolean, log: (l: string) => void): Promise<void> {
  const options = { ...r.options, out: r.dir, resume, quiet: true };
  return runChildStage([ARM_PROCESS, JSON.stringify(options)], {
    onLine: (l) => log(`  [${r.key}] ${l}`),
    interrupted: (signal) => `study interrupted by ${signal} during ${r.key}; its checkpoint is saved, run the study again to continue`,
    failed: (code, stderr) => `${r.key} failed (exit ${code}): ${stderr.trim().split('\n').pop() ?? ''}`,
  });
}

export interface TrainingPhase {
  runs: PlannedRun[];
  trained: number;
  skipped: number;
  minutes: number;
}

/** Trains every planned run that is not finished yet, in order, with progress lines. */
export async function trainStudyRuns(o: StudyOptions): Promise<TrainingPhase> {
  const log = o.log ?? console.log;
  const runs = planRuns(o);
  const t0 = performance.now();
  let trained = 0;
  let skipped = 0;
  for (const [i, r] of runs.entries()) {
    const tag = `[${i + 1}/${runs.length}] ${r.key}`;
    if (runDone(r)) {
      skipped++;
      continue;
    }
    if (r.arm === 'repopt-init') {
      const file = path.join(seedDir(o.out, r.depth, r.seed), 'initial-scales.pth');
      if (!fs.existsSync(file)) writeInitialScales(o, r, file);
    }
    if (r.needs && !fs.existsSync(r.needs)) throw new Error(`${r.key} needs ${r.needs}, which its search did not write`);
    const resume = fs.existsSync(path.join(r.dir, 'latest.pth'));
    const t = performance.now();
    const elapsed = (t - t0) / 60000;
    log(`${tag}: ${resume ? 'resuming' : 'training'} (${trained} trained so far in ${elapsed.toFixed(1)} min, ${skipped} already done)`);
    await trainInChild(r, resume, log);
    trained++;
    log(`${tag}: done in ${((performance.now() - t) / 60000).toFixed(1)} min`);
  }
  return { runs, trained, skipped, minutes: (performance.now() - t0) / 60000 };
}

// ------------------------------------------------------------------ after training

/** A finished run's accuracy, speed and memory from its log's end record. */
export function readRunResult(r: PlannedRun): RunResult {
  const records = readJsonl(path.join(r.dir, 'log.jsonl'));
  const end = records.filter((x) => x.type === 'end').pop();
  if (!end) throw new Error(`${r.dir}: the run has no end record`);
  const first = records.find((x) => typeof x.time === 'string');
  const last = records[records.length - 1];
  const minutes = first && typeof last.time === 'string' ? (Date.parse(last.time) - Date.parse(first.time as string)) / 60000 : NaN;
  return {
    depth: r.depth, seed: r.seed, arm: r.arm, dir: r.dir,
    top1: end.valTop1 as number, imgPerSec: end.trainImgPerSec as number, peakRssBytes: end.peakRssBytes as number, params: end.params as number,
    trainMinutes: minutes,
  };
}

/**
 * INT8 and low-bit post-training quantization of one finished run's final weights (cached in the run's
 * quant.json): per-tensor and per-channel weights at 8 bits (percentile activations), 6 and 5 bits
 * (MSE activations), calibrated on training images, on the test set.
 */
async function quantizeRun(o: StudyOptions, r: PlannedRun, onnx: boolean, log: (l: string) => void): Promise<NonNullable<RunResult['quant']>> {
  const file = path.join(r.dir, 'quant.json');
  if (fs.existsSync(file)) {
    const cached = JSON.parse(fs.readFileSync(file, 'utf8')) as NonNullable<RunResult['quant']>;
    if (!onnx || cached.onnx) return cached;
  }
  const q = await quantizeStudy({
    checkpoint: path.join(r.dir, 'final.pth'), data: o.data, calibImages: o.calibImages, testImages: o.quantTestImages,
    observers: ['percentile'], lowBitObservers: ['mse'], percentile: 99.99, granularities: [false, true], quantizeFirst: true, quantizeLast: true,
    weightBits: [8, 6, 5], qatEpochs: 0, qatLr: 0, onnxImages: onnx ? o.onnxImages : 0, batchSize: 500, seed: 0,
  });
  const result = {
    fp32Deployed: q.fp32Deployed,
    rows: q.rows.map((x) => ({ perChannel: x.perChannel, weightBits: x.weightBits, observer: x.observer, top1: x.top1 })),
    weights: q.weights,
    ...(q.onnx ? { onnx: { agreement: q.onnx.agreement, images: q.onnx.images, maxDiff: q.onnx.maxDiff } } : {}),
  };
  writeFileAtomic(file, JSON.stringify(result) + '\n', 'quantization result');
  const row = (pc: boolean, bits: number) => result.rows.find((x) => x.perChannel === pc && x.weightBits === bits);
  const pct = (x: number | undefined) => (x === undefined ? 'n/a' : `${(x * 100).toFixed(2)}%`);
  log(`  [${r.key}] FP32 ${pct(result.fp32Deployed)}; INT8 per-tensor ${pct(row(false, 8)?.top1)}, per-channel ${pct(row(true, 8)?.top1)}; W6 ${pct(row(true, 6)?.top1)}, W5 ${pct(row(true, 5)?.top1)}${result.onnx ? `; ONNX Runtime agreement ${pct(result.onnx.agreement)} on ${result.onnx.images} images` : ''}`);
  return result;
}

export interface StudyBenchRow {
  depth: string;
  arm: string;
  mode: string;
  optimizer: string;
  imgPerSec: number[];
  peakRssMiB: number[];
}

/** Training speed and peak memory per arm, side by side: each mode in a fresh process, alternating order per round. */
function benchArms(o: StudyOptions, log: (l: string) => void): StudyBenchRow[] {
  const file = path.join(o.out, 'bench.json');
  if (fs.existsSync(file)) return JSON.parse(fs.readFileSync(file, 'utf8')) as StudyBenchRow[];
  const ds = openDataset(o.data, 'test');
  const arms: [string, BenchMode, 'repsgd' | 'sgd'][] = [['repopt', 'target', 'repsgd'], ['plain', 'target', 'sgd'], ['repvgg', 'repvgg', 'sgd'], ['qarepvgg', 'qarepvgg', 'sgd']];
  const rows: StudyBenchRow[] = [];
  for (const d of o.depths) {
    const byArm = new Map(arms.map(([arm, mode, optimizer]) => [arm, { depth: d.name, arm, mode, optimizer, imgPerSec: [] as number[], peakRssMiB: [] as number[] }]));
    for (let round = 0; round < o.benchRounds; round++) {
      const order = round % 2 ? [...arms].reverse() : arms;
      for (const [arm, mode, optimizer] of order) {
        const res = benchChild({
          model: { blocks: d.blocks, widths: d.widths, strides: d.strides, inChannels: ds.channels, numClasses: ds.numClasses },
          imageSize: ds.height, mode, optimizer, batch: o.batchSize, warmup: 3, steps: 10, threads: o.threads ?? torch.getNumThreads(), channelsLast: false, seed: 0,
        });
        const row = byArm.get(arm)!;
        row.imgPerSec.push(res.imgPerSec);
        row.peakRssMiB.push(res.maxRSSKiB / 1024);
        log(`  bench ${d.name} ${arm} round ${round + 1}/${o.benchRounds}: ${res.imgPerSec.toFixed(0)} img/s, peak RSS ${(res.maxRSSKiB / 1024).toFixed(0)} MiB`);
      }
    }
    rows.push(...byArm.values());
  }
  fs.writeFileSync(file, JSON.stringify(rows, null, 1) + '\n');
  return rows;
}

export interface StudyResult {
  meta: {
    command: string;
    date: string;
    cpu: string;
    cpuFlags: string[];
    threads: number;
    node: string;
    data: string;
    depths: (StudyOptions['depths'][number] & { convLayers: number })[];
    seeds: number;
    epochs: number;
    searchEpochs: number;
    budgetSearchEpochs: number[];
    batchSize: number;
    lr: number;
    recipe: Record<string, unknown>;
    /** Wall minutes of training, summed over the study's runs (from their logs). */
    trainMinutes: number;
    /** Wall minutes of this invocation (training that was still to do, quantization, benchmark, report). */
    invocationMinutes: number;
  };
  /** Planned runs that were not finished when this report was made (a --report-only report of a study under way). */
  missing: string[];
  runs: RunResult[];
  arms: ArmSummary[];
  verdicts: Verdict[];
  budget: BudgetPoint[];
  bench: StudyBenchRow[];
}

function cpuInfo(): { cpu: string; flags: string[] } {
  try {
    const info = fs.readFileSync('/proc/cpuinfo', 'utf8');
    const cpu = /^model name\s*:\s*(.*)$/m.exec(info)?.[1] ?? 'unknown';
    const flags = (/^flags\s*:(.*)$/m.exec(info)?.[1] ?? '').trim().split(/\s+/).filter((f) => /^(avx|fma|sse4)/.test(f));
    return { cpu, flags };
  } catch {
    return { cpu: 'unknown', flags: [] };
  }
}

/**
 * The whole study: trains what is not trained yet, quantizes every arm's runs, benchmarks the arms
 * side by side, and writes study.json, summary.md and report.html in `o.out`.
 */
export async function runStudy(o: StudyOptions): Promise<StudyResult> {
  const log = o.log ?? console.log;
  const t0 = performance.now();
  const training = o.reportOnly ? { runs: planRuns(o), trained: 0, skipped: 0, minutes: 0 } : await trainStudyRuns(o);
  const missing = training.runs.filter((r) => !runDone(r)).map((r) => r.key);
  if (missing.length) log(`report only: ${missing.length} of ${training.runs.length} runs are not finished (${missing.slice(0, 6).join(', ')}${missing.length > 6 ? ', ...' : ''})`);
  const arms = training.runs.filter((r) => !r.arm.startsWith('search') && runDone(r));
  const searches = training.runs.filter((r) => r.arm.startsWith('search') && runDone(r));
  log(`quantization: ${arms.length} runs (INT8 per-tensor and per-channel, 6- and 5-bit weights)`);
  const results: RunResult[] = [];
  for (const [i, r] of arms.entries()) {
    const res = readRunResult(r);
    res.quant = await quantizeRun(o, r, false, log);
    results.push(res);
    if ((i + 1) % 5 === 0) log(`  ${i + 1}/${arms.length} quantized`);
  }
  // ONNX Runtime checks the best INT8 (per-tensor) model of the study
  const best = results.reduce((a, b) => ((b.quant?.rows.find((x) => !x.perChannel && x.weightBits === 8)?.top1 ?? 0) > (a.quant?.rows.find((x) => !x.perChannel && x.weightBits === 8)?.top1 ?? 0) ? b : a), results[0]);
  if (best && o.onnxImages > 0) {
    const planned = arms.find((r) => r.dir === best.dir)!;
    try {
      best.quant = await quantizeRun(o, planned, true, log);
    } catch (e) {
      log(`  ONNX Runtime check skipped: ${(e as Error).message}`);
    }
  }
  const bench = o.benchRounds > 0 ? benchArms(o, log) : [];
  const { cpu, flags } = cpuInfo();
  const result: StudyResult = {
    meta: {
      command: o.command ?? 'repopt study', date: new Date().toISOString(), cpu, cpuFlags: flags, threads: o.threads ?? torch.getNumThreads(), node: process.version,
      data: o.data, depths: o.depths.map((d) => ({ ...d, convLayers: convLayers(d) })), seeds: o.seeds, epochs: o.epochs, searchEpochs: o.searchEpochs,
      budgetSearchEpochs: o.budgetSearchEpochs, batchSize: o.batchSize, lr: o.lr, recipe: recipeArgs(o),
      trainMinutes: results.reduce((s, r) => s + r.trainMinutes, 0) + searches.reduce((s, r) => s + readRunResult(r).trainMinutes, 0),
      invocationMinutes: (performance.now() - t0) / 60000,
    },
    missing,
    runs: results,
    arms: summarizeArms(results),
    verdicts: verdicts(results),
    budget: budgetCurve(results, o.searchEpochs),
    bench,
  };
  fs.writeFileSync(path.join(o.out, 'study.json'), JSON.stringify(result, null, 1) + '\n');
  const summary = studySummary(result);
  fs.writeFileSync(path.join(o.out, 'summary.md'), summary);
  fs.writeFileSync(path.join(o.out, 'report.html'), renderStudyReport(result));
  for (const l of summary.trimEnd().split('\n')) log(l);
  log(`report: ${path.join(o.out, 'report.html')}`);
  return result;
}
