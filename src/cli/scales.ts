/**
 * `repopt scales FILE --arch ARCH [--rule sgd|adamw] [--json]`: what a scale file
 * means for the target model of ARCH. Per re-parameterised parameter: name,
 * shape, the scale statistics of its CSLA block's branches (min/mean/max) and
 * the statistics of its Grad Mult (computed in float64; sums in f64).
 */
import * as torch from '../torch/index.js';
import { gradMult, kernelShape, normalizeSpec, type GradRule } from '../repopt/csla.js';
import { loadScaleFile, scaleScheme, summarizeScales } from '../models/scales.js';
import '../models/families.js'; // registers the families, their architectures and scale schemes

export interface ScalesOptions {
  file: string;
  arch: string;
  rule: GradRule;
  json: boolean;
  log: (line: string) => void;
}

export interface Stats {
  min: number;
  mean: number;
  max: number;
}

export interface ParamReport {
  name: string;
  shape: number[];
  branches: ({ branch: string } & Stats)[];
  gradMult: { sum: number; sumSq: number; min: number; max: number };
}

export interface ScalesReport {
  arch: string;
  rule: GradRule;
  file: string;
  tensors: number;
  floats: number;
  sum: number;
  params: ParamReport[];
}

function stats(v: ArrayLike<number>): Stats {
  let min = Infinity;
  let max = -Infinity;
  let sum = 0;
  for (let i = 0; i < v.length; i++) {
    min = Math.min(min, v[i]);
    max = Math.max(max, v[i]);
    sum += v[i];
  }
  return { min, mean: sum / v.length, max };
}

export function scalesReport(file: string, arch: string, rule: GradRule): ScalesReport {
  const scheme = scaleScheme(arch);
  const scales = loadScaleFile(file, arch);
  try {
    const sum = summarizeScales(scales, arch);
    const params = scheme.sites(arch, scales).map((site): ParamReport => {
      const n = normalizeSpec(site.spec);
      let idx = 0;
      const branches = n.branches.map((b) => {
        const label = b.kind === 'conv' ? `${b.kh}x${b.kw}` : 'identity';
        if (b.kind === 'identity') {
          const init = site.identityInit?.[idx++] ?? 1;
          const v = typeof init === 'number' ? Array.from(b.scale, (s) => init * s) : Array.from(init, (x, c) => x * b.scale[c]);
          return { branch: label, ...stats(v) };
        }
        return { branch: label, ...stats(b.scale) };
      });
      const gradMultStats = torch.tidy(() => {
        const m = gradMult(n, rule, { dtype: 'float64' });
        return {
          sum: m.sum().item(),
          sumSq: m.mul(m).sum().item(),
          min: (m.min() as torch.Tensor).item(),
          max: (m.max() as torch.Tensor).item(),
        };
      });
      return { name: site.param, shape: kernelShape(n), branches, gradMult: gradMultStats };
    });
    return { arch, rule, file, tensors: sum.tensors, floats: sum.floats, sum: sum.sum, params };
  } finally {
    for (const t of scales.values()) t.dispose();
  }
}

const f = (x: number) => x.toFixed(4);

export function runScales(opts: ScalesOptions): number {
  const r = scalesReport(opts.file, opts.arch, opts.rule);
  if (opts.json) {
    opts.log(JSON.stringify(r));
    return 0;
  }
  opts.log(`${r.file}: ${r.tensors} scale tensors, ${r.floats.toLocaleString('en-US')} floats, sum ${r.sum.toFixed(6)}`);
  opts.log(`target model ${r.arch}: ${r.params.length} re-parameterised kernels; Grad Mult rule ${r.rule} (${r.rule === 'sgd' ? 'the squared scales' : 'the scales\' magnitudes'} of the branches covering each tap, +1 on the identity)`);
  opts.log('scales per block and branch (min/mean/max over output channels), by branch kernel (3x3, 1x1, ...); identity = its initial weight\n');
  const w = Math.max(...r.params.map((p) => p.name.length));
  opts.log(`${'parameter'.padEnd(w)}  ${'shape'.padEnd(20)}  ${'branch scales'.padEnd(80)}  Grad Mult min/mean/max`);
  let total = 0;
  let count = 0;
  for (const p of r.params) {
    const br = p.branches.map((b) => `${b.branch} ${f(b.min)}/${f(b.mean)}/${f(b.max)}`).join('  ');
    const numel = p.shape.reduce((a, b) => a * b, 1);
    total += p.gradMult.sum;
    count += numel;
    opts.log(`${p.name.padEnd(w)}  ${`[${p.shape.join(', ')}]`.padEnd(20)}  ${br.padEnd(80)}  ${f(p.gradMult.min)}/${f(p.gradMult.sum / numel)}/${f(p.gradMult.max)}`);
  }
  opts.log(`\nGrad Mult over all ${count.toLocaleString('en-US')} re-parameterised weights: mean ${f(total / count)}`);
  return 0;
}
