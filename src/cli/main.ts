#!/usr/bin/env node
/** The `repopt` command line. */
import { runSmoke } from './smoke.js';
import { runCheckEquivalency } from './check-equivalency.js';
import { runScales } from './scales.js';

const USAGE = `usage: repopt <command> [options]

commands:
  smoke [--steps N] [--batch-size N] [--seed N]   train a small conv net on synthetic data
  check-equivalency [--dtype f32|f64|both] [--case TEXT] [--json]
                                                  CSLA branches vs one kernel + Grad Mult, side by side
  scales FILE --arch ARCH [--rule sgd|adamw] [--json]
                                                  a scale file's re-parameterised kernels, scales and Grad Mults
`;

function parseFlags(args: string[], spec: Record<string, 'number' | 'string' | 'boolean'>): Record<string, string | number | boolean> {
  const out: Record<string, string | number | boolean> = {};
  for (let i = 0; i < args.length; i++) {
    const a = args[i];
    if (!a.startsWith('--')) throw new UsageError(`unexpected argument '${a}'`);
    const [k, inline] = a.slice(2).split('=', 2);
    const kind = spec[k];
    if (!kind) throw new UsageError(`unknown flag --${k}`);
    if (kind === 'boolean') {
      out[k] = true;
      continue;
    }
    const v = inline ?? args[++i];
    if (v === undefined) throw new UsageError(`flag --${k} needs a value`);
    if (kind === 'number') {
      const n = Number(v);
      if (!Number.isFinite(n)) throw new UsageError(`flag --${k} expects a number, got '${v}'`);
      out[k] = n;
    } else out[k] = v;
  }
  return out;
}

class UsageError extends Error {}

function main(argv: string[]): number {
  const [cmd, ...rest] = argv;
  switch (cmd) {
    case 'smoke': {
      const f = parseFlags(rest, { steps: 'number', 'batch-size': 'number', seed: 'number' });
      const r = runSmoke({
        steps: (f.steps as number) ?? 100,
        batchSize: (f['batch-size'] as number) ?? 32,
        seed: (f.seed as number) ?? 0,
        log: (l) => console.log(l),
      });
      return r.last < r.first ? 0 : 1;
    }
    case 'check-equivalency': {
      const f = parseFlags(rest, { dtype: 'string', case: 'string', json: 'boolean' });
      const d = (f.dtype as string | undefined) ?? 'both';
      const dtypes = ({ f32: ['float32'], float32: ['float32'], f64: ['float64'], float64: ['float64'], both: ['float32', 'float64'] } as const)[d];
      if (!dtypes) throw new UsageError(`--dtype must be f32, f64 or both, got '${d}'`);
      return runCheckEquivalency({ dtypes: [...dtypes], json: f.json === true, filter: f.case as string | undefined, log: (l) => console.log(l) });
    }
    case 'scales': {
      const [file, ...more] = rest;
      if (!file || file.startsWith('--')) throw new UsageError('scales needs a scale file');
      const f = parseFlags(more, { arch: 'string', rule: 'string', json: 'boolean' });
      if (!f.arch) throw new UsageError('scales needs --arch ARCH');
      const rule = (f.rule as string | undefined) ?? 'sgd';
      if (rule !== 'sgd' && rule !== 'adamw') throw new UsageError(`--rule must be sgd or adamw, got '${rule}'`);
      return runScales({ file, arch: f.arch as string, rule, json: f.json === true, log: (l) => console.log(l) });
    }
    case undefined:
    case 'help':
    case '--help':
    case '-h':
      process.stdout.write(USAGE);
      return cmd === undefined ? 2 : 0;
    default:
      throw new UsageError(`unknown command '${cmd}'`);
  }
}

try {
  process.exitCode = main(process.argv.slice(2));
} catch (e) {
  if (e instanceof UsageError) {
    process.stderr.write(`repopt: ${e.message}\n\n${USAGE}`);
    process.exitCode = 2;
  } else {
    process.stderr.write(`repopt: ${(e as Error).message}\n`);
    process.exitCode = 1;
  }
}
