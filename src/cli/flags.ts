/** Command-line flags: `--name value`, `--name=value`, booleans, comma lists; unknown flags are errors. */
export class UsageError extends Error {}

export type FlagKind = 'number' | 'string' | 'boolean' | 'list';
export type FlagSpec = Record<string, FlagKind>;
export type Flags = Record<string, string | number | boolean | number[]>;

export function parseFlags(args: string[], spec: FlagSpec): Flags {
  const out: Flags = {};
  for (let i = 0; i < args.length; i++) {
    const a = args[i];
    if (!a.startsWith('--')) throw new UsageError(`unexpected argument '${a}'`);
    const eq = a.indexOf('=');
    const k = eq < 0 ? a.slice(2) : a.slice(2, eq);
    const inline = eq < 0 ? undefined : a.slice(eq + 1);
    const kind = spec[k];
    if (!kind) throw new UsageError(`unknown flag --${k}`);
    if (kind === 'boolean') {
      if (inline !== undefined) throw new UsageError(`flag --${k} takes no value`);
      out[k] = true;
      continue;
    }
    const v = inline ?? args[++i];
    if (v === undefined || (inline === undefined && v.startsWith('--'))) throw new UsageError(`flag --${k} needs a value`);
    if (kind === 'number') {
      const n = Number(v);
      if (v.trim() === '' || !Number.isFinite(n)) throw new UsageError(`flag --${k} expects a number, got '${v}'`);
      out[k] = n;
    } else if (kind === 'list') {
      const xs = v.split(',').map((x) => Number(x));
      if (xs.some((x, j) => !Number.isFinite(x) || v.split(',')[j].trim() === '')) throw new UsageError(`flag --${k} expects comma-separated numbers, got '${v}'`);
      out[k] = xs;
    } else out[k] = v;
  }
  return out;
}
