/**
 * Arms (runs of one recipe that differ only in the seed), their mean and spread
 * over seeds, and the summary in words: does a difference between two arms
 * exceed the spread between seeds?
 */
import type { RunData } from './runs.js';

export interface Spread {
  n: number;
  mean: number;
  /** Sample standard deviation (0 for one value). */
  sd: number;
  min: number;
  max: number;
}

export function spreadOf(values: number[]): Spread | null {
  const v = values.filter((x) => Number.isFinite(x));
  if (!v.length) return null;
  const mean = v.reduce((a, b) => a + b, 0) / v.length;
  const sd = v.length > 1 ? Math.sqrt(v.reduce((a, b) => a + (b - mean) ** 2, 0) / (v.length - 1)) : 0;
  return { n: v.length, mean, sd, min: Math.min(...v), max: Math.max(...v) };
}

export interface Arm {
  name: string;
  runs: RunData[];
  top1: Spread | null;
  imgPerSec: Spread | null;
  peakRssBytes: Spread | null;
  params: number | null;
  deployedParams: number | null;
}

/** What makes two runs the same recipe: their configuration without the seed and the file paths. */
function recipeKey(r: RunData): string {
  const { seed: _seed, scales, init, ...rest } = r.config;
  return JSON.stringify({ ...rest, scales: scales ? 'searched' : null, init: init ? 'file' : null, arm: r.arm });
}

/** Groups runs into arms (same recipe, any seed), in the order they first appear. */
export function groupArms(runs: RunData[]): Arm[] {
  const groups = new Map<string, RunData[]>();
  for (const r of runs) {
    const k = recipeKey(r);
    groups.set(k, [...(groups.get(k) ?? []), r]);
  }
  const names = new Map<string, number>();
  const arms: Arm[] = [];
  for (const rs of groups.values()) {
    rs.sort((a, b) => a.seed - b.seed);
    let name = rs[0].arm;
    const seen = names.get(name) ?? 0;
    names.set(name, seen + 1);
    if (seen) name = `${name} #${seen + 1}`;
    const ends = rs.map((r) => r.end).filter((e) => e !== null);
    arms.push({
      name,
      runs: rs,
      top1: spreadOf(ends.map((e) => (e.valTop1 ?? NaN) * 100)),
      imgPerSec: spreadOf(ends.map((e) => e.trainImgPerSec)),
      peakRssBytes: spreadOf(ends.map((e) => e.peakRssBytes)),
      params: ends[0]?.params ?? null,
      deployedParams: rs.find((r) => r.deployedParams !== null)?.deployedParams ?? null,
    });
  }
  return arms;
}

export interface Comparison {
  a: string;
  b: string;
  metric: string;
  difference: number;
  /** True when every seed of one arm is above every seed of the other (the seed ranges do not overlap). */
  exceedsSpread: boolean | null;
  sentence: string;
}

/**
 * One sentence per pair: the difference of the means and whether it exceeds the spread between seeds.
 * "Exceeds" means the seed ranges do not overlap (every seed of one arm beats every seed of the other);
 * with one seed per arm there is no spread to compare against, and the sentence says so.
 */
export function compare(a: string, sa: Spread, b: string, sb: Spread, metric: string, unit: string, digits: number, diffUnit = unit): Comparison {
  const difference = sa.mean - sb.mean;
  const fmt = (x: number) => x.toFixed(digits);
  const signed = (x: number) => `${x >= 0 ? '+' : '−'}${fmt(Math.abs(x))}`;
  const head = `${metric}: ${a} ${fmt(sa.mean)}${unit} vs ${b} ${fmt(sb.mean)}${unit}, a difference of ${signed(difference)}${diffUnit}`;
  if (sa.n < 2 || sb.n < 2) {
    return { a, b, metric, difference, exceedsSpread: null, sentence: `${head}. With one seed per arm there is no spread between seeds to compare it with: run several seeds (--seeds 3) before reading it as a result.` };
  }
  const exceeds = sa.min > sb.max || sb.min > sa.max;
  const spread = `seeds spread ${fmt(sa.min)}–${fmt(sa.max)} (sd ${fmt(sa.sd)}) and ${fmt(sb.min)}–${fmt(sb.max)} (sd ${fmt(sb.sd)})`;
  return {
    a, b, metric, difference, exceedsSpread: exceeds,
    sentence: exceeds
      ? `${head}; this exceeds the spread between seeds (${spread}: no overlap over ${sa.n} and ${sb.n} seeds).`
      : `${head}; this does not exceed the spread between seeds (${spread}: the ranges overlap), so it is not a measured difference.`,
  };
}

/** Accuracy and speed comparisons of the first trained arm against every other trained arm. */
export function summarize(arms: Arm[]): Comparison[] {
  const trained = arms.filter((a) => a.runs[0].arm !== 'Hyper-Search' && a.top1);
  const out: Comparison[] = [];
  const [first, ...rest] = trained;
  for (const other of rest) {
    if (first.top1 && other.top1) out.push(compare(first.name, first.top1, other.name, other.top1, 'Top-1', '%', 2, ' points'));
    if (first.imgPerSec && other.imgPerSec) out.push(compare(first.name, first.imgPerSec, other.name, other.imgPerSec, 'Training throughput', ' img/s', 0));
  }
  return out;
}
