/**
 * PyTorch zip checkpoints: files written by Python's torch.save load in TS,
 * files written by TS load in Python's torch.load (Debian /usr/bin/python3 with
 * torch; REPOPT_PYTHON overrides), the reference scale files load, and broken
 * files fail with clear errors.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { execFileSync } from 'node:child_process';
import * as torch from '../src/torch/index.js';
import { Tensor, type DType } from '../src/torch/index.js';
import { loadPth, loadPthAsync, savePth, serializePth, extractStateDict } from '../src/io/pth.js';
import { PyFloat, PyOrderedDict, PyTuple, type PyValue } from '../src/io/pickle.js';
import { openZip, writeZip } from '../src/io/zip.js';
import { SCALES_DIR } from './helpers/paths.js';

const PYTHON = process.env.REPOPT_PYTHON ?? '/usr/bin/python3';
// dist/test/pth.test.js -> repo root is two levels up (also works from test/ via tsx-like runners)
const SCALES = SCALES_DIR;

let tmp = '';
before(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'repopt-pth-'));
});
after(() => {
  if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
});

function py(script: string, args: string[] = []): string {
  return execFileSync(PYTHON, ['-c', script, ...args], { encoding: 'utf8', maxBuffer: 256 << 20 });
}

// Python helper: tensor → {shape, stride?, dtype, data} with halfs as raw bits
const PY_J = `
import sys, json, math, collections, torch
NAMES = {torch.float32: 'float32', torch.float64: 'float64', torch.float16: 'float16', torch.bfloat16: 'bfloat16',
         torch.int64: 'int64', torch.int32: 'int32', torch.int16: 'int16', torch.int8: 'int8', torch.uint8: 'uint8', torch.bool: 'bool'}
def J(t):
    rg = t.requires_grad
    t = t.detach()
    if t.dtype in (torch.float16, torch.bfloat16):
        data = [v & 0xffff for v in t.contiguous().view(torch.int16).reshape(-1).tolist()]
    elif t.dtype == torch.int64:
        data = [str(v) for v in t.reshape(-1).tolist()]
    elif t.dtype == torch.bool:
        data = [int(v) for v in t.reshape(-1).tolist()]
    else:
        data = [v if not isinstance(v, float) or math.isfinite(v) else str(v) for v in t.reshape(-1).tolist()]
    return {'shape': list(t.shape), 'dtype': NAMES[t.dtype], 'data': data, 'requires_grad': rg}
`;

interface JT {
  shape: number[];
  dtype: DType;
  data: (number | string)[];
  requires_grad: boolean;
}

/** Tensor values in the same form as PY_J's J(). */
function jvals(t: Tensor): (number | string)[] {
  const a = t.toTypedArray();
  if (a instanceof BigInt64Array) return Array.from(a, (x) => x.toString());
  return Array.from(a as ArrayLike<number>, (v) => (Number.isFinite(v) ? v : Number.isNaN(v) ? 'nan' : v > 0 ? 'inf' : '-inf'));
}

function assertTensorEq(t: PyValue | undefined, j: JT, what: string): void {
  assert.ok(t instanceof Tensor, `${what}: expected a Tensor`);
  assert.deepEqual(t.shape, j.shape, `${what}: shape`);
  assert.equal(t.dtype, j.dtype, `${what}: dtype`);
  assert.deepEqual(jvals(t), j.data, `${what}: values`);
  assert.equal(t.requiresGrad, j.requires_grad, `${what}: requires_grad`);
}

function disposeAll(v: unknown, seen = new Set<unknown>()): void {
  if (v === null || typeof v !== 'object' || seen.has(v)) return;
  seen.add(v);
  if (v instanceof Tensor) return v.dispose();
  if (v instanceof Map) for (const x of v.values()) disposeAll(x, seen);
  else if (Array.isArray(v)) for (const x of v) disposeAll(x, seen);
  else if (v instanceof PyTuple) for (const x of v.items) disposeAll(x, seen);
}

const GEN_PY = `${PY_J}
out_dir = sys.argv[1]
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
model(torch.randn(2, 3, 8, 8))  # update running stats / num_batches_tracked
sd = model.state_dict()
assert hasattr(sd, '_metadata')
torch.save(sd, out_dir + '/sd.pth')
torch.save({'model': sd, 'epoch': 3, 'acc': 0.5, 'name': 'x', 'lst': [1, 2.5, 'a'], 'tup': (1, 2.0), 'flag': True,
            'none': None, 'one': 1.0, 'big': 2**70}, out_dir + '/nested.pth')
dt = collections.OrderedDict()
dt['float32'] = torch.tensor([1.5, -2.25, float('inf'), float('nan')], dtype=torch.float32)
dt['float64'] = torch.tensor([[1e-300, 2.0], [3.0, -4.5]], dtype=torch.float64)
dt['int64'] = torch.tensor([2**62, -2**62, 0, 7], dtype=torch.int64)
dt['uint8'] = torch.tensor([0, 1, 255], dtype=torch.uint8)
dt['bool'] = torch.tensor([[True, False], [False, True]])
dt['float16'] = torch.tensor([0.5, 65504.0, -1e-3], dtype=torch.float16)
dt['bfloat16'] = torch.tensor([1.0, -3.5e38, 1e-3], dtype=torch.bfloat16)
dt['int32'] = torch.tensor([-2**31, 2**31 - 1], dtype=torch.int32)
dt['int16'] = torch.tensor([-32768, 32767], dtype=torch.int16)
dt['int8'] = torch.tensor([-128, 127], dtype=torch.int8)
dt['scalar'] = torch.tensor(3.25)
dt['empty'] = torch.zeros(0, 3)
torch.save(dt, out_dir + '/dtypes.pth')
base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
views = {'base': base, 'cols': base[:, 1::2], 't': base.t(), 'row': base[2], 'elem': base[3, 5]}
assert views['cols'].untyped_storage().data_ptr() == base.untyped_storage().data_ptr() if hasattr(base, 'untyped_storage') else True
torch.save(views, out_dir + '/views.pth')
p = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
torch.save({'p': p, 'frozen': torch.nn.Parameter(torch.tensor([3.0]), requires_grad=False), 'g': torch.ones(2, requires_grad=True)}, out_dir + '/param.pth')
exp = {
  'sd': [[k, J(v)] for k, v in sd.items()],
  'sd_metadata_keys': list(sd._metadata.keys()),
  'dtypes': [[k, J(v)] for k, v in dt.items()],
  'views': {k: J(v) for k, v in views.items()},
  'param': {'p': J(p), 'frozen': True, 'g': J(torch.ones(2, requires_grad=True))},
}
print(json.dumps(exp))
`;

interface Expected {
  sd: [string, JT][];
  sd_metadata_keys: string[];
  dtypes: [string, JT][];
  views: Record<string, JT>;
  param: { p: JT; g: JT };
}

let expected: Expected | undefined;
function fixtures(): Expected {
  if (!expected) expected = JSON.parse(py(GEN_PY, [tmp])) as Expected;
  return expected;
}

test('load torch.save(state_dict): OrderedDict with _metadata, ordered name -> Tensor', () => {
  const exp = fixtures();
  const live = torch.liveTensors();
  const v = loadPth(path.join(tmp, 'sd.pth'));
  assert.ok(v instanceof PyOrderedDict);
  assert.deepEqual([...v.keys()], exp.sd.map(([k]) => k));
  for (const [k, j] of exp.sd) assertTensorEq(v.get(k), j, k);
  const meta = v.attrs.get('_metadata');
  assert.ok(meta instanceof PyOrderedDict);
  assert.deepEqual([...meta.keys()], exp.sd_metadata_keys);
  assert.equal((v.get('1.num_batches_tracked') as Tensor).dtype, 'int64');
  // exactly the returned tensors are alive: storages were disposed
  assert.equal(torch.liveTensors() - live, exp.sd.length);
  disposeAll(v);
  assert.equal(torch.liveTensors(), live);
});

test('load nested dict with scalars, strings, lists, tuples, None', async () => {
  const exp = fixtures();
  const v = (await loadPthAsync(path.join(tmp, 'nested.pth'), { exactFloats: true })) as Map<string, PyValue>;
  assert.ok(v instanceof Map && !(v instanceof PyOrderedDict));
  assert.deepEqual([...v.keys()], ['model', 'epoch', 'acc', 'name', 'lst', 'tup', 'flag', 'none', 'one', 'big']);
  const sd = v.get('model') as PyOrderedDict;
  for (const [k, j] of exp.sd) assertTensorEq(sd.get(k), j, k);
  assert.equal(v.get('epoch'), 3);
  assert.equal(v.get('acc'), 0.5);
  assert.equal(v.get('name'), 'x');
  assert.deepEqual(v.get('lst'), [1, 2.5, 'a']);
  assert.deepEqual(v.get('tup'), new PyTuple([1, new PyFloat(2)]));
  assert.equal(v.get('flag'), true);
  assert.equal(v.get('none'), null);
  assert.deepEqual(v.get('one'), new PyFloat(1));
  assert.equal(v.get('big'), 2n ** 70n);
  const sd2 = extractStateDict(v);
  assert.deepEqual([...sd2.keys()], exp.sd.map(([k]) => k));
  disposeAll(v);
});

test('load every dtype', () => {
  const exp = fixtures();
  const v = loadPth(path.join(tmp, 'dtypes.pth')) as PyOrderedDict;
  assert.deepEqual([...v.keys()], exp.dtypes.map(([k]) => k));
  for (const [k, j] of exp.dtypes) assertTensorEq(v.get(k), j, k);
  disposeAll(v);
});

test('load views sharing one storage (non-contiguous, offset, 0-d)', () => {
  const exp = fixtures();
  const bytes = fs.readFileSync(path.join(tmp, 'views.pth'));
  assert.equal(openZip(bytes).names().filter((n) => n.includes('/data/')).length, 1, 'python wrote one shared storage');
  const v = loadPth(bytes) as Map<string, PyValue>;
  for (const [k, j] of Object.entries(exp.views)) assertTensorEq(v.get(k), j, k);
  const cols = v.get('cols') as Tensor;
  assert.deepEqual(cols.shape, [4, 3]);
  disposeAll(v);
});

test('load parameters keeps requires_grad', () => {
  const exp = fixtures();
  const v = loadPth(path.join(tmp, 'param.pth')) as Map<string, PyValue>;
  assertTensorEq(v.get('p'), exp.param.p, 'p');
  assert.equal((v.get('p') as Tensor).requiresGrad, true);
  assert.equal((v.get('frozen') as Tensor).requiresGrad, false);
  assertTensorEq(v.get('g'), exp.param.g, 'g');
  disposeAll(v);
});

const CHECK_PY = `${PY_J}
path = sys.argv[1]
obj = torch.load(path)
def walk(x):
    if isinstance(x, torch.Tensor): return {'tensor': J(x)}
    if isinstance(x, collections.OrderedDict):
        return {'odict': [[k, walk(v)] for k, v in x.items()], 'attrs': sorted(getattr(x, '__dict__', {}).keys())}
    if isinstance(x, dict): return {'dict': [[repr(k), walk(v)] for k, v in x.items()]}
    if isinstance(x, list): return {'list': [walk(v) for v in x]}
    if isinstance(x, tuple): return {'tuple': [walk(v) for v in x]}
    return {'type': type(x).__name__, 'repr': repr(x)}
out = walk(obj)
out['same'] = obj['model']['a'] is obj['model']['a_again']
out['distinct_storages'] = obj['model']['a'].data_ptr() != obj['model']['b'].data_ptr()
print(json.dumps(out))
`;

type Walk = {
  tensor?: JT;
  odict?: [string, Walk][];
  attrs?: string[];
  dict?: [string, Walk][];
  list?: Walk[];
  tuple?: Walk[];
  type?: string;
  repr?: string;
  same?: boolean;
  distinct_storages?: boolean;
};

test('save in TS, torch.load in Python: values, dtypes, key order, scalars', () => {
  const f32 = torch.fromTypedArray(Float32Array.from([1.5, -2.25, Infinity, NaN, 1e-40]), [5], 'float32');
  const base = torch.fromTypedArray(Float64Array.from({ length: 12 }, (_, i) => i * 1.5), [3, 4], 'float64');
  const view = base.asStrided([2, 2], [1, 4], 1); // non-contiguous, offset
  const tensors: [string, Tensor][] = [
    ['z.first', f32],
    ['a', torch.fromTypedArray(Float32Array.from([1, 2, 3, 4, 5, 6]), [2, 3], 'float32')],
    ['b', torch.fromTypedArray(Float32Array.from([7]), [], 'float32')],
    ['f64', base],
    ['view', view],
    ['i64', torch.fromTypedArray(BigInt64Array.from([2n ** 62n, -(2n ** 62n), 0n]), [3], 'int64')],
    ['i32', torch.fromTypedArray(Int32Array.from([-(2 ** 31), 2 ** 31 - 1]), [2], 'int32')],
    ['i16', torch.fromTypedArray(Int16Array.from([-32768, 32767]), [2], 'int16')],
    ['i8', torch.fromTypedArray(Int8Array.from([-128, 127]), [2], 'int8')],
    ['u8', torch.fromTypedArray(Uint8Array.from([0, 1, 255]), [3], 'uint8')],
    ['bool', torch.fromTypedArray(Uint8Array.from([1, 0, 0, 1]), [2, 2], 'bool')],
    ['f16', torch.fromTypedArray(Uint16Array.from([0x3800, 0x7bff, 0x8001]), [3], 'float16')],
    ['bf16', torch.fromTypedArray(Uint16Array.from([0x3f80, 0xff7f, 0x0001]), [3], 'bfloat16')],
    ['empty', torch.fromTypedArray(new Float32Array(0), [0, 3], 'float32')],
    ['grad', torch.fromTypedArray(Float32Array.from([1, 2]), [2], 'float32').requiresGrad_(true)],
  ];
  const sd = new PyOrderedDict();
  for (const [k, t] of tensors) sd.set(k, t);
  sd.set('a_again', tensors[1][1]);
  sd.attrs.set('_metadata', new PyOrderedDict([['', new Map([['version', 1]])]]));
  const value = new Map<PyValue, PyValue>([
    ['model', sd],
    ['epoch', 3],
    ['acc', 0.5],
    ['lr', new PyFloat(1)],
    ['name', 'x'],
    ['lst', [1, 2.5, 'a']],
    ['tup', new PyTuple([1, 'b'])],
    ['flag', true],
    ['none', null],
    ['big', 2n ** 70n],
  ]);
  const file = path.join(tmp, 'from-ts.pth');
  savePth(file, value);
  const out = JSON.parse(py(CHECK_PY, [file])) as Walk;
  assert.equal(out.same, true, 'same tensor object twice stays one object');
  assert.equal(out.distinct_storages, true);
  const top = out.dict!;
  assert.deepEqual(top.map(([k]) => k), ["'model'", "'epoch'", "'acc'", "'lr'", "'name'", "'lst'", "'tup'", "'flag'", "'none'", "'big'"]);
  const get = (k: string): Walk => top.find(([n]) => n === `'${k}'`)![1];
  const model = get('model');
  assert.deepEqual(model.attrs, ['_metadata']);
  assert.deepEqual(model.odict!.map(([k]) => k), [...sd.keys()]);
  for (const [k, w] of model.odict!) {
    const t = sd.get(k) as Tensor;
    assert.ok(w.tensor, k);
    assert.deepEqual(w.tensor.shape, t.shape, `${k} shape`);
    assert.equal(w.tensor.dtype, t.dtype, `${k} dtype`);
    assert.deepEqual(w.tensor.data, jvals(t), `${k} values`);
    assert.equal(w.tensor.requires_grad, t.requiresGrad, `${k} requires_grad`);
  }
  assert.deepEqual(get('epoch'), { type: 'int', repr: '3' });
  assert.deepEqual(get('acc'), { type: 'float', repr: '0.5' });
  assert.deepEqual(get('lr'), { type: 'float', repr: '1.0' });
  assert.deepEqual(get('name'), { type: 'str', repr: "'x'" });
  assert.deepEqual(get('lst'), { list: [{ type: 'int', repr: '1' }, { type: 'float', repr: '2.5' }, { type: 'str', repr: "'a'" }] });
  assert.deepEqual(get('tup'), { tuple: [{ type: 'int', repr: '1' }, { type: 'str', repr: "'b'" }] });
  assert.deepEqual(get('flag'), { type: 'bool', repr: 'True' });
  assert.deepEqual(get('none'), { type: 'NoneType', repr: 'None' });
  assert.deepEqual(get('big'), { type: 'int', repr: String(2n ** 70n) });

  // the state dict alone also passes torch.load(weights_only=True) (torch 1.13's restricted
  // unpickler has no BINFLOAT, so the full dict with floats cannot be checked that way)
  const sdFile = path.join(tmp, 'sd-from-ts.pth');
  savePth(sdFile, sd);
  const wo = py(`import torch, sys
sd = torch.load(sys.argv[1], weights_only=True)
print(type(sd).__name__, len(sd), sd['a'] is sd['a_again'], list(sd._metadata.keys()))`, [sdFile]);
  assert.equal(wo.trim(), `OrderedDict ${sd.size} True ['']`);

  // round trip in TS too
  const back = loadPth(file, { exactFloats: true }) as Map<string, PyValue>;
  const sdBack = back.get('model') as PyOrderedDict;
  assert.deepEqual([...sdBack.keys()], [...sd.keys()]);
  for (const [k, t] of sd) {
    const u = sdBack.get(k) as Tensor;
    assert.deepEqual(u.shape, (t as Tensor).shape);
    assert.equal(u.dtype, (t as Tensor).dtype);
    assert.deepEqual(jvals(u), jvals(t as Tensor), String(k));
  }
  assert.equal(sdBack.get('a'), sdBack.get('a_again'));
  assert.deepEqual(back.get('lr'), new PyFloat(1));
  disposeAll(back);

  // data records are 64-byte aligned like PyTorch's writer
  const bytes = fs.readFileSync(file);
  const z = openZip(bytes, file);
  for (const e of z.entries) {
    const dv = new DataView(bytes.buffer, bytes.byteOffset);
    const dataStart = e.localHeaderOffset + 30 + dv.getUint16(e.localHeaderOffset + 26, true) + dv.getUint16(e.localHeaderOffset + 28, true);
    assert.equal(dataStart % 64, 0, e.name);
  }
  // torch 1.13 does not need the alignment: an unaligned copy loads too
  const unaligned = path.join(tmp, 'unaligned.pth');
  fs.writeFileSync(unaligned, writeZip(z.names().map((n) => [n, z.read(n)]), 1));
  assert.deepEqual(JSON.parse(py(CHECK_PY, [unaligned])), out);
  view.dispose();
  disposeAll(value);
});

test('save a plain dict and a bare tensor; archive name is arbitrary on load', () => {
  const t = torch.fromTypedArray(Float32Array.from([1, 2, 3]), [3], 'float32');
  const file = path.join(tmp, 'plain.pth');
  savePth(file, { w: t, n: 2 } as unknown as PyValue, 'my_model');
  const out = py(`import torch, sys
d = torch.load(sys.argv[1])
print(type(d).__name__, list(d.keys()), d['w'].tolist(), d['n'])
t = torch.load(sys.argv[2])
print(type(t).__name__, t.tolist())`, [file, (savePth(path.join(tmp, 'bare.pth'), t), path.join(tmp, 'bare.pth'))]);
  assert.equal(out.trim(), "dict ['w', 'n'] [1.0, 2.0, 3.0] 2\nTensor [1.0, 2.0, 3.0]");
  const back = loadPth(file) as Map<string, PyValue>;
  assert.deepEqual(jvals(back.get('w') as Tensor), [1, 2, 3]);
  disposeAll(back);
  const bare = loadPth(path.join(tmp, 'bare.pth')) as Tensor;
  assert.deepEqual(jvals(bare), [1, 2, 3]);
  bare.dispose();
  t.dispose();
});

test('reference scale files (RepOpt official)', () => {
  const b1 = loadPth(path.join(SCALES, 'RepOpt-VGG-B1-scales.pth'));
  assert.ok(b1 instanceof PyOrderedDict, 'B1 is an OrderedDict');
  const sd = extractStateDict(b1);
  assert.equal(sd.size, 79);
  let n = 0;
  let sum = 0;
  for (const t of sd.values()) {
    assert.equal(t.dtype, 'float32');
    const a = t.toTypedArray() as Float32Array;
    n += a.length;
    for (const x of a) sum += x;
  }
  assert.equal(n, 34048);
  assert.ok(Math.abs(sum - 19610.035966) < 1e-3, `sum ${sum}`);
  const w = Array.from((sd.get('stage0.scale_1x1.weight') as Tensor).toTypedArray() as Float32Array).slice(0, 4);
  const want = [1.1733118, 0.3190754, 1.296756, 0.5509108];
  w.forEach((x, i) => assert.ok(Math.abs(x - want[i]) < 1e-6, `weight[${i}] = ${x}`));
  disposeAll(b1);

  const counts: Record<string, number> = {};
  for (const f of ['RepOpt-VGG-B2-scales.pth', 'RepOpt-VGG-L1-scales.pth', 'RepOpt-VGG-L2-scales.pth', 'RepOptGhostNet_0_5x_scales.pth']) {
    const v = loadPth(path.join(SCALES, f));
    const s = extractStateDict(v, f);
    for (const [k, t] of s) {
      const a = t.toTypedArray() as Float32Array;
      for (const x of a) assert.ok(Number.isFinite(x), `${f} ${k} has a non-finite value`);
    }
    counts[f] = s.size;
    disposeAll(v);
  }
  assert.deepEqual(counts, {
    'RepOpt-VGG-B2-scales.pth': 79,
    'RepOpt-VGG-L1-scales.pth': 139,
    'RepOpt-VGG-L2-scales.pth': 139,
    'RepOptGhostNet_0_5x_scales.pth': 64,
  });
});

test('truncated and corrupt files give clear errors and leak nothing', () => {
  const t = torch.fromTypedArray(Float32Array.from({ length: 100 }, (_, i) => i), [10, 10], 'float32');
  const good = serializePth(new Map<PyValue, PyValue>([['w', t], ['n', 1]]));
  t.dispose();
  const live = torch.liveTensors();
  const file = path.join(tmp, 'bad.pth');
  const expectError = (bytes: Uint8Array, re: RegExp, what: string): void => {
    fs.writeFileSync(file, bytes);
    assert.throws(() => loadPth(file), (e: Error) => {
      assert.ok(e instanceof Error);
      assert.ok(e.message.includes(file), `${what}: message names the file: ${e.message}`);
      assert.match(e.message, re, what);
      return true;
    });
  };
  // every truncation point
  for (let cut = 0; cut < good.length; cut += 7) expectError(good.subarray(0, cut), /not a zip|truncated|corrupt/, `cut ${cut}`);
  expectError(new TextEncoder().encode('definitely not a zip file, just some text here'), /not a zip archive/, 'text');
  assert.throws(() => loadPth(path.join(tmp, 'does-not-exist.pth')), /does-not-exist\.pth: cannot read/);

  const z = openZip(good);
  const entries = (): [string, Uint8Array][] => z.names().map((n) => [n, z.read(n)]);
  expectError(writeZip(entries().filter(([n]) => !n.endsWith('data.pkl'))), /missing data\.pkl/, 'no data.pkl');
  expectError(writeZip(entries().filter(([n]) => !n.endsWith('/data/0'))), /missing storage record archive\/data\/0/, 'no storage');
  expectError(writeZip(entries().map(([n, d]) => [n, n.endsWith('/data/0') ? d.subarray(0, 396) : d])), /396 bytes, expected 400.*size mismatch/, 'short storage');
  // a flipped byte in the storage / the pickle is caught by the CRC
  const flipped = new Uint8Array(good);
  const info = z.entries.find((e) => e.name.endsWith('/data/0'))!;
  const dv = new DataView(flipped.buffer);
  const start = info.localHeaderOffset + 30 + dv.getUint16(info.localHeaderOffset + 26, true) + dv.getUint16(info.localHeaderOffset + 28, true);
  flipped[start + 10] ^= 0xff;
  expectError(flipped, /archive\/data\/0 is corrupt \(CRC-32 mismatch\)/, 'flipped storage byte');
  // a corrupt pickle inside a valid zip
  expectError(writeZip(entries().map(([n, d]) => [n, n.endsWith('data.pkl') ? d.subarray(0, d.length - 5) : d])), /unpickle: truncated stream/, 'cut pickle');
  const badOp = entries().map(([n, d]): [string, Uint8Array] => [n, n.endsWith('data.pkl') ? Uint8Array.from([0x80, 0x02, 0xfe, 0x2e]) : d]);
  expectError(writeZip(badOp), /unknown opcode 0xfe at byte 2/, 'bad opcode');
  assert.equal(torch.liveTensors(), live, 'no tensors leaked by failed loads');
});
