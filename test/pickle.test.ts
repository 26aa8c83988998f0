/**
 * Pickle reader/writer against CPython's pickle module (Debian /usr/bin/python3,
 * REPOPT_PYTHON overrides). Both sides reduce values to the same tagged JSON form
 * (`norm`) so that ints, floats, tuples, bytes, dict kinds and sets are compared exactly.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import {
  pickle,
  unpickle,
  PyFloat,
  PyFrozenSet,
  PyGlobal,
  PyOrderedDict,
  PyPersistent,
  PyReduce,
  PySlice,
  PyTuple,
  PyUnknown,
  type PyValue,
} from '../src/io/pickle.js';

const PYTHON = process.env.REPOPT_PYTHON ?? '/usr/bin/python3';

const PY_NORM = `
import pickle, json, base64, sys, collections, math
def norm(x):
    if x is None or isinstance(x, bool) or isinstance(x, str): return x
    if isinstance(x, int): return {'$int': str(x)}
    if isinstance(x, float): return {'$float': x if math.isfinite(x) else str(x)}
    if isinstance(x, (bytes, bytearray)): return {'$bytes': list(x)}
    if isinstance(x, list): return [norm(v) for v in x]
    if isinstance(x, tuple): return {'$tuple': [norm(v) for v in x]}
    if isinstance(x, collections.OrderedDict):
        d = {'$odict': [[norm(k), norm(v)] for k, v in x.items()]}
        if getattr(x, '__dict__', None): d['attrs'] = [[k, norm(v)] for k, v in x.__dict__.items()]
        return d
    if isinstance(x, dict): return {'$dict': [[norm(k), norm(v)] for k, v in x.items()]}
    if isinstance(x, frozenset): return {'$frozenset': sorted(json.dumps(norm(v)) for v in x)}
    if isinstance(x, set): return {'$set': sorted(json.dumps(norm(v)) for v in x)}
    if isinstance(x, slice): return {'$slice': [norm(x.start), norm(x.stop), norm(x.step)]}
    raise TypeError(type(x))
`;

function fl(x: number): unknown {
  return { $float: Number.isFinite(x) ? x : Number.isNaN(x) ? 'nan' : x > 0 ? 'inf' : '-inf' };
}

function norm(x: PyValue): unknown {
  if (x === null || typeof x === 'boolean' || typeof x === 'string') return x;
  if (typeof x === 'bigint') return { $int: x.toString() };
  if (typeof x === 'number') return Number.isSafeInteger(x) && !Object.is(x, -0) ? { $int: String(x) } : fl(x);
  if (x instanceof PyFloat) return fl(x.value);
  if (x instanceof Uint8Array) return { $bytes: Array.from(x) };
  if (Array.isArray(x)) return x.map(norm);
  if (x instanceof PyTuple) return { $tuple: x.items.map(norm) };
  if (x instanceof PyOrderedDict) {
    const d: Record<string, unknown> = { $odict: [...x].map(([k, v]) => [norm(k), norm(v)]) };
    if (x.attrs.size) d.attrs = [...x.attrs].map(([k, v]) => [k, norm(v)]);
    return d;
  }
  if (x instanceof Map) return { $dict: [...x].map(([k, v]) => [norm(k), norm(v)]) };
  if (x instanceof PyFrozenSet) return { $frozenset: [...x].map((v) => JSON.stringify(norm(v))).sort() };
  if (x instanceof Set) return { $set: [...x].map((v) => JSON.stringify(norm(v))).sort() };
  if (x instanceof PySlice) return { $slice: [norm(x.start), norm(x.stop), norm(x.step)] };
  if (Object.getPrototypeOf(x) === Object.prototype) return { $dict: Object.entries(x).map(([k, v]) => [k, norm(v as PyValue)]) };
  throw new Error(`norm: unexpected ${String(x)}`);
}

function normSets(v: unknown): unknown {
  // set members were serialized to strings by json.dumps (Python) / JSON.stringify (JS); re-parse them
  if (Array.isArray(v)) return v.map(normSets);
  if (v && typeof v === 'object') {
    const o = v as Record<string, unknown>;
    const members = (a: string[]): unknown[] =>
      a.map((s) => normSets(JSON.parse(s))).sort((x, y) => (JSON.stringify(x) < JSON.stringify(y) ? -1 : 1));
    if (Array.isArray(o.$set)) return { $set: members(o.$set as string[]) };
    if (Array.isArray(o.$frozenset)) return { $frozenset: members(o.$frozenset as string[]) };
    return Object.fromEntries(Object.entries(o).map(([k, w]) => [k, normSets(w)]));
  }
  return v;
}

function py(script: string, input = ''): string {
  return execFileSync(PYTHON, ['-c', PY_NORM + script], { input, encoding: 'utf8', maxBuffer: 64 << 20 });
}

const CASES_PY = `
import datetime
big = 'x' * 300
cases = {
  'none': None, 'true': True, 'false': False,
  'ints': [0, 1, 255, 256, 65535, 65536, -1, -256, 2**31 - 1, -2**31, 2**31, 2**53, -2**53 - 1, 2**63, 2**100, -2**100],
  'floats': [0.5, -1.25, 1e300, -2.5e-310, 1.0, 0.0, -0.0, 3.0, 1e16, float('nan'), float('-inf')],
  'strs': ['', 'abc', 'n\\u00efv\\u00e9 \\U0001F600', big, 'with\\nnewline \\\\ back'],
  'bytes': [b'', b'\\x00\\xffabc', bytes(range(256))],
  'bytearray': bytearray(b'ab'),
  'list': [1, 2.5, 'a', [], [[1]]],
  'tuples': [(), (1,), (1, 2), (1, 2, 3), (1, 2, 3, 4), ((1,), [2])],
  'dict': {'a': 1, 'b': [1, 2], 3: 'int key', (1, 2): 'tuple key', None: 0},
  'odict': collections.OrderedDict([('z', 1), ('a', 2), ('stage1.0.conv.weight', 3)]),
  'set': {1, 2, 3}, 'frozenset': frozenset({'a', 'b'}), 'emptyset': set(),
  'slice': slice(1, 5, 2),
}
od = collections.OrderedDict([('b', 1), ('a', 2)])
od._metadata = collections.OrderedDict([('', {'version': 1})])
cases['odict_meta'] = od
out = []
for proto in range(0, 6):
    for name, v in cases.items():
        out.append({'name': name, 'proto': proto, 'b64': base64.b64encode(pickle.dumps(v, protocol=proto)).decode(), 'norm': norm(v)})
print(json.dumps(out))
`;

test('unpickle: every supported type, protocols 0-5, matches CPython', () => {
  const cases = JSON.parse(py(CASES_PY)) as { name: string; proto: number; b64: string; norm: unknown }[];
  assert.ok(cases.length > 80);
  for (const c of cases) {
    const bytes = new Uint8Array(Buffer.from(c.b64, 'base64'));
    const v = unpickle(bytes, {}, { exactFloats: true });
    assert.deepEqual(normSets(norm(v)), normSets(c.norm), `${c.name} protocol ${c.proto}`);
  }
});

test('unpickle: OrderedDict keeps order and _metadata; shared and recursive references', () => {
  const out = py(`
import pickle, sys, base64
od = collections.OrderedDict([('stage1.0.conv.weight', 1), ('a', 2)])
od._metadata = {'': {'version': 1}}
x = [1]
rec = []; rec.append(rec)
print(base64.b64encode(pickle.dumps({'od': od, 'shared': [x, x], 'rec': rec}, protocol=2)).decode())
`);
  const v = unpickle(new Uint8Array(Buffer.from(out.trim(), 'base64'))) as Map<string, PyValue>;
  const od = v.get('od') as PyOrderedDict;
  assert.ok(od instanceof PyOrderedDict);
  assert.deepEqual([...od.keys()], ['stage1.0.conv.weight', 'a']);
  assert.equal(od.get('stage1.0.conv.weight'), 1);
  assert.ok(od.attrs.get('_metadata') instanceof Map);
  const shared = v.get('shared') as PyValue[][];
  assert.equal(shared[0], shared[1]);
  const rec = v.get('rec') as PyValue[];
  assert.equal(rec[0], rec);
});

test('unpickle: unknown globals stay inert placeholders (never executed)', () => {
  // os.system('echo pwned') in protocol 0 and 2 forms, plus a class instance via NEWOBJ/BUILD
  const evil0 = new TextEncoder().encode("cos\nsystem\n(S'echo pwned'\ntR.");
  const u = unpickle(evil0) as PyUnknown;
  assert.ok(u instanceof PyUnknown);
  assert.equal(u.kind, 'unknown-global');
  assert.equal(u.module, 'os');
  assert.equal(u.name, 'system');
  assert.deepEqual(u.args, ['echo pwned']);

  const out = py(`
import fractions, datetime, base64
class_obj = fractions.Fraction(1, 3)
print(base64.b64encode(pickle.dumps([fractions.Fraction(1, 3), datetime.date(2020, 1, 2), collections.Counter('aab')], protocol=2)).decode())
print(base64.b64encode(pickle.dumps([fractions.Fraction(1, 3), collections.Counter('aab')], protocol=4)).decode())
`);
  const [l2, l4] = out.trim().split('\n');
  const v = unpickle(new Uint8Array(Buffer.from(l2, 'base64'))) as PyUnknown[];
  assert.equal(v[0].module, 'fractions');
  assert.equal(v[0].name, 'Fraction');
  assert.deepEqual(v[0].args, [1, 3]);
  assert.equal(v[1].module, 'datetime');
  assert.ok(v[1].args?.[0] instanceof Uint8Array);
  assert.equal(v[2].name, 'Counter');
  const v4 = unpickle(new Uint8Array(Buffer.from(l4, 'base64'))) as PyUnknown[];
  assert.equal(v4[0].name, 'Fraction');
  assert.ok(v4[1] instanceof PyUnknown);
});

test('unpickle: findClass and persistentLoad hooks', () => {
  const out = py(`
import io, base64
class P(pickle.Pickler):
    def persistent_id(self, obj):
        return ('storage', obj[1]) if isinstance(obj, tuple) and obj and obj[0] == 'ext' else None
b = io.BytesIO(); P(b, protocol=2).dump({'w': ('ext', 'k0'), 'n': 5}); print(base64.b64encode(b.getvalue()).decode())
b = io.BytesIO(); P(b, protocol=0).dump({'w': ('ext', 'k1')}); print(base64.b64encode(b.getvalue()).decode())
`);
  const [a, b] = out.trim().split('\n');
  const seen: PyValue[] = [];
  const v = unpickle(new Uint8Array(Buffer.from(a, 'base64')), {
    persistentLoad: (pid) => {
      seen.push(pid);
      return 'resolved';
    },
  }) as Map<string, PyValue>;
  assert.equal(v.get('w'), 'resolved');
  assert.deepEqual(norm(seen[0]), { $tuple: ['storage', 'k0'] });
  // protocol 0 persistent ids are text (PERSID); python 3 writes str(pid)
  assert.throws(() => unpickle(new Uint8Array(Buffer.from(b, 'base64'))), /persistent/);
  const g = unpickle(new TextEncoder().encode('cmymod\nThing\n.'), {
    findClass: (m, n) => (m === 'mymod' ? `resolved ${n}` : undefined),
  });
  assert.equal(g, 'resolved Thing');
});

test('unpickle: errors name the position', () => {
  const good = pickle(new Map<PyValue, PyValue>([['a', [1, 2, 3]], ['b', 'hello']]));
  for (let cut = 0; cut < good.length; cut++) {
    assert.throws(() => unpickle(good.subarray(0, cut)), (e: Error) => /unpickle: .* at byte \d+/.test(e.message), `cut ${cut}`);
  }
  assert.throws(() => unpickle(Uint8Array.from([0x80, 0x02, 0xff, 0x2e])), /unknown opcode 0xff at byte 2/);
  assert.throws(() => unpickle(Uint8Array.from([0x80, 0x02, 0x52, 0x2e])), /stack underflow at byte 2/);
  assert.throws(() => unpickle(Uint8Array.from([0x80, 0x02, 0x4b, 0x01, 0x74, 0x2e])), /MARK.*at byte 4/);
  assert.throws(() => unpickle(Uint8Array.from([0x80, 0x02, 0x68, 0x07, 0x2e])), /memo key 7 not found at byte 2/);
  assert.throws(() => unpickle(Uint8Array.from([0x2e])), /stack underflow/);
});

test('pickle: written values load in CPython with the same meaning', () => {
  const od = new PyOrderedDict();
  od.set('stage1.0.conv.weight', 1);
  od.set('a', new PyFloat(2));
  od.attrs.set('_metadata', new Map([['', new Map([['version', 1]])]]));
  const shared = [1];
  const value = new Map<PyValue, PyValue>([
    ['none', null],
    ['bools', [true, false]],
    ['ints', [0, 1, 255, 256, 65535, 65536, -1, -256, 2 ** 31 - 1, -(2 ** 31), 2 ** 31, 2 ** 53 - 1, 2n ** 53n, -(2n ** 53n) - 1n, 2n ** 63n, 2n ** 100n, -(2n ** 100n), 127n, 128n, -128n, -129n]],
    ['floats', [0.5, -1.25, 1e300, 2 ** 53, NaN, Infinity, new PyFloat(1), new PyFloat(0), -0]],
    ['strs', ['', 'abc', 'nïvé 😀', 'x'.repeat(300)]],
    ['bytes', [new Uint8Array(0), Uint8Array.from([0, 255, 97]), Uint8Array.from({ length: 256 }, (_, i) => i)]],
    ['list', [1, 2.5, 'a', [], [[1]]]],
    ['tuples', [new PyTuple([]), new PyTuple([1]), new PyTuple([1, 2]), new PyTuple([1, 2, 3]), new PyTuple([1, 2, 3, 4])]],
    ['dict', new Map<PyValue, PyValue>([['a', 1], [3, 'int key'], [null, 0]])],
    ['plain', { x: 1, y: 'two' }],
    ['odict', od],
    ['set', new Set<PyValue>([1, 2, 3])],
    ['frozenset', new PyFrozenSet(['a', 'b'])],
    ['slice', new PySlice(1, 5, 2)],
    ['shared', [shared, shared]],
    ['long', Array.from({ length: 2500 }, (_, i) => i)],
    ['bigdict', new Map<PyValue, PyValue>(Array.from({ length: 1500 }, (_, i) => [`k${i}`, i] as [PyValue, PyValue]))],
  ]);
  const bytes = pickle(value);
  const out = py(
    `
b = base64.b64decode(sys.stdin.read())
v = pickle.loads(b)
assert v['shared'][0] is v['shared'][1]
print(json.dumps(norm(v)))
`,
    Buffer.from(bytes).toString('base64'),
  );
  assert.deepEqual(normSets(JSON.parse(out)), normSets(norm(value)));
  // and back in TS
  assert.deepEqual(normSets(norm(unpickle(bytes, {}, { exactFloats: true }))), normSets(norm(value)));
});

test('pickle: globals, REDUCE, BUILD and persistent ids', () => {
  const v = new PyTuple([
    new PyGlobal('collections', 'OrderedDict'),
    new PyReduce(new PyGlobal('builtins', 'complex'), new PyTuple([new PyFloat(1), new PyFloat(2)])),
    new PyPersistent(new PyTuple(['storage', 'k'])),
  ]);
  const bytes = pickle(v);
  const out = py(
    `
import io
class U(pickle.Unpickler):
    def persistent_load(self, pid):
        return 'pid:' + repr(pid)
v = U(io.BytesIO(base64.b64decode(sys.stdin.read()))).load()
print(repr(v))
`,
    Buffer.from(bytes).toString('base64'),
  );
  assert.equal(out.trim(), "(<class 'collections.OrderedDict'>, (1+2j), \"pid:('storage', 'k')\")");
  const back = unpickle(bytes, { persistentLoad: (pid) => new PyTuple(['got', pid]) }) as PyTuple;
  assert.ok(back.items[0] instanceof PyPersistent === false);
  const cx = back.items[1] as PyUnknown;
  assert.equal(cx.name, 'complex');
  assert.deepEqual(cx.args, [1, 2]);
  assert.throws(() => pickle(new PyTuple([Symbol('x') as unknown as PyValue])), /cannot serialize/);
  assert.throws(() => pickle(new (class Foo {})()), /cannot serialize object of type Foo/);
});
