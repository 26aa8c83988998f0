/**
 * The quantization study across seeds: quant-demo.json files with the same arms and
 * configurations (one per seed of `repopt quant-demo --seeds N`) become one table of
 * top-1 per arm and configuration, with mean and spread over seeds.
 */
import path from 'node:path';
import type { QuantStudy } from './runs.js';
import { compare, spreadOf, type Comparison, type Spread } from './stats.js';

export interface QuantGroup {
  /** The folder holding the studies (their common parent). */
  dir: string;
  files: string[];
  arms: string[];
  /** Configuration names: FP32, then the study's rows, then QAT when present. */
  configs: string[];
  /** top-1 in % per arm, configuration and study (seed). */
  top1: Record<string, number[][]>;
  /** ONNX Runtime's agreement with the simulation per arm and study, when measured. */
  onnxAgreement: Record<string, number[]>;
  calibImages: number;
  testImages: number;
}

/** A quantization row's name: `INT8 minmax ch`, `W5 mse tensor`. */
export function quantRowLabel(r: { observer: string; perChannel: boolean; weightBits: number }): string {
  return `${r.weightBits === 8 ? 'INT8' : `W${r.weightBits}`} ${r.observer} ${r.perChannel ? 'ch' : 'tensor'}`;
}

function commonParent(files: string[]): string {
  const parts = files.map((f) => path.dirname(f).split(path.sep));
  const out: string[] = [];
  for (let i = 0; parts.every((p) => i < p.length && p[i] === parts[0][i]); i++) out.push(parts[0][i]);
  return out.join(path.sep) || path.sep;
}

/** Groups studies with the same arms and configurations (the seeds of one quant-demo). */
export function groupQuantStudies(studies: QuantStudy[]): QuantGroup[] {
  const groups = new Map<string, QuantStudy[]>();
  const configsOf = (s: QuantStudy) => {
    const first = s.arms[Object.keys(s.arms)[0]];
    return ['FP32', ...first.rows.map(quantRowLabel), ...(first.qat ? [`QAT W${first.qat.weightBits}`] : [])];
  };
  for (const s of studies) {
    const key = JSON.stringify([Object.keys(s.arms), configsOf(s)]);
    groups.set(key, [...(groups.get(key) ?? []), s]);
  }
  return [...groups.values()].map((ss) => {
    const arms = Object.keys(ss[0].arms);
    const configs = configsOf(ss[0]);
    const top1: Record<string, number[][]> = {};
    const onnxAgreement: Record<string, number[]> = {};
    for (const arm of arms) {
      top1[arm] = configs.map(() => []);
      onnxAgreement[arm] = [];
      for (const s of ss) {
        const r = s.arms[arm];
        const values = [r.fp32Deployed, ...r.rows.map((x) => x.top1), ...(configs.length > r.rows.length + 1 ? [r.qat ? r.qat.after : NaN] : [])];
        values.forEach((v, i) => top1[arm][i].push(v * 100));
        if (r.onnx) onnxAgreement[arm].push(r.onnx.agreement * 100);
      }
    }
    const first = ss[0].arms[arms[0]];
    return { dir: commonParent(ss.map((s) => s.file)), files: ss.map((s) => s.file), arms, configs, top1, onnxAgreement, calibImages: first.calibImages, testImages: first.testImages };
  });
}

/** Mean and spread of an arm's top-1 at configuration `i`. */
export function quantSpread(g: QuantGroup, arm: string, i: number): Spread | null {
  return spreadOf(g.top1[arm][i]);
}

/**
 * In words, the first two arms at FP32 and at the configuration where their means differ most:
 * whether the difference exceeds the spread between seeds.
 */
export function quantComparisons(g: QuantGroup): Comparison[] {
  if (g.arms.length < 2) return [];
  const [a, b] = g.arms;
  const gap = (i: number) => Math.abs((quantSpread(g, a, i)?.mean ?? NaN) - (quantSpread(g, b, i)?.mean ?? NaN));
  let widest = g.configs.length > 1 ? 1 : 0;
  for (let i = 2; i < g.configs.length; i++) if (gap(i) > gap(widest)) widest = i;
  const out: Comparison[] = [];
  for (const i of [...new Set([0, widest])]) {
    const sa = quantSpread(g, a, i);
    const sb = quantSpread(g, b, i);
    if (sa && sb) out.push(compare(a, sa, b, sb, `Top-1 at ${g.configs[i]}`, '%', 2, ' points'));
  }
  return out;
}
