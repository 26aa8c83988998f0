/**
 * Safe Python pickle reader and writer.
 *
 * The reader never executes anything: globals resolve only through a small
 * allow-list (plus an optional `findClass` hook); every other global becomes an
 * inert {@link PyUnknown} placeholder that records its arguments and state.
 *
 * JS representation of Python values (shared by reader and writer):
 *
 * | Python                     | JS                                                        |
 * |----------------------------|-----------------------------------------------------------|
 * | None                       | `null`                                                    |
 * | bool                       | `boolean`                                                 |
 * | int                        | `number` when a safe integer, else `bigint`               |
 * | float                      | `number` (or {@link PyFloat}, see below)                  |
 * | str                        | `string`                                                  |
 * | bytes / bytearray          | `Uint8Array`                                              |
 * | list                       | `PyValue[]`                                               |
 * | tuple                      | {@link PyTuple} (`.items`)                                |
 * | dict                       | `Map<PyValue, PyValue>` (insertion ordered)               |
 * | collections.OrderedDict    | {@link PyOrderedDict} (a `Map` + `attrs`, e.g. `_metadata`) |
 * | set / frozenset            | `Set<PyValue>` / {@link PyFrozenSet}                     |
 * | slice                      | {@link PySlice}                                           |
 * | a global reference         | {@link PyGlobal}                                          |
 * | anything else              | {@link PyUnknown} (inert; args/state/items recorded)      |
 *
 * Floats: JS cannot tell `1.0` from `1`. The reader returns floats as plain
 * numbers unless `exactFloats` is set, in which case integral-valued floats come
 * back as `PyFloat` (other floats stay numbers, they are unambiguous). The
 * writer writes a number as an int when `Number.isSafeInteger(n)` (and it is not -0),
 * otherwise as a float (so 1e300 stays a float; pass a `bigint` for big ints);
 * wrap a number in `PyFloat` to force a float.
 *
 * Writer only: a plain object `{a: 1}` is written as a dict with string keys;
 * {@link PyReduce} writes `callable(*args)` (+ optional BUILD state);
 * {@link PyPersistent} writes a persistent id (BINPERSID).
 */

// ---------------------------------------------------------------------------
// Value model

export class PyFloat {
  constructor(public readonly value: number) {}
  valueOf(): number {
    return this.value;
  }
  toString(): string {
    return String(this.value);
  }
}

export class PyTuple {
  readonly items: PyValue[];
  constructor(items: PyValue[] = []) {
    this.items = items;
  }
  get length(): number {
    return this.items.length;
  }
  get(i: number): PyValue {
    return this.items[i];
  }
  [Symbol.iterator](): Iterator<PyValue> {
    return this.items[Symbol.iterator]();
  }
}

/** `collections.OrderedDict`; `attrs` holds instance attributes set via BUILD (torch: `_metadata`). */
export class PyOrderedDict<V = PyValue> extends Map<PyValue, V> {
  attrs: Map<string, PyValue> = new Map();
}

export class PyFrozenSet extends Set<PyValue> {}

export class PySlice {
  constructor(
    public readonly start: PyValue,
    public readonly stop: PyValue,
    public readonly step: PyValue,
  ) {}
}

/** A reference to a Python global (`module.name`), as read by GLOBAL / written by the writer. */
export class PyGlobal {
  readonly kind = 'global' as const;
  constructor(
    public readonly module: string,
    public readonly name: string,
  ) {}
  get qualname(): string {
    return `${this.module}.${this.name}`;
  }
}

/** The inert result of calling / instantiating a global that is not on the allow-list. */
export class PyUnknown {
  readonly kind = 'unknown-global' as const;
  args?: PyValue[];
  kwargs?: PyValue;
  state?: PyValue;
  /** Items added with APPEND(S) (list subclasses). */
  listItems?: PyValue[];
  /** Items added with SETITEM(S) (dict subclasses). */
  dictItems?: Map<PyValue, PyValue>;
  constructor(
    public readonly module: string,
    public readonly name: string,
    args?: PyValue[],
  ) {
    if (args !== undefined) this.args = args;
  }
}

/** Writer only: `callable(*args)`, then BUILD with `state` when given. */
export class PyReduce {
  constructor(
    public readonly callable: PyGlobal,
    public readonly args: PyTuple,
    public readonly state?: PyValue,
  ) {}
}

/** Writer only: a persistent id (written with BINPERSID). */
export class PyPersistent {
  constructor(public readonly pid: PyValue) {}
}

/** A resolved allow-listed callable (returned by `findClass`). Calling it must not have side effects. */
export class PyCallable {
  constructor(
    public readonly module: string,
    public readonly name: string,
    public readonly call: (args: PyValue[]) => PyValue,
  ) {}
}

/**
 * Any value the reader can produce or the writer can consume. `object` covers opaque
 * values produced by hooks (e.g. tensors from `persistentLoad` / `findClass`).
 */
export type PyValue =
  | null
  | boolean
  | number
  | bigint
  | string
  | Uint8Array
  | PyFloat
  | PyTuple
  | PyValue[]
  | Map<PyValue, PyValue>
  | Set<PyValue>
  | PySlice
  | PyGlobal
  | PyUnknown
  | PyReduce
  | PyPersistent
  | PyCallable
  | { [key: string]: PyValue }
  | object;

// ---------------------------------------------------------------------------
// Reader

export interface UnpickleHooks {
  /** Resolve a persistent id (PERSID / BINPERSID). Required if the stream uses them. */
  persistentLoad?(pid: PyValue): PyValue;
  /**
   * Resolve a global before the built-in allow-list. Return a {@link PyCallable} for
   * something callable (used by REDUCE / NEWOBJ), any other value to push it as is,
   * or `undefined` to fall back to the default handling.
   */
  findClass?(module: string, name: string): PyValue | undefined;
  /** Handle BUILD on an object the reader does not know (e.g. one made by a hook). Return the new object or undefined to keep it. */
  build?(obj: PyValue, state: PyValue): PyValue | undefined;
}

export interface UnpickleOptions {
  /** Return integral-valued floats as PyFloat so they round-trip as floats (default false). */
  exactFloats?: boolean;
}

const MARK = Symbol('mark');
type StackItem = PyValue | typeof MARK;

/** Map Python 2 module names (written by protocol <3 with fix_imports) to Python 3. */
function fixModule(module: string): string {
  if (module === '__builtin__') return 'builtins';
  if (module === 'copy_reg') return 'copyreg';
  return module;
}

function latin1(bytes: Uint8Array): string {
  let s = '';
  for (let i = 0; i < bytes.length; i += 8192) {
    s += String.fromCharCode(...bytes.subarray(i, i + 8192));
  }
  return s;
}

function latin1Bytes(s: string): Uint8Array {
  const out = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c > 255) throw new Error(`pickle: cannot latin-1 encode character U+${c.toString(16)}`);
    out[i] = c;
  }
  return out;
}

function toTuple(v: PyValue, what: string): PyValue[] {
  if (v instanceof PyTuple) return v.items;
  if (Array.isArray(v)) return v;
  throw new Error(`pickle: ${what} expects a tuple of arguments`);
}

function iterItems(v: PyValue): PyValue[] {
  if (v === null || v === undefined) return [];
  if (Array.isArray(v)) return v;
  if (v instanceof PyTuple) return v.items;
  if (v instanceof Set) return [...v];
  if (v instanceof Map) return [...v.keys()];
  if (typeof v === 'string') return [...v];
  throw new Error('pickle: expected an iterable');
}

/** dict(src) / OrderedDict(src): fills `d` from a mapping or an iterable of (key, value) pairs. */
function fillDict<D extends Map<PyValue, PyValue>>(d: D, args: PyValue[], what: string): D {
  if (args.length > 0 && args[0] !== null) {
    const src = args[0];
    if (src instanceof Map) for (const [k, v] of src) d.set(k, v);
    else
      for (const pair of iterItems(src)) {
        const kv = toTuple(pair, what);
        d.set(kv[0], kv[1]);
      }
  }
  return d;
}

function defaultGlobal(module: string, name: string): PyValue | undefined {
  const q = `${module}.${name}`;
  switch (q) {
    case 'collections.OrderedDict':
      return new PyCallable(module, name, (args) => fillDict(new PyOrderedDict(), args, 'OrderedDict item'));
    case 'builtins.dict':
      return new PyCallable(module, name, (args) => fillDict(new Map<PyValue, PyValue>(), args, 'dict item'));
    case 'builtins.list':
      return new PyCallable(module, name, (args) => (args.length ? [...iterItems(args[0])] : []));
    case 'builtins.tuple':
      return new PyCallable(module, name, (args) => new PyTuple(args.length ? [...iterItems(args[0])] : []));
    case 'builtins.set':
      return new PyCallable(module, name, (args) => new Set(args.length ? iterItems(args[0]) : []));
    case 'builtins.frozenset':
      return new PyCallable(module, name, (args) => new PyFrozenSet(args.length ? iterItems(args[0]) : []));
    case 'builtins.slice':
      return new PyCallable(module, name, (args) => {
        if (args.length === 1) return new PySlice(null, args[0], null);
        return new PySlice(args[0] ?? null, args[1] ?? null, args[2] ?? null);
      });
    case 'builtins.bytes':
    case 'builtins.bytearray':
      return new PyCallable(module, name, (args) => {
        if (args.length === 0) return new Uint8Array(0);
        const a = args[0];
        if (a instanceof Uint8Array) return new Uint8Array(a);
        if (typeof a === 'string') return latin1Bytes(a); // bytearray(str, 'latin-1') (protocol 2)
        if (Array.isArray(a)) return Uint8Array.from(a as number[]);
        throw new Error(`pickle: unsupported ${name}() argument`);
      });
    case '_codecs.encode':
      return new PyCallable(module, name, (args) => {
        const [s, enc] = args;
        if (typeof s !== 'string') throw new Error('pickle: _codecs.encode expects a str');
        const e = typeof enc === 'string' ? enc.toLowerCase().replace(/[-_]/g, '') : 'utf8';
        if (e === 'latin1' || e === 'iso88591') return latin1Bytes(s);
        if (e === 'utf8') return new TextEncoder().encode(s);
        throw new Error(`pickle: _codecs.encode: unsupported encoding ${String(enc)}`);
      });
    default:
      return undefined;
  }
}

/**
 * Parse a pickle stream. Never executes code: unknown globals become {@link PyUnknown}.
 * Throws an Error naming the byte position on truncated / malformed input.
 */
export function unpickle(bytes: Uint8Array, hooks: UnpickleHooks = {}, options: UnpickleOptions = {}): PyValue {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const n = bytes.length;
  let pos = 0;
  let opPos = 0;
  let stack: StackItem[] = [];
  const metastack: StackItem[][] = [];
  const memo = new Map<number, PyValue>();
  const utf8 = new TextDecoder('utf-8', { fatal: true });

  const fail = (msg: string): never => {
    throw new Error(`unpickle: ${msg} at byte ${opPos}`);
  };
  const need = (k: number): void => {
    if (pos + k > n) fail(`truncated stream (need ${k} more byte(s) at ${pos}, have ${n - pos})`);
  };
  const u8 = (): number => {
    need(1);
    return bytes[pos++];
  };
  const u16 = (): number => {
    need(2);
    const v = view.getUint16(pos, true);
    pos += 2;
    return v;
  };
  const u32 = (): number => {
    need(4);
    const v = view.getUint32(pos, true);
    pos += 4;
    return v;
  };
  const i32 = (): number => {
    need(4);
    const v = view.getInt32(pos, true);
    pos += 4;
    return v;
  };
  const u64 = (): number => {
    need(8);
    const v = view.getBigUint64(pos, true);
    pos += 8;
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) fail('length too large');
    return Number(v);
  };
  const take = (k: number): Uint8Array => {
    need(k);
    const s = bytes.subarray(pos, pos + k);
    pos += k;
    return s;
  };
  const line = (): string => {
    const end = bytes.indexOf(0x0a, pos);
    if (end < 0) fail('truncated stream (missing newline)');
    const s = latin1(bytes.subarray(pos, end));
    pos = end + 1;
    return s;
  };
  const decodeUtf8 = (b: Uint8Array): string => {
    try {
      return utf8.decode(b);
    } catch {
      return fail('invalid UTF-8 in string');
    }
  };
  const pop = (): PyValue => {
    if (stack.length === 0) fail('stack underflow');
    const v = stack.pop()!;
    if (v === MARK) fail('unexpected MARK on stack');
    return v as PyValue;
  };
  const top = (): PyValue => {
    if (stack.length === 0) fail('stack underflow');
    const v = stack[stack.length - 1];
    if (v === MARK) fail('unexpected MARK on stack');
    return v as PyValue;
  };
  const push = (v: PyValue): void => {
    stack.push(v);
  };
  const popMark = (): PyValue[] => {
    const items = stack as PyValue[];
    if (metastack.length === 0) fail('MARK expected but not found (stack underflow)');
    stack = metastack.pop()!;
    for (const it of items) if ((it as StackItem) === MARK) fail('unexpected MARK');
    return items;
  };
  const numberFromLong = (b: Uint8Array): number | bigint => {
    if (b.length === 0) return 0;
    let v = 0n;
    for (let i = b.length - 1; i >= 0; i--) v = (v << 8n) | BigInt(b[i]);
    if (b[b.length - 1] & 0x80) v -= 1n << BigInt(8 * b.length);
    return Number.isSafeInteger(Number(v)) && BigInt(Number(v)) === v ? Number(v) : v;
  };
  const intFromText = (s: string): number | bigint => {
    const t = s.trim().replace(/L$/, '');
    if (!/^[+-]?\d+$/.test(t)) fail(`invalid integer literal ${JSON.stringify(s)}`);
    const v = BigInt(t);
    return Number.isSafeInteger(Number(v)) ? Number(v) : v;
  };
  const mkFloat = (x: number): PyValue => (options.exactFloats && (Number.isSafeInteger(x) || Object.is(x, -0)) ? new PyFloat(x) : x);

  const resolveGlobal = (module0: string, name: string): PyValue => {
    const module = fixModule(module0);
    const hooked = hooks.findClass?.(module, name);
    if (hooked !== undefined) return hooked;
    return defaultGlobal(module, name) ?? new PyGlobal(module, name);
  };
  const call = (fn: PyValue, args: PyValue[], kwargs?: PyValue): PyValue => {
    if (fn instanceof PyCallable) {
      try {
        return fn.call(args);
      } catch (e) {
        throw new Error(`unpickle: ${fn.module}.${fn.name}(): ${(e as Error).message} at byte ${opPos}`, { cause: e });
      }
    }
    if (fn instanceof PyGlobal) {
      const u = new PyUnknown(fn.module, fn.name, args);
      if (kwargs !== undefined) u.kwargs = kwargs;
      return u;
    }
    if (fn instanceof PyUnknown) {
      // calling the result of a call: keep it inert
      const u = new PyUnknown(fn.module, fn.name, args);
      u.state = fn;
      return u;
    }
    return fail('REDUCE/NEWOBJ on a non-callable value');
  };
  const setItem = (target: PyValue, k: PyValue, v: PyValue): void => {
    if (target instanceof Map) target.set(k, v);
    else if (target instanceof PyUnknown) (target.dictItems ??= new Map()).set(k, v);
    else fail('SETITEM(S) on a non-dict');
  };
  const appendItems = (target: PyValue, items: PyValue[]): void => {
    if (Array.isArray(target)) target.push(...items);
    else if (target instanceof PyUnknown) (target.listItems ??= []).push(...items);
    else fail('APPEND(S) on a non-list');
  };
  const persistent = (pid: PyValue): PyValue => {
    if (!hooks.persistentLoad) return fail('persistent id found but no persistentLoad hook given');
    return hooks.persistentLoad(pid);
  };

  for (;;) {
    opPos = pos;
    if (pos >= n) fail('truncated stream (no STOP opcode)');
    const op = bytes[pos++];
    switch (op) {
      case 0x80: {
        // PROTO
        const p = u8();
        if (p > 5) fail(`unsupported pickle protocol ${p}`);
        break;
      }
      case 0x95: // FRAME
        u64();
        break;
      case 0x2e: // STOP '.'
        return pop();
      case 0x28: // MARK '('
        metastack.push(stack);
        stack = [];
        break;
      case 0x30: // POP '0'
        if (stack.length === 0) {
          // POP can remove a MARK too (pickle semantics: pop the topmost item)
          popMark();
        } else stack.pop();
        break;
      case 0x31: // POP_MARK '1'
        popMark();
        break;
      case 0x32: // DUP '2'
        push(top());
        break;

      // --- containers
      case 0x7d: // EMPTY_DICT '}'
        push(new Map());
        break;
      case 0x5d: // EMPTY_LIST ']'
        push([]);
        break;
      case 0x29: // EMPTY_TUPLE ')'
        push(new PyTuple([]));
        break;
      case 0x85: // TUPLE1
        push(new PyTuple([pop()]));
        break;
      case 0x86: {
        // TUPLE2
        const b = pop();
        const a = pop();
        push(new PyTuple([a, b]));
        break;
      }
      case 0x87: {
        // TUPLE3
        const c = pop();
        const b = pop();
        const a = pop();
        push(new PyTuple([a, b, c]));
        break;
      }
      case 0x74: // TUPLE 't'
        push(new PyTuple(popMark()));
        break;
      case 0x6c: // LIST 'l'
        push(popMark());
        break;
      case 0x64: {
        // DICT 'd'
        const items = popMark();
        if (items.length % 2) fail('odd number of items for DICT');
        const d = new Map<PyValue, PyValue>();
        for (let i = 0; i < items.length; i += 2) d.set(items[i], items[i + 1]);
        push(d);
        break;
      }
      case 0x61: {
        // APPEND 'a'
        const v = pop();
        appendItems(top(), [v]);
        break;
      }
      case 0x65: {
        // APPENDS 'e'
        const items = popMark();
        appendItems(top(), items);
        break;
      }
      case 0x73: {
        // SETITEM 's'
        const v = pop();
        const k = pop();
        setItem(top(), k, v);
        break;
      }
      case 0x75: {
        // SETITEMS 'u'
        const items = popMark();
        if (items.length % 2) fail('odd number of items for SETITEMS');
        const target = top();
        for (let i = 0; i < items.length; i += 2) setItem(target, items[i], items[i + 1]);
        break;
      }
      case 0x8f: // EMPTY_SET
        push(new Set());
        break;
      case 0x90: {
        // ADDITEMS
        const items = popMark();
        const s = top();
        if (!(s instanceof Set)) fail('ADDITEMS on a non-set');
        for (const it of items) (s as Set<PyValue>).add(it);
        break;
      }
      case 0x91: // FROZENSET
        push(new PyFrozenSet(popMark()));
        break;

      // --- numbers
      case 0x4a: // BININT 'J'
        push(i32());
        break;
      case 0x4b: // BININT1 'K'
        push(u8());
        break;
      case 0x4d: // BININT2 'M'
        push(u16());
        break;
      case 0x8a: // LONG1
        push(numberFromLong(take(u8())));
        break;
      case 0x8b: {
        // LONG4
        const len = i32();
        if (len < 0) fail('negative LONG4 length');
        push(numberFromLong(take(len)));
        break;
      }
      case 0x49: {
        // INT 'I'
        const s = line();
        if (s === '00') push(false);
        else if (s === '01') push(true);
        else push(intFromText(s));
        break;
      }
      case 0x4c: // LONG 'L'
        push(intFromText(line()));
        break;
      case 0x47: {
        // BINFLOAT 'G' (big-endian double)
        need(8);
        const x = view.getFloat64(pos, false);
        pos += 8;
        push(mkFloat(x));
        break;
      }
      case 0x46: {
        // FLOAT 'F'
        const s = line().trim();
        const x = s === 'nan' ? NaN : s === 'inf' ? Infinity : s === '-inf' ? -Infinity : Number(s);
        if (Number.isNaN(x) && s !== 'nan') fail(`invalid float literal ${JSON.stringify(s)}`);
        push(mkFloat(x));
        break;
      }
      case 0x4e: // NONE 'N'
        push(null);
        break;
      case 0x88: // NEWTRUE
        push(true);
        break;
      case 0x89: // NEWFALSE
        push(false);
        break;

      // --- strings / bytes
      case 0x58: // BINUNICODE 'X'
        push(decodeUtf8(take(u32())));
        break;
      case 0x8c: // SHORT_BINUNICODE
        push(decodeUtf8(take(u8())));
        break;
      case 0x8d: // BINUNICODE8
        push(decodeUtf8(take(u64())));
        break;
      case 0x56: {
        // UNICODE 'V' (raw-unicode-escape)
        const s = line();
        push(s.replace(/\\u([0-9a-fA-F]{4})|\\U([0-9a-fA-F]{8})/g, (_m, a: string, b: string) =>
          String.fromCodePoint(parseInt(a ?? b, 16)),
        ));
        break;
      }
      case 0x54: {
        // BINSTRING 'T' (py2 str; decoded as latin-1)
        const len = i32();
        if (len < 0) fail('negative BINSTRING length');
        push(latin1(take(len)));
        break;
      }
      case 0x55: // SHORT_BINSTRING 'U'
        push(latin1(take(u8())));
        break;
      case 0x53: {
        // STRING 'S' (quoted repr)
        const raw = line().trim();
        const q = raw[0];
        if (raw.length < 2 || (q !== "'" && q !== '"') || raw[raw.length - 1] !== q) fail('malformed STRING literal');
        const body = raw.slice(1, -1);
        push(
          body.replace(/\\(x[0-9a-fA-F]{2}|[0-7]{1,3}|.)/g, (_m, e: string) => {
            if (e[0] === 'x') return String.fromCharCode(parseInt(e.slice(1), 16));
            if (/^[0-7]/.test(e)) return String.fromCharCode(parseInt(e, 8));
            const map: Record<string, string> = { n: '\n', r: '\r', t: '\t', '\\': '\\', "'": "'", '"': '"', a: '\x07', b: '\b', f: '\f', v: '\v' };
            return map[e] ?? '\\' + e;
          }),
        );
        break;
      }
      case 0x42: // BINBYTES 'B'
        push(take(u32()).slice());
        break;
      case 0x43: // SHORT_BINBYTES 'C'
        push(take(u8()).slice());
        break;
      case 0x8e: // BINBYTES8
        push(take(u64()).slice());
        break;
      case 0x96: // BYTEARRAY8
        push(take(u64()).slice());
        break;
      case 0x97: // NEXT_BUFFER
      case 0x98: // READONLY_BUFFER
        fail('out-of-band buffers (protocol 5) are not supported');
        break;

      // --- globals / objects
      case 0x63: {
        // GLOBAL 'c'
        const module = line();
        const name = line();
        push(resolveGlobal(module, name));
        break;
      }
      case 0x93: {
        // STACK_GLOBAL
        const name = pop();
        const module = pop();
        if (typeof module !== 'string' || typeof name !== 'string') fail('STACK_GLOBAL expects two strings');
        push(resolveGlobal(module as string, name as string));
        break;
      }
      case 0x52: {
        // REDUCE 'R'
        const args = pop();
        const fn = pop();
        push(call(fn, toTuple(args, 'REDUCE')));
        break;
      }
      case 0x81: {
        // NEWOBJ: cls.__new__(cls, *args)
        const args = pop();
        const cls = pop();
        push(call(cls, toTuple(args, 'NEWOBJ')));
        break;
      }
      case 0x92: {
        // NEWOBJ_EX
        const kwargs = pop();
        const args = pop();
        const cls = pop();
        push(call(cls, toTuple(args, 'NEWOBJ_EX'), kwargs));
        break;
      }
      case 0x69: {
        // INST 'i'
        const module = line();
        const name = line();
        const args = popMark();
        push(call(resolveGlobal(module, name), args));
        break;
      }
      case 0x6f: {
        // OBJ 'o'
        const items = popMark();
        if (items.length === 0) fail('OBJ without class');
        push(call(items[0], items.slice(1)));
        break;
      }
      case 0x62: {
        // BUILD 'b'
        const state = pop();
        const obj = top();
        if (obj instanceof PyUnknown) {
          obj.state = state;
        } else if (obj instanceof Map) {
          // dict subclass state: a dict of attributes, or (dict|None, slotstate)
          const attrs = obj instanceof PyOrderedDict ? obj.attrs : undefined;
          const parts = state instanceof PyTuple ? state.items : [state];
          for (const part of parts) {
            if (part === null) continue;
            if (!(part instanceof Map)) fail('BUILD state for a dict must be a dict');
            if (!attrs) fail('BUILD with attributes on a plain dict');
            for (const [k, v] of part as Map<PyValue, PyValue>) attrs!.set(String(k), v);
          }
        } else if (hooks.build) {
          const r = hooks.build(obj, state);
          if (r !== undefined) stack[stack.length - 1] = r;
        } else if (typeof obj === 'object' && obj !== null && !(obj instanceof PyTuple) && !Array.isArray(obj)) {
          // opaque object from a hook (e.g. a tensor): ignore empty states, refuse others
          const empty = state === null || (state instanceof Map && state.size === 0);
          if (!empty) fail('BUILD on an object that does not accept state');
        } else {
          fail('BUILD on a value that does not accept state');
        }
        break;
      }
      case 0x82:
      case 0x83:
      case 0x84:
        fail('extension registry opcodes (EXT1/2/4) are not supported');
        break;

      // --- persistent ids
      case 0x51: // BINPERSID 'Q'
        push(persistent(pop()));
        break;
      case 0x50: // PERSID 'P'
        push(persistent(line()));
        break;

      // --- memo
      case 0x71: // BINPUT 'q'
        memo.set(u8(), top());
        break;
      case 0x72: // LONG_BINPUT 'r'
        memo.set(u32(), top());
        break;
      case 0x70: {
        // PUT 'p'
        const idx = Number(intFromText(line()));
        memo.set(idx, top());
        break;
      }
      case 0x94: // MEMOIZE
        memo.set(memo.size, top());
        break;
      case 0x68: // BINGET 'h'
      case 0x6a: // LONG_BINGET 'j'
      case 0x67: {
        // GET 'g'
        const idx = op === 0x68 ? u8() : op === 0x6a ? u32() : Number(intFromText(line()));
        if (!memo.has(idx)) fail(`memo key ${idx} not found`);
        push(memo.get(idx)!);
        break;
      }
      default:
        fail(`unknown opcode 0x${op.toString(16).padStart(2, '0')}`);
    }
  }
}

// ---------------------------------------------------------------------------
// Writer (protocol 2)

export interface PickleHooks {
  /**
   * Translate a value the writer does not know (e.g. a tensor) into a picklable one
   * (typically a PyReduce). Return undefined to fail. Results are memoized by the
   * identity of the original object, so the same object written twice is shared.
   */
  reduce?(obj: object): PyValue | undefined;
}

class ByteWriter {
  private buf = new Uint8Array(1024);
  private view = new DataView(this.buf.buffer);
  length = 0;
  private ensure(k: number): void {
    if (this.length + k <= this.buf.length) return;
    let cap = this.buf.length * 2;
    while (cap < this.length + k) cap *= 2;
    const nb = new Uint8Array(cap);
    nb.set(this.buf.subarray(0, this.length));
    this.buf = nb;
    this.view = new DataView(nb.buffer);
  }
  u8(v: number): void {
    this.ensure(1);
    this.buf[this.length++] = v;
  }
  u16(v: number): void {
    this.ensure(2);
    this.view.setUint16(this.length, v, true);
    this.length += 2;
  }
  u32(v: number): void {
    this.ensure(4);
    this.view.setUint32(this.length, v, true);
    this.length += 4;
  }
  i32(v: number): void {
    this.ensure(4);
    this.view.setInt32(this.length, v, true);
    this.length += 4;
  }
  f64be(v: number): void {
    this.ensure(8);
    this.view.setFloat64(this.length, v, false);
    this.length += 8;
  }
  bytes(b: Uint8Array): void {
    this.ensure(b.length);
    this.buf.set(b, this.length);
    this.length += b.length;
  }
  ascii(s: string): void {
    for (let i = 0; i < s.length; i++) this.u8(s.charCodeAt(i));
  }
  result(): Uint8Array {
    return this.buf.slice(0, this.length);
  }
}

function longBytes(v: bigint): Uint8Array {
  if (v === 0n) return new Uint8Array(0);
  const out: number[] = [];
  let x = v;
  for (;;) {
    out.push(Number(x & 0xffn));
    x >>= 8n; // arithmetic shift keeps sign
    const last = out[out.length - 1];
    if ((x === 0n && (last & 0x80) === 0) || (x === -1n && (last & 0x80) !== 0)) break;
  }
  return Uint8Array.from(out);
}

/** Serialize a value to a protocol-2 pickle. See the module comment for the value model. */
export function pickle(value: PyValue, hooks: PickleHooks = {}): Uint8Array {
  const w = new ByteWriter();
  const memo = new Map<unknown, number>();
  const globalMemo = new Map<string, number>();
  const inProgress = new Set<unknown>();
  const enc = new TextEncoder();

  let nextMemo = 0;
  /** Memoizes the top of the stack under the next index (BINPUT / LONG_BINPUT) and returns it. */
  const putNext = (): number => {
    const idx = nextMemo++;
    if (idx < 256) {
      w.u8(0x71);
      w.u8(idx);
    } else {
      w.u8(0x72);
      w.u32(idx);
    }
    return idx;
  };
  const put = (key: unknown): void => {
    memo.set(key, putNext());
  };
  const get = (idx: number): void => {
    if (idx < 256) {
      w.u8(0x68);
      w.u8(idx);
    } else {
      w.u8(0x6a);
      w.u32(idx);
    }
  };
  const writeInt = (v: number | bigint): void => {
    if (typeof v === 'number' && v >= 0 && v < 256) {
      w.u8(0x4b);
      w.u8(v);
    } else if (typeof v === 'number' && v >= 0 && v < 65536) {
      w.u8(0x4d);
      w.u16(v);
    } else if (typeof v === 'number' && v >= -0x80000000 && v <= 0x7fffffff) {
      w.u8(0x4a);
      w.i32(v);
    } else {
      const b = longBytes(BigInt(v));
      if (b.length < 256) {
        w.u8(0x8a);
        w.u8(b.length);
      } else {
        w.u8(0x8b);
        w.i32(b.length);
      }
      w.bytes(b);
    }
  };
  const writeStr = (s: string): void => {
    const b = enc.encode(s);
    w.u8(0x58); // BINUNICODE
    w.u32(b.length);
    w.bytes(b);
  };
  const writeGlobal = (module: string, name: string): void => {
    const key = `${module}\n${name}`;
    const idx = globalMemo.get(key);
    if (idx !== undefined) return get(idx);
    w.u8(0x63);
    w.ascii(`${module}\n${name}\n`);
    globalMemo.set(key, putNext());
  };
  const writeTupleItems = (items: PyValue[]): void => {
    if (items.length === 0) w.u8(0x29);
    else if (items.length <= 3) {
      for (const it of items) save(it);
      w.u8([0x85, 0x86, 0x87][items.length - 1]);
    } else {
      w.u8(0x28);
      for (const it of items) save(it);
      w.u8(0x74);
    }
  };
  const writeDictItems = (entries: Iterable<[PyValue, PyValue]>): void => {
    let batch: [PyValue, PyValue][] = [];
    const flush = (): void => {
      if (batch.length === 0) return;
      if (batch.length === 1) {
        save(batch[0][0]);
        save(batch[0][1]);
        w.u8(0x73);
      } else {
        w.u8(0x28);
        for (const [k, v] of batch) {
          save(k);
          save(v);
        }
        w.u8(0x75);
      }
      batch = [];
    };
    for (const e of entries) {
      batch.push(e);
      if (batch.length === 1000) flush();
    }
    flush();
  };

  const save = (v: PyValue): void => {
    if (v === null || v === undefined) return w.u8(0x4e);
    if (typeof v === 'boolean') return w.u8(v ? 0x88 : 0x89);
    if (typeof v === 'number') {
      if (Number.isSafeInteger(v) && !Object.is(v, -0)) return writeInt(v);
      w.u8(0x47);
      return w.f64be(v);
    }
    if (typeof v === 'bigint') return writeInt(v);
    if (typeof v === 'string') return writeStr(v);
    if (v instanceof PyFloat) {
      w.u8(0x47);
      return w.f64be(v.value);
    }
    if (typeof v !== 'object') throw new Error(`pickle: cannot serialize a ${typeof v}`);

    const seen = memo.get(v);
    if (seen !== undefined) return get(seen);
    if (inProgress.has(v)) throw new Error('pickle: recursive structure through a tuple or reduce is not supported');

    if (v instanceof PyGlobal) return writeGlobal(v.module, v.name);
    if (v instanceof PyPersistent) {
      save(v.pid);
      return w.u8(0x51); // BINPERSID
    }
    if (v instanceof Uint8Array) {
      // protocol 2 bytes: _codecs.encode(latin1_str, 'latin1')
      writeGlobal('_codecs', 'encode');
      writeTupleItems([latin1(v), 'latin1']);
      w.u8(0x52);
      return put(v);
    }
    if (v instanceof PyTuple) {
      inProgress.add(v);
      writeTupleItems(v.items);
      inProgress.delete(v);
      return put(v);
    }
    if (Array.isArray(v)) {
      w.u8(0x5d);
      put(v);
      if (v.length === 1) {
        save(v[0]);
        w.u8(0x61);
      } else if (v.length > 1) {
        for (let i = 0; i < v.length; i += 1000) {
          w.u8(0x28);
          for (const it of v.slice(i, i + 1000)) save(it);
          w.u8(0x65);
        }
      }
      return;
    }
    if (v instanceof PyOrderedDict) {
      writeGlobal('collections', 'OrderedDict');
      w.u8(0x29);
      w.u8(0x52);
      put(v);
      writeDictItems(v.entries());
      if (v.attrs.size > 0) {
        const state = new Map<PyValue, PyValue>(v.attrs);
        save(state);
        w.u8(0x62); // BUILD
      }
      return;
    }
    if (v instanceof Map) {
      w.u8(0x7d);
      put(v);
      writeDictItems(v.entries());
      return;
    }
    if (v instanceof Set) {
      // protocol 2: builtins.set([items]) / builtins.frozenset([items])
      writeGlobal('__builtin__', v instanceof PyFrozenSet ? 'frozenset' : 'set');
      inProgress.add(v);
      writeTupleItems([[...v]]);
      inProgress.delete(v);
      w.u8(0x52);
      return put(v);
    }
    if (v instanceof PySlice) {
      writeGlobal('__builtin__', 'slice');
      writeTupleItems([v.start, v.stop, v.step]);
      w.u8(0x52);
      return put(v);
    }
    if (v instanceof PyReduce) {
      inProgress.add(v);
      save(v.callable);
      save(v.args);
      w.u8(0x52);
      inProgress.delete(v);
      put(v);
      if (v.state !== undefined) {
        save(v.state);
        w.u8(0x62);
      }
      return;
    }
    if (v instanceof PyUnknown || v instanceof PyCallable) {
      throw new Error(`pickle: cannot serialize placeholder for ${v.module}.${v.name}`);
    }
    if (Object.getPrototypeOf(v) === Object.prototype || Object.getPrototypeOf(v) === null) {
      w.u8(0x7d);
      put(v);
      writeDictItems(Object.entries(v as Record<string, PyValue>));
      return;
    }
    const r = hooks.reduce?.(v);
    if (r === undefined) throw new Error(`pickle: cannot serialize object of type ${v.constructor?.name ?? 'unknown'}`);
    inProgress.add(v);
    save(r);
    inProgress.delete(v);
    // memoize the original object so the same object written twice is shared
    const idx = r !== null && typeof r === 'object' ? memo.get(r) : undefined;
    if (idx !== undefined) memo.set(v, idx);
  };

  w.u8(0x80);
  w.u8(2);
  save(value);
  w.u8(0x2e);
  return w.result();
}
