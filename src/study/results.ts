/**
 * The study's results (study.json): every run's accuracy and quantization rows, per depth and arm the
 * mean and spread over seeds, and a verdict per comparison from Welch's t-test and the seed ranges.
 */
import type { LayerWeightStats } from '../deploy/quant.js';
import { spreadOf, type Spread } from '../report/stats.js';
import { ARM_LABELS, STUDY_ARMS, armLabel, type StudyArm } from './plan.js';
import { welch, type Welch } from './stats.js';

export interface QuantRowResult {
  perChannel: boolean;
  weightBits: number;
  observer: string;
  top1: number;
}

export interface RunResult {
  depth: string;
  seed: number;
  arm: string;
  dir: string;
  top1: number;
  imgPerSec: number;
  peakRssBytes: number;
  params: number;
  trainMinutes: number;
  quant?: { fp32Deployed: number; rows: QuantRowResult[]; weights: LayerWeightStats[]; onnx?: { agreement: number; images: number; maxDiff: number } };
}

/** The quantization settings the study reports, as row keys. */
export const QUANT_SETTINGS = [
  { key: 'int8-tensor', label: 'INT8, per-tensor weights', perChannel: false, weightBits: 8 },
  { key: 'int8-channel', label: 'INT8, per-channel weights', perChannel: true, weightBits: 8 },
  { key: 'w6-channel', label: '6-bit weights, per-channel', perChannel: true, weightBits: 6 },
  { key: 'w5-channel', label: '5-bit weights, per-channel', perChannel: true, weightBits: 5 },
  { key: 'w6-tensor', label: '6-bit weights, per-tensor', perChannel: false, weightBits: 6 },
] as const;

export interface ArmSummary {
  depth: string;
  arm: string;
  label: string;
  seeds: number[];
  top1: Spread;
  /** Top-1 drop (FP32 deployed minus quantized, points) per setting key. */
  drops: Record<string, Spread | null>;
  /** Largest |w| over std of the deployed kernels (mean over layers): the outliers that per-tensor INT8 suffers from. */
  maxOverStd: Spread | null;
  /** Relative INT8 weight error, per-tensor and per-channel scales (mean over layers). */
  weightErrPerTensor: Spread | null;
  weightErrPerChannel: Spread | null;
}

export interface Verdict {
  depth: string;
  metric: string;
  a: string;
  b: string;
  difference: number;
  welch: Welch;
  rangesOverlap: boolean;
  /** The better arm at p < 0.05 ('a' or 'b': higher for accuracy, lower for a drop), or 'none' (no measured difference). */
  ahead: 'a' | 'b' | 'none';
  sentence: string;
}

const mean = (v: number[]) => v.reduce((a, b) => a + b, 0) / v.length;

function dropOf(r: RunResult, s: (typeof QUANT_SETTINGS)[number]): number | null {
  const row = r.quant?.rows.find((q) => q.perChannel === s.perChannel && q.weightBits === s.weightBits);
  return row && r.quant ? (r.quant.fp32Deployed - row.top1) * 100 : null;
}

export function summarizeArms(runs: RunResult[]): ArmSummary[] {
  const out: ArmSummary[] = [];
  const depths = [...new Set(runs.map((r) => r.depth))];
  const arms = [...new Set(runs.map((r) => r.arm))];
  for (const depth of depths) {
    for (const arm of arms) {
      const rs = runs.filter((r) => r.depth === depth && r.arm === arm).sort((a, b) => a.seed - b.seed);
      if (!rs.length) continue;
      const drops: Record<string, Spread | null> = {};
      for (const s of QUANT_SETTINGS) drops[s.key] = spreadOf(rs.map((r) => dropOf(r, s)).filter((d): d is number => d !== null));
      const layerMean = (f: (w: LayerWeightStats) => number) => spreadOf(rs.filter((r) => r.quant?.weights.length).map((r) => mean(r.quant!.weights.map(f))));
      out.push({
        depth, arm, label: armLabel(arm), seeds: rs.map((r) => r.seed),
        top1: spreadOf(rs.map((r) => r.top1 * 100))!,
        drops,
        maxOverStd: layerMean((w) => w.maxAbs / w.std),
        weightErrPerTensor: layerMean((w) => w.errPerTensor),
        weightErrPerChannel: layerMean((w) => w.errPerChannel),
      });
    }
  }
  return out;
}

/**
 * Welch's t-test and the seed ranges of one metric between two arms; the sentence says which is better, if
 * either (`higherIsBetter`: accuracy; not: a drop under quantization).
 */
export function verdict(depth: string, metric: string, a: string, av: number[], b: string, bv: number[], unit: string, higherIsBetter = true): Verdict {
  const w = welch(av, bv);
  const difference = mean(av) - mean(bv);
  const rangesOverlap = !(Math.min(...av) > Math.max(...bv) || Math.min(...bv) > Math.max(...av));
  const ahead: Verdict['ahead'] = Number.isFinite(w.p) && w.p < 0.05 ? ((difference > 0) === higherIsBetter ? 'a' : 'b') : 'none';
  const f = (x: number) => x.toFixed(2);
  const head = `${depth}: ${metric} ${a} ${f(mean(av))} vs ${b} ${f(mean(bv))} (${difference >= 0 ? '+' : '−'}${f(Math.abs(difference))}${unit}; Welch t ${Number.isFinite(w.t) ? w.t.toFixed(2) : 'n/a'}, df ${Number.isFinite(w.df) ? w.df.toFixed(1) : 'n/a'}, p ${Number.isFinite(w.p) ? w.p.toFixed(3) : 'n/a'}; seed ranges ${rangesOverlap ? 'overlap' : 'do not overlap'})`;
  const sentence =
    ahead === 'none'
      ? `${head}: no measured difference at p < 0.05 over ${av.length} and ${bv.length} seeds.`
      : `${head}: ${ahead === 'a' ? a : b} ${higherIsBetter ? 'is ahead' : 'loses less'} (p < 0.05).`;
  return { depth, metric, a, b, difference, welch: w, rangesOverlap, ahead, sentence };
}

/** The comparisons the study is for, per depth: RepOpt against each baseline on accuracy, and INT8 robustness. */
export function verdicts(runs: RunResult[]): Verdict[] {
  const out: Verdict[] = [];
  const depths = [...new Set(runs.map((r) => r.depth))];
  const pick = (depth: string, arm: string, f: (r: RunResult) => number | null) =>
    runs.filter((r) => r.depth === depth && r.arm === arm).map(f).filter((v): v is number => v !== null && Number.isFinite(v));
  const pairs: [StudyArm, StudyArm][] = [['repopt', 'plain'], ['repopt', 'repvgg'], ['repopt', 'qarepvgg'], ['repopt', 'repopt-init'], ['repvgg', 'plain']];
  for (const depth of depths) {
    for (const [a, b] of pairs) {
      const av = pick(depth, a, (r) => r.top1 * 100);
      const bv = pick(depth, b, (r) => r.top1 * 100);
      if (av.length && bv.length) out.push(verdict(depth, 'top-1 (%)', ARM_LABELS[a], av, ARM_LABELS[b], bv, ' points'));
    }
    // the paper's INT8 setting (per-tensor weights), and the narrowest grid (5-bit weights), where outliers show most
    for (const setting of [QUANT_SETTINGS[0], QUANT_SETTINGS[3]]) {
      for (const b of ['repvgg', 'qarepvgg', 'plain'] as StudyArm[]) {
        const av = pick(depth, 'repopt', (r) => dropOf(r, setting));
        const bv = pick(depth, b, (r) => dropOf(r, setting));
        if (av.length && bv.length) out.push(verdict(depth, `drop (points) with ${setting.label}`, ARM_LABELS.repopt, av, ARM_LABELS[b], bv, ' points', false));
      }
    }
  }
  return out;
}

export interface BudgetPoint {
  depth: string;
  searchEpochs: number;
  top1: Spread;
  seeds: number[];
}

/** RepOpt-VGG's top-1 against the Hyper-Search's length: 0 (initial scales), the main search, and the budget runs. */
export function budgetCurve(runs: RunResult[], mainSearchEpochs: number): BudgetPoint[] {
  const out: BudgetPoint[] = [];
  const depths = [...new Set(runs.filter((r) => r.arm.startsWith('repopt')).map((r) => r.depth))];
  for (const depth of depths) {
    const arms: [string, number][] = [['repopt-init', 0], ['repopt', mainSearchEpochs]];
    for (const r of runs) if (r.depth === depth && r.arm.startsWith('repopt-search-')) arms.push([r.arm, Number(r.arm.slice('repopt-search-'.length))]);
    for (const [arm, e] of [...new Map(arms)].sort((x, y) => x[1] - y[1])) {
      const rs = runs.filter((r) => r.depth === depth && r.arm === arm);
      if (rs.length) out.push({ depth, searchEpochs: e, top1: spreadOf(rs.map((r) => r.top1 * 100))!, seeds: rs.map((r) => r.seed) });
    }
  }
  return out;
}

export const STUDY_ARM_ORDER: readonly string[] = STUDY_ARMS;
