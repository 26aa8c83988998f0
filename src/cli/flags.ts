/**
 * Command-line flags, typed: each command declares a small spec (name -> flag definition built with
 * `flag.int(...)`, `flag.choice(...)`, ...); `parseCommand` turns argv into an object whose property types
 * follow the spec (a flag with a default or marked required is never undefined; a choice is its union of
 * literals), so call sites need no casts. `--help` of every command is generated from the same spec.
 *
 * Syntax: `--name value`, `--name=value`, booleans without a value, comma lists. Unknown flags, missing
 * values, malformed numbers and values outside a flag's range or choices are `UsageError`s (exit code 2).
 */
export class UsageError extends Error {}

/** Thrown by `parseCommand` when the arguments ask for help; carries the command's help text. */
export class HelpRequest extends Error {
  constructor(readonly text: string) {
    super(text);
  }
}

type FlagKind = 'number' | 'int' | 'string' | 'boolean' | 'numbers' | 'ints' | 'choice' | 'choices';

/**
 * One flag. `T` is its parsed value's type; `Present` is true when the parsed value is never undefined
 * (booleans, flags with a default, required flags).
 */
export interface FlagDef<T, Present extends boolean = boolean> {
  readonly kind: FlagKind;
  readonly help: string;
  /** Placeholder of the value in help and messages ('N', 'FILE', 'SPEC'); empty for booleans. */
  readonly arg: string;
  readonly default?: T;
  readonly required?: boolean;
  /** A heading under which --help lists the flag (flags without one come first). */
  readonly group?: string;
  /** The allowed values of a choice / choice list. */
  readonly choices?: readonly string[];
  /** Turns the raw text into the value; throws UsageError (with the flag's name) when it is not valid. */
  readonly parse: (raw: string, name: string) => T;
  /** Type-level marker only. */
  readonly present?: Present;
}

export type FlagSpec = Record<string, FlagDef<unknown>>;

/** The parsed flags of a spec. */
export type Flags<S extends FlagSpec> = {
  -readonly [K in keyof S]: S[K] extends FlagDef<infer T, infer P> ? (P extends true ? T : T | undefined) : never;
};

interface Common {
  /** Placeholder shown in help. */
  arg?: string;
  group?: string;
}
interface Range {
  /** Smallest allowed value (inclusive). */
  min?: number;
  /** Values must be greater than this. */
  above?: number;
  /** Largest allowed value (inclusive). */
  max?: number;
}

function rangeText(r: Range, integer: boolean): string {
  const noun = integer ? 'an integer' : 'a number';
  if (r.max !== undefined) {
    const lo = r.above !== undefined ? `(${r.above}` : r.min !== undefined ? `[${r.min}` : '(-inf';
    return `${integer ? 'an integer ' : ''}in ${lo}, ${r.max}]`;
  }
  if (integer && r.min === 1) return 'a positive integer';
  if (integer && r.min === 0) return 'a non-negative integer';
  if (r.above === 0) return `a positive ${integer ? 'integer' : 'number'}`;
  if (r.above !== undefined) return `${noun} > ${r.above}`;
  if (r.min !== undefined) return `${noun} >= ${r.min}`;
  return noun;
}

function inRange(x: number, r: Range): boolean {
  return (r.min === undefined || x >= r.min) && (r.above === undefined || x > r.above) && (r.max === undefined || x <= r.max);
}

function parseNumber(raw: string, name: string, integer: boolean, r: Range): number {
  const n = Number(raw);
  if (raw.trim() === '' || !Number.isFinite(n)) throw new UsageError(`--${name} expects a number, got '${raw}'`);
  if ((integer && !Number.isInteger(n)) || !inRange(n, r)) throw new UsageError(`--${name} must be ${rangeText(r, integer)}, got ${raw}`);
  return n;
}

function parseNumbers(raw: string, name: string, integer: boolean, r: Range, count?: number): number[] {
  const parts = raw.split(',');
  const xs = parts.map((p) => Number(p));
  if (parts.some((p, i) => p.trim() === '' || !Number.isFinite(xs[i]))) throw new UsageError(`--${name} expects comma-separated numbers, got '${raw}'`);
  if (xs.some((x) => (integer && !Number.isInteger(x)) || !inRange(x, r))) throw new UsageError(`--${name} takes values that are each ${rangeText(r, integer)}, got ${raw}`);
  if (count !== undefined && xs.length !== count) throw new UsageError(`--${name} takes ${count} comma-separated values, got ${raw}`);
  return xs;
}

function choiceText(choices: readonly string[]): string {
  return choices.length === 1 ? choices[0] : `one of ${choices.join(', ')}`;
}

/** Builders of flag definitions; the overloads give the parsed type (with a default: never undefined). */
export const flag = {
  boolean(help: string, o: { group?: string } = {}): FlagDef<boolean, true> {
    return { kind: 'boolean', help, arg: '', group: o.group, parse: () => true };
  },
  number: numberFlag,
  int: intFlag,
  string: stringFlag,
  numbers: numbersFlag,
  ints: intsFlag,
  choice: choiceFlag,
  choices: choicesFlag,
};

function numberFlag(help: string, o: Common & Range & { default: number }): FlagDef<number, true>;
function numberFlag(help: string, o: Common & Range & { required: true }): FlagDef<number, true>;
function numberFlag(help: string, o?: Common & Range): FlagDef<number, false>;
function numberFlag(help: string, o: Common & Range & { default?: number; required?: boolean } = {}): FlagDef<number> {
  return { kind: 'number', help, arg: o.arg ?? 'X', default: o.default, required: o.required, group: o.group, parse: (raw, name) => parseNumber(raw, name, false, o) };
}

function intFlag(help: string, o: Common & Range & { default: number }): FlagDef<number, true>;
function intFlag(help: string, o: Common & Range & { required: true }): FlagDef<number, true>;
function intFlag(help: string, o?: Common & Range): FlagDef<number, false>;
function intFlag(help: string, o: Common & Range & { default?: number; required?: boolean } = {}): FlagDef<number> {
  return { kind: 'int', help, arg: o.arg ?? 'N', default: o.default, required: o.required, group: o.group, parse: (raw, name) => parseNumber(raw, name, true, o) };
}

function stringFlag(help: string, o: Common & { default: string }): FlagDef<string, true>;
function stringFlag(help: string, o: Common & { required: true }): FlagDef<string, true>;
function stringFlag(help: string, o?: Common): FlagDef<string, false>;
function stringFlag(help: string, o: Common & { default?: string; required?: boolean } = {}): FlagDef<string> {
  return {
    kind: 'string', help, arg: o.arg ?? 'TEXT', default: o.default, required: o.required, group: o.group,
    parse: (raw, name) => {
      if (raw === '') throw new UsageError(`--${name} needs a non-empty value`);
      return raw;
    },
  };
}

type ListOpts = Common & Range & { count?: number };
function numbersFlag(help: string, o: ListOpts & { default: readonly number[] }): FlagDef<number[], true>;
function numbersFlag(help: string, o?: ListOpts): FlagDef<number[], false>;
function numbersFlag(help: string, o: ListOpts & { default?: readonly number[] } = {}): FlagDef<number[]> {
  return { kind: 'numbers', help, arg: o.arg ?? 'X,X', default: o.default && [...o.default], group: o.group, parse: (raw, name) => parseNumbers(raw, name, false, o, o.count) };
}

function intsFlag(help: string, o: ListOpts & { default: readonly number[] }): FlagDef<number[], true>;
function intsFlag(help: string, o?: ListOpts): FlagDef<number[], false>;
function intsFlag(help: string, o: ListOpts & { default?: readonly number[] } = {}): FlagDef<number[]> {
  return { kind: 'ints', help, arg: o.arg ?? 'N,N', default: o.default && [...o.default], group: o.group, parse: (raw, name) => parseNumbers(raw, name, true, o, o.count) };
}

function choiceFlag<C extends string>(choices: readonly C[], help: string, o: Common & { default: NoInfer<C> }): FlagDef<C, true>;
function choiceFlag<C extends string>(choices: readonly C[], help: string, o: Common & { required: true }): FlagDef<C, true>;
function choiceFlag<C extends string>(choices: readonly C[], help: string, o?: Common): FlagDef<C, false>;
function choiceFlag<C extends string>(choices: readonly C[], help: string, o: Common & { default?: C; required?: boolean } = {}): FlagDef<C> {
  const isChoice = (v: string): v is C => (choices as readonly string[]).includes(v);
  return {
    kind: 'choice', help, arg: o.arg ?? choices.join('|'), default: o.default, required: o.required, group: o.group, choices,
    parse: (raw, name) => {
      if (!isChoice(raw)) throw new UsageError(`--${name} must be ${choiceText(choices)}, got '${raw}'`);
      return raw;
    },
  };
}

/** A comma list of choices (`--observers minmax,mse`); `item` names one value in messages. */
function choicesFlag<C extends string>(choices: readonly C[], help: string, o: Common & { default: readonly NoInfer<C>[]; item?: string }): FlagDef<C[], true>;
function choicesFlag<C extends string>(choices: readonly C[], help: string, o?: Common & { item?: string }): FlagDef<C[], false>;
function choicesFlag<C extends string>(choices: readonly C[], help: string, o: Common & { default?: readonly C[]; item?: string } = {}): FlagDef<C[]> {
  const isChoice = (v: string): v is C => (choices as readonly string[]).includes(v);
  return {
    kind: 'choices', help, arg: o.arg ?? `${choices[0]},...`, default: o.default && [...o.default], group: o.group, choices,
    parse: (raw, name) => {
      const out: C[] = [];
      for (const v of raw.split(',').map((s) => s.trim()).filter(Boolean)) {
        if (!isChoice(v)) throw new UsageError(`--${name}: unknown ${o.item ?? 'value'} '${v}' (known: ${choices.join(', ')})`);
        out.push(v);
      }
      if (!out.length) throw new UsageError(`--${name} needs at least one ${o.item ?? 'value'}`);
      return out;
    },
  };
}

export interface Positional {
  name: string;
  help: string;
  /** The last positional only: one or more values (`NAME...`). */
  repeat?: boolean;
}

/** A command: its flags, and what --help says. */
export interface CommandSpec<S extends FlagSpec> {
  name: string;
  /** One line for `repopt help`. */
  summary: string;
  /** What follows `repopt NAME` in the usage line (default: the positionals and `[options]`). */
  usage?: string;
  /** Paragraph(s) after the usage line. */
  description?: string;
  /** Required positional arguments, in order. */
  positional?: readonly Positional[];
  flags: S;
  /** Text after the options (data specs, examples). */
  notes?: string;
  /** The flags that set a library option, where they are not `--<option in kebab case>` (OptionError.option -> flags). */
  optionFlags?: Record<string, string>;
}

export function defineCommand<S extends FlagSpec>(spec: CommandSpec<S>): CommandSpec<S> {
  for (const [name, def] of Object.entries(spec.flags)) {
    if (!/^[a-z0-9][a-z0-9-]*$/.test(name)) throw new Error(`${spec.name}: bad flag name '${name}'`);
    if (def.required && def.default !== undefined) throw new Error(`${spec.name}: --${name} is both required and defaulted`);
  }
  return spec;
}

export interface Parsed<S extends FlagSpec> {
  flags: Flags<S>;
  /** The positional arguments (as many as the spec declares; more when the last one repeats). */
  args: string[];
  /** The flags given on the command line (not filled in from defaults). */
  given: Set<keyof S & string>;
}

/** True when argv asks for help (`--help` or `-h` anywhere). */
export function wantsHelp(argv: readonly string[]): boolean {
  return argv.includes('--help') || argv.includes('-h');
}

/** Parses argv by a command's spec; throws HelpRequest for --help and UsageError for bad input. */
export function parseCommand<S extends FlagSpec>(spec: CommandSpec<S>, argv: readonly string[]): Parsed<S> {
  if (wantsHelp(argv)) throw new HelpRequest(formatHelp(spec));
  const values: Record<string, unknown> = {};
  const given = new Set<keyof S & string>();
  const args: string[] = [];
  const positional = spec.positional ?? [];
  const defs: FlagSpec = spec.flags;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (!a.startsWith('--')) {
      if (args.length >= positional.length && !positional[positional.length - 1]?.repeat) throw new UsageError(`unexpected argument '${a}'`);
      args.push(a);
      continue;
    }
    const eq = a.indexOf('=');
    const name = eq < 0 ? a.slice(2) : a.slice(2, eq);
    const inline = eq < 0 ? undefined : a.slice(eq + 1);
    const def = Object.hasOwn(defs, name) ? defs[name] : undefined;
    if (!def) throw new UsageError(`unknown flag --${name}${suggest(name, Object.keys(defs))}`);
    if (given.has(name)) throw new UsageError(`--${name} given twice`);
    given.add(name);
    if (def.kind === 'boolean') {
      if (inline !== undefined) throw new UsageError(`flag --${name} takes no value`);
      values[name] = true;
      continue;
    }
    const raw = inline ?? argv[++i];
    if (raw === undefined || (inline === undefined && raw.startsWith('--'))) throw new UsageError(`flag --${name} needs a value (${def.arg})`);
    values[name] = def.parse(raw, name);
  }
  if (args.length < positional.length) throw new UsageError(`${spec.name} needs ${positional.slice(args.length).map((p) => p.name).join(' ')} (${positional[args.length].help})`);
  for (const [name, def] of Object.entries(defs)) {
    if (values[name] !== undefined) continue;
    if (def.required) throw new UsageError(`--${name} ${def.arg} is required`);
    if (def.kind === 'boolean') values[name] = false;
    else if (def.default !== undefined) values[name] = Array.isArray(def.default) ? [...def.default] : def.default;
  }
  // The object was filled key by key from the spec: each value has its definition's type.
  return { flags: values as Flags<S>, args, given };
}

function suggest(name: string, known: string[]): string {
  const close = known.filter((k) => k.includes(name) || name.includes(k) || editDistance(k, name) <= 2);
  return close.length ? ` (did you mean ${close.slice(0, 3).map((k) => `--${k}`).join(', ')}?)` : '';
}

function editDistance(a: string, b: string): number {
  const d = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    let prev = d[0];
    d[0] = i;
    for (let j = 1; j <= b.length; j++) {
      const cur = d[j];
      d[j] = Math.min(d[j] + 1, d[j - 1] + 1, prev + (a[i - 1] === b[j - 1] ? 0 : 1));
      prev = cur;
    }
  }
  return d[b.length];
}

function defaultText(def: FlagDef<unknown>): string {
  if (def.required) return ' (required)';
  if (def.default === undefined || def.kind === 'boolean') return '';
  return ` (default: ${Array.isArray(def.default) ? def.default.join(',') : String(def.default)})`;
}

/** Wraps text to `width` columns with `indent` spaces on continuation lines. */
function wrap(text: string, width: number, indent: number): string {
  const words = text.split(/\s+/).filter(Boolean);
  const lines: string[] = [];
  let line = '';
  for (const w of words) {
    if (line && line.length + 1 + w.length > width - indent) {
      lines.push(line);
      line = w;
    } else line = line ? `${line} ${w}` : w;
  }
  if (line) lines.push(line);
  return lines.join(`\n${' '.repeat(indent)}`);
}

export function usageLine<S extends FlagSpec>(spec: CommandSpec<S>): string {
  return `repopt ${spec.name} ${spec.usage ?? [...(spec.positional ?? []).map((p) => (p.repeat ? `${p.name}...` : p.name)), '[options]'].join(' ')}`.trimEnd();
}

/** The --help text of a command, from its spec. */
export function formatHelp<S extends FlagSpec>(spec: CommandSpec<S>): string {
  const out = [`usage: ${usageLine(spec)}`, '', wrap(spec.description ?? spec.summary, 100, 0)];
  if (spec.positional?.length) {
    out.push('', 'arguments:');
    for (const p of spec.positional) out.push(`  ${p.name.padEnd(26)} ${wrap(p.help, 100, 29)}`);
  }
  const entries: [string, FlagDef<unknown>][] = Object.entries(spec.flags);
  const line = (name: string, arg: string, help: string) => {
    const head = `  --${name}${arg ? ` ${arg}` : ''}`;
    const body = wrap(help, 100, 29);
    return head.length <= 27 ? `${head.padEnd(28)} ${body}` : `${head}\n${' '.repeat(29)}${body}`;
  };
  out.push('', 'options:');
  const groups = [...new Set(entries.map(([, d]) => d.group ?? ''))].sort((a, b) => (a === '' ? -1 : b === '' ? 1 : 0));
  for (const g of groups) {
    if (g) out.push('', `${g}:`);
    for (const [name, def] of entries.filter(([, d]) => (d.group ?? '') === g)) out.push(line(name, def.arg, def.help + defaultText(def)));
    if (!g) out.push(line('help', '', 'print this help and exit'));
  }
  if (!groups.includes('')) out.splice(out.indexOf('options:') + 1, 0, line('help', '', 'print this help and exit'));
  if (spec.notes) out.push('', spec.notes.trimEnd());
  return out.join('\n') + '\n';
}
