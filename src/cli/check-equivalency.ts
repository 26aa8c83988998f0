/** `repopt check-equivalency`: CSLA block vs single kernel + Grad Mult, per case, in f32 and f64. */
import { CASES, runCase, type EquivalenceResult } from '../repopt/index.js';

export interface CheckOptions {
  dtypes: ('float32' | 'float64')[];
  json: boolean;
  filter?: string;
  log: (line: string) => void;
}

/** Runs every case; returns the exit code (1 when a case that must be equivalent is not). */
export function runCheckEquivalency(opts: CheckOptions): number {
  const cases = CASES.filter((c) => !opts.filter || c.name.toLowerCase().includes(opts.filter.toLowerCase()));
  if (cases.length === 0) throw new Error(`no case matches '${opts.filter}'`);
  const results: EquivalenceResult[] = [];
  if (!opts.json) {
    opts.log('Relative L1 difference between the CSLA block\'s fused kernel and the single kernel trained with the Grad Mult');
    opts.log(`(${opts.dtypes.join(', ')}; must-be-equivalent cases fail beyond 1e-5 in float32 and 1e-12 in float64)\n`);
    opts.log(`${'case'.padEnd(72)} ${opts.dtypes.map((d) => d.padStart(10)).join(' ')}  verdict`);
  }
  for (const c of cases) {
    const row = opts.dtypes.map((d) => runCase(c, d));
    results.push(...row);
    if (!opts.json) {
      const ok = row.every((r) => r.pass);
      const verdict = c.expect === 'broken' ? 'known broken (shown, not required)' : ok ? 'equivalent' : 'NOT EQUIVALENT';
      opts.log(`${c.name.padEnd(72)} ${row.map((r) => r.relL1.toExponential(2).padStart(10)).join(' ')}  ${verdict}`);
    }
  }
  const failed = results.filter((r) => !r.pass);
  if (opts.json) opts.log(JSON.stringify({ results, failed: failed.length }));
  else opts.log(failed.length ? `\n${failed.length} check(s) FAILED` : '\nall required equivalences hold');
  return failed.length ? 1 : 0;
}
