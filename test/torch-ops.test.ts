/**
 * The tensor layer against PyTorch: every section computes with our ops, sends
 * its inputs to Python, recomputes there with torch 1.13 (the same libtorch)
 * and compares values, shapes and dtypes. All sections go to Python in one run.
 */
import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import * as torch from '../src/torch/index.js';
import { F, foreach } from '../src/torch/index.js';
import { runPython, toJson, maxRelDiff, type JsonTensor } from './helpers/python.js';

type Tensor = torch.Tensor;

// ------------------------------------------------------------------ harness

type Ours = Tensor | number | number[] | boolean;

interface Check {
  key: string;
  ours: JsonTensor | number | number[] | boolean;
  tol?: number;
}

/** One section: named inputs, Python lines filling `R[key]`, and our results for each key. */
class Section {
  readonly inputs: Record<string, JsonTensor> = {};
  readonly code: string[] = [];
  readonly checks: Check[] = [];
  error: unknown = null;

  constructor(readonly name: string) {}

  /** Registers `t` as a Python variable `name` (same numbers on both sides). */
  in<T extends Tensor>(name: string, t: T): T {
    this.inputs[name] = toJson(t);
    return t;
  }
  /** A raw Python statement (setup). */
  py(line: string): void {
    this.code.push(line);
  }
  /** Compares `ours` with the Python expression `expr`. */
  cmp(key: string, ours: Ours, expr: string, tol?: number): void {
    assert.ok(!this.checks.some((c) => c.key === key), `duplicate key ${key}`);
    const o = ours instanceof torch.Tensor ? toJson(ours) : ours;
    this.checks.push({ key, ours: o, tol });
    this.code.push(`R[${JSON.stringify(key)}] = _snap(${expr})`);
  }
  payload(): unknown {
    return { inputs: this.inputs, code: this.code.join('\n') };
  }
}

function defaultTol(dtype: string): number {
  if (dtype === 'float64') return 1e-10;
  return 1e-5;
}

function isJsonTensor(x: unknown): x is JsonTensor {
  return typeof x === 'object' && x !== null && 'shape' in x && 'data' in x && 'dtype' in x;
}

function compare(sec: Section, ref: Record<string, unknown>): void {
  if ('__error__' in ref) assert.fail(`python side of section ${sec.name} failed:\n${String(ref.__error__)}`);
  assert.ok(sec.checks.length > 0, 'section has checks');
  for (const c of sec.checks) {
    const r = ref[c.key];
    assert.ok(r !== undefined, `${sec.name}/${c.key}: missing in python output`);
    if (isJsonTensor(c.ours)) {
      assert.ok(isJsonTensor(r), `${sec.name}/${c.key}: python gave ${JSON.stringify(r)}, not a tensor`);
      assert.deepEqual(c.ours.shape, r.shape, `${sec.name}/${c.key}: shape`);
      assert.equal(c.ours.dtype, r.dtype, `${sec.name}/${c.key}: dtype`);
      if (torch.isFloating(r.dtype)) {
        const d = maxRelDiff(c.ours, r);
        const tol = c.tol ?? defaultTol(r.dtype);
        assert.ok(d <= tol, `${sec.name}/${c.key}: max rel diff ${d} > ${tol}`);
      } else {
        assert.deepEqual(c.ours.data, r.data, `${sec.name}/${c.key}: values`);
      }
    } else if (typeof c.ours === 'number') {
      assert.equal(typeof r, 'number', `${sec.name}/${c.key}: python gave ${JSON.stringify(r)}`);
      const tol = c.tol ?? 0;
      assert.ok(Math.abs(c.ours - (r as number)) <= tol * Math.max(1, Math.abs(r as number)), `${sec.name}/${c.key}: ${c.ours} vs ${r}`);
    } else {
      assert.deepEqual(c.ours, r, `${sec.name}/${c.key}`);
    }
  }
}

const PY_DRIVER = `
import traceback
OUT = {}
for _name, _sec in IN.items():
    _g = {'torch': torch, 'F': torch.nn.functional, 'math': math, 'T': T,
          '_snap': lambda v: v.detach().clone() if isinstance(v, torch.Tensor) else v}
    _g.update({k: T(v) for k, v in _sec['inputs'].items()})
    _g['R'] = {}
    try:
        exec(_sec['code'], _g)
        OUT[_name] = _g['R']
    except Exception:
        OUT[_name] = {'__error__': traceback.format_exc()}
`;

const sections: Section[] = [];
function section(name: string, build: (s: Section) => void): Section {
  const s = new Section(name);
  try {
    build(s);
  } catch (e) {
    s.error = e;
  }
  sections.push(s);
  return s;
}

/** Random f32 input in [lo, hi) from a fixed generator (inputs travel to Python anyway). */
const gen = new torch.Generator(1234);
function U(shape: number[], lo = -1, hi = 1, dtype: torch.DType = 'float32'): Tensor {
  return torch.rand(shape, { generator: gen, dtype }).mul(hi - lo).add(lo);
}
function N(shape: number[], dtype: torch.DType = 'float32'): Tensor {
  return torch.randn(shape, { generator: gen, dtype });
}

// ------------------------------------------------------------------ sections (built before the Python run)

const creation = section('creation', (s) => {
  // tensor() / fromTypedArray() round trips for each dtype; Python rebuilds from the same values.
  const f32 = torch.fromTypedArray(new Float32Array([0.1, -2.5, 3e-8, 1e6, 7, -0]), [2, 3]);
  assert.equal(f32.dtype, 'float32');
  assert.deepEqual(f32.shape, [2, 3]);
  assert.deepEqual(Array.from(f32.toTypedArray() as Float32Array), Array.from(new Float32Array([0.1, -2.5, 3e-8, 1e6, 7, -0])));
  const f64 = torch.fromTypedArray(new Float64Array([0.1, Math.PI, -1e-300, 1e300]), [4]);
  assert.equal(f64.dtype, 'float64');
  assert.deepEqual(Array.from(f64.toTypedArray() as Float64Array), [0.1, Math.PI, -1e-300, 1e300]);
  const i64 = torch.fromTypedArray(new BigInt64Array([1n, -2n, 2n ** 40n, 9007199254740993n]), [2, 2]);
  assert.equal(i64.dtype, 'int64');
  assert.deepEqual(Array.from(i64.toTypedArray() as BigInt64Array), [1n, -2n, 2n ** 40n, 9007199254740993n]);
  const u8 = torch.fromTypedArray(new Uint8Array([0, 1, 128, 255]), [4]);
  assert.equal(u8.dtype, 'uint8');
  const b = torch.fromTypedArray(new Uint8Array([1, 0, 1]), [3], 'bool');
  assert.equal(b.dtype, 'bool');
  assert.deepEqual(b.tolist(), [true, false, true]);

  // nested arrays and inference
  const t1 = torch.tensor([[1, 2.5], [3, -4]]);
  assert.equal(t1.dtype, 'float32');
  assert.deepEqual(t1.shape, [2, 2]);
  assert.deepEqual(t1.tolist(), [[1, 2.5], [3, -4]]);
  const t0 = torch.tensor(0.1);
  assert.deepEqual(t0.shape, []);
  assert.equal(t0.item(), Math.fround(0.1));
  const tb = torch.tensor([true, false]);
  assert.equal(tb.dtype, 'bool');
  assert.deepEqual(tb.tolist(), [true, false]);
  const ti = torch.tensor([1n, 2n ** 60n + 1n]);
  assert.equal(ti.dtype, 'int64');
  assert.deepEqual(Array.from(ti.toTypedArray() as BigInt64Array), [1n, 2n ** 60n + 1n]);
  const tf64 = torch.tensor([0.1, 0.2], { dtype: 'float64' });
  assert.deepEqual(tf64.toArray(), [0.1, 0.2]);
  const tl = torch.tensor([1.9, -1.9, 3], { dtype: 'int64' });
  assert.deepEqual(tl.toArray(), [1, -1, 3]);
  const tbool = torch.tensor([0, 2, 1], { dtype: 'bool' });
  assert.deepEqual(tbool.toArray(), [0, 1, 1]);
  const fromTA = torch.tensor(new Float64Array([1.5, 2.5]), { dtype: 'float32' });
  assert.equal(fromTA.dtype, 'float32');
  assert.deepEqual(fromTA.toArray(), [1.5, 2.5]);
  assert.throws(() => torch.tensor([[1, 2], [3]]), /ragged/);
  const rg = torch.tensor([1, 2], { requiresGrad: true });
  assert.equal(rg.requiresGrad, true);

  s.cmp('f32', f32, 'torch.tensor([0.1, -2.5, 3e-8, 1e6, 7, -0.0], dtype=torch.float32).reshape(2, 3)', 0);
  s.cmp('f64', f64, 'torch.tensor([0.1, math.pi, -1e-300, 1e300], dtype=torch.float64)', 0);
  s.cmp('u8', u8, 'torch.tensor([0, 1, 128, 255], dtype=torch.uint8)');
  s.cmp('b', b, 'torch.tensor([True, False, True])');
  s.cmp('t1', t1, 'torch.tensor([[1, 2.5], [3, -4]])', 0);
  s.cmp('t0', t0, 'torch.tensor(0.1)', 0);
  s.cmp('tl', tl, 'torch.tensor([1.9, -1.9, 3]).to(torch.int64)');
  s.cmp('tbool', tbool, 'torch.tensor([0, 2, 1], dtype=torch.bool)');

  // constants and ranges (dtype inference as PyTorch for arange; float32 default for the rest)
  s.cmp('zeros', torch.zeros([2, 3]), 'torch.zeros(2, 3)');
  s.cmp('ones_f64', torch.ones([4], { dtype: 'float64' }), 'torch.ones(4, dtype=torch.float64)');
  s.cmp('ones_i64', torch.ones([2], { dtype: 'int64' }), 'torch.ones(2, dtype=torch.int64)');
  s.cmp('full', torch.full([2, 2], 2.5), 'torch.full((2, 2), 2.5)');
  s.cmp('full_int_value', torch.full([3], 7), 'torch.full((3,), 7.0)');
  s.cmp('full_i32', torch.full([3], 7, { dtype: 'int32' }), 'torch.full((3,), 7, dtype=torch.int32)');
  s.cmp('full_bool', torch.full([2], true, { dtype: 'bool' }), 'torch.full((2,), True)');
  s.cmp('arange_end', torch.arange(5), 'torch.arange(5)');
  s.cmp('arange_step', torch.arange(2, 11, 3), 'torch.arange(2, 11, 3)');
  s.cmp('arange_neg', torch.arange(5, 0, -2), 'torch.arange(5, 0, -2)');
  s.cmp('arange_float', torch.arange(0, 1, 0.25), 'torch.arange(0, 1, 0.25)');
  s.cmp('arange_float_end', torch.arange(2.5), 'torch.arange(2.5)');
  s.cmp('arange_f64', torch.arange(0, 3, 1, { dtype: 'float64' }), 'torch.arange(0, 3, 1, dtype=torch.float64)');
  s.cmp('eye', torch.eye(3), 'torch.eye(3)');
  const ref = s.in('ref', N([2, 3], 'float64'));
  s.cmp('zeros_like', torch.zerosLike(ref), 'torch.zeros_like(ref)');
  s.cmp('ones_like_f32', torch.onesLike(ref, { dtype: 'float32' }), 'torch.ones_like(ref, dtype=torch.float32)');
  s.cmp('full_like', torch.fullLike(ref, -3), 'torch.full_like(ref, -3)');

  // random draws: the same libtorch generators, so the same numbers exactly
  torch.manualSeed(42);
  const r1 = torch.rand([3, 4]);
  const r2 = torch.randn([4, 10]); // >= 16 elements: the vectorised normal path
  const r3 = torch.randint(-5, 5, [7]);
  const r4 = torch.rand([5], { dtype: 'float64' });
  const r5 = torch.randn([3], { dtype: 'float64' });
  s.py('torch.manual_seed(42)');
  s.cmp('rand', r1, 'torch.rand(3, 4)', 0);
  s.cmp('randn', r2, 'torch.randn(4, 10)', 0);
  s.cmp('randint', r3, 'torch.randint(-5, 5, (7,))');
  s.cmp('rand_f64', r4, 'torch.rand(5, dtype=torch.float64)', 0);
  s.cmp('randn_f64', r5, 'torch.randn(3, dtype=torch.float64)', 0);
  torch.manualSeed(7n);
  s.cmp('randperm', torch.randperm(10), '(torch.manual_seed(7), torch.randperm(10))[1]');
  torch.manualSeed(3);
  const u = torch.empty([6]).uniform_(-2, 2);
  const n = torch.empty([20], { dtype: 'float64' }).normal_(1, 0.5);
  s.cmp('uniform_', u, '(torch.manual_seed(3), torch.empty(6).uniform_(-2, 2))[1]', 0);
  s.cmp('normal_', n, 'torch.empty(20, dtype=torch.float64).normal_(1, 0.5)', 0);

  // a Generator of our own, independent of the global one
  const g = new torch.Generator(2024);
  torch.manualSeed(1);
  const g1 = torch.rand([4], { generator: g });
  const g2 = torch.randn([18], { generator: g });
  const g3 = torch.randint(0, 100, [5], { generator: g });
  const afterGlobal = torch.rand([2]); // the global stream is untouched by g
  s.py('g = torch.Generator().manual_seed(2024)');
  s.cmp('gen_rand', g1, 'torch.rand(4, generator=g)', 0);
  s.cmp('gen_randn', g2, 'torch.randn(18, generator=g)', 0);
  s.cmp('gen_randint', g3, 'torch.randint(0, 100, (5,), generator=g)');
  s.cmp('gen_global', afterGlobal, '(torch.manual_seed(1), torch.rand(2))[1]', 0);

  // reproducibility on our side: same seed, same numbers; state save/restore
  torch.manualSeed(99);
  const a1 = torch.randn([50]).toArray();
  torch.manualSeed(99);
  const a2 = torch.randn([50]).toArray();
  assert.deepEqual(a1, a2);
  const h = new torch.Generator(5);
  const state = h.getState();
  const d1 = torch.rand([8], { generator: h }).toArray();
  const d2 = torch.rand([8], { generator: h }).toArray();
  assert.notDeepEqual(d1, d2);
  h.setState(state);
  assert.deepEqual(torch.rand([8], { generator: h }).toArray(), d1);
  assert.deepEqual(torch.rand([8], { generator: new torch.Generator(5) }).toArray(), d1);
  assert.notDeepEqual(torch.rand([8], { generator: new torch.Generator(6) }).toArray(), d1);
  const ri = torch.randint(3, 6, [1000], { generator: new torch.Generator(0) });
  assert.equal(ri.min().item(), 3);
  assert.equal(ri.max().item(), 5);
});

const shapes = section('shapes', (s) => {
  const x = s.in('x', N([2, 3, 4]));
  s.cmp('reshape', x.reshape([6, 4]), 'x.reshape(6, 4)', 0);
  s.cmp('reshape_infer', x.reshape([-1, 2]), 'x.reshape(-1, 2)', 0);
  s.cmp('view', x.view([2, 12]), 'x.view(2, 12)', 0);
  const v = x.view([24]);
  assert.equal(v.storageId(), x.storageId(), 'view shares storage');
  s.cmp('permute', x.permute([2, 0, 1]), 'x.permute(2, 0, 1)', 0);
  s.cmp('permute_strides', x.permute([2, 0, 1]).strides(), 'list(x.permute(2, 0, 1).stride())');
  s.cmp('transpose', x.transpose(0, 2), 'x.transpose(0, 2)', 0);
  assert.equal(x.transpose(0, 2).isContiguous(), false);
  s.cmp('transpose_contig', x.transpose(0, 2).contiguous(), 'x.transpose(0, 2).contiguous()', 0);
  assert.equal(x.transpose(0, 2).contiguous().isContiguous(), true);
  s.cmp('transpose_contig_strides', x.transpose(0, 2).contiguous().strides(), 'list(x.transpose(0, 2).contiguous().stride())');
  const m = s.in('m', N([3, 5]));
  s.cmp('T', m.T, 'm.T', 0);
  s.cmp('narrow', x.narrow(2, 1, 2), 'x.narrow(2, 1, 2)', 0);
  s.cmp('slice', x.slice(2, 1, 4, 2), 'x[:, :, 1:4:2]', 0);
  s.cmp('slice_open', x.slice(1, 1), 'x[:, 1:]', 0);
  s.cmp('slice_neg', x.slice(2, -3, -1), 'x[:, :, -3:-1]', 0);
  s.cmp('select', x.select(1, -1), 'x.select(1, -1)', 0);
  const idx = s.in('idx', torch.tensor([3n, 0n, 3n]));
  s.cmp('index_select', x.indexSelect(2, idx), 'x.index_select(2, idx)', 0);
  const y = s.in('y', N([2, 2, 4]));
  s.cmp('cat', torch.cat([x, y], 1), 'torch.cat([x, y], 1)', 0);
  s.cmp('cat_neg', torch.cat([m, m.mul(2)], -1), 'torch.cat([m, m * 2], -1)', 0);
  s.cmp('stack', torch.stack([m, m.neg(), m.abs()], 1), 'torch.stack([m, -m, m.abs()], 1)', 0);
  s.cmp('stack0', torch.stack([m, m]), 'torch.stack([m, m])', 0);
  const img = s.in('img', N([2, 3, 5, 6]));
  s.cmp('pad_const', torch.pad(img, [1, 2, 0, 3], 'constant', 0.5), "F.pad(img, (1, 2, 0, 3), 'constant', 0.5)", 0);
  s.cmp('pad_const0', F.pad(m, [2, 1]), 'F.pad(m, (2, 1))', 0);
  s.cmp('pad_reflect', torch.pad(img, [2, 1, 1, 3], 'reflect'), "F.pad(img, (2, 1, 1, 3), 'reflect')", 0);
  s.cmp('pad_replicate', torch.pad(img, [1, 1, 2, 2], 'replicate'), "F.pad(img, (1, 1, 2, 2), 'replicate')", 0);
  s.cmp('flip', x.flip([0, 2]), 'x.flip([0, 2])', 0);
  s.cmp('flip1', x.flip(-1), 'x.flip(-1)', 0);
  s.cmp('squeeze', x.narrow(1, 0, 1).squeeze(1), 'x[:, 0:1].squeeze(1)', 0);
  s.cmp('unsqueeze', m.unsqueeze(1), 'm.unsqueeze(1)', 0);
  s.cmp('flatten', img.flatten(1), 'img.flatten(1)', 0);
  s.cmp('expand', m.narrow(0, 0, 1).expand([4, 5]), 'm[0:1].expand(4, 5)', 0);
  s.cmp('chunk1', x.chunk(2, 2)[1], 'x.chunk(2, 2)[1]', 0);
  s.cmp('split2', x.split(1, 1)[2], 'x.split(1, 1)[2]', 0);
  s.cmp('unbind', x.unbind(2)[3], 'x.unbind(2)[3]', 0);

  // channels-last: same values and shape, NHWC strides; and back
  const cl = img.toChannelsLast();
  assert.deepEqual(cl.shape, img.shape);
  assert.equal(cl.isContiguous('channelsLast'), true);
  assert.equal(cl.isContiguous(), false);
  s.cmp('cl_values', cl, 'img.contiguous(memory_format=torch.channels_last)', 0);
  s.cmp('cl_strides', cl.strides(), 'list(img.contiguous(memory_format=torch.channels_last).stride())');
  const back = cl.contiguous();
  assert.equal(back.isContiguous(), true);
  assert.deepEqual(back.strides(), img.strides());
  assert.deepEqual(back.toArray(), img.toArray());
  s.cmp('cl_clone_preserve', cl.clone('preserve').strides(), 'list(img.contiguous(memory_format=torch.channels_last).clone().stride())');
  s.cmp('cl_op', cl.mul(2).add(1), 'img.contiguous(memory_format=torch.channels_last) * 2 + 1', 0);
  s.cmp('cl_op_strides', cl.mul(2).strides(), 'list((img.contiguous(memory_format=torch.channels_last) * 2).stride())');

  // dtype conversions
  s.cmp('to_f64', m.to('float64'), 'm.double()', 0);
  s.cmp('to_i64', m.mul(3).long(), '(m * 3).long()');
  s.cmp('to_u8', m.gt(0).to('uint8'), '(m > 0).to(torch.uint8)');
});

const elementwise = section('elementwise', (s) => {
  const a = s.in('a', N([3, 4]));
  const b = s.in('b', N([4]));
  const c = s.in('c', N([3, 1]));
  const p = s.in('p', U([3, 4], 0.1, 3));
  const a64 = s.in('a64', N([3, 4], 'float64'));
  const p64 = s.in('p64', U([3, 4], 0.1, 3, 'float64'));
  const ints = s.in('ints', torch.tensor([[1n, -2n, 3n], [4n, 5n, -6n]]));

  s.cmp('add_bcast', a.add(b), 'a + b');
  s.cmp('add_bcast2', c.add(b), 'c + b');
  s.cmp('add_alpha', a.add(c, -0.5), 'torch.add(a, c, alpha=-0.5)');
  s.cmp('add_scalar', a.add(2.5), 'a + 2.5');
  s.cmp('sub', a.sub(b), 'a - b');
  s.cmp('sub_alpha', a.sub(b, 2), 'torch.sub(a, b, alpha=2)');
  s.cmp('sub_scalar', a.sub(1), 'a - 1');
  s.cmp('mul', a.mul(c), 'a * c');
  s.cmp('mul_scalar', a.mul(-3), 'a * -3');
  s.cmp('div', a.div(p), 'a / p');
  s.cmp('div_scalar', a.div(7), 'a / 7');
  s.cmp('mixed_f32_f64', a.add(a64), 'a + a64');
  s.cmp('f64_ops', a64.mul(p64).sub(a64.div(p64)), 'a64 * p64 - a64 / p64');
  s.cmp('int_add', ints.add(2), 'ints + 2');
  s.cmp('int_mul', ints.mul(ints), 'ints * ints');
  s.cmp('int_div_true', ints.div(4), 'ints / 4');
  s.cmp('int_float_promote', ints.mul(0.5), 'ints * 0.5');
  s.cmp('pow_scalar', a.pow(2), 'a ** 2');
  s.cmp('pow_frac', p.pow(1.5), 'p ** 1.5');
  s.cmp('pow_neg', p.pow(-0.5), 'p ** -0.5');
  s.cmp('pow_tensor', p.pow(c), 'p ** c');
  s.cmp('pow_f64', p64.pow(p64), 'p64 ** p64');
  s.cmp('sqrt', p.sqrt(), 'p.sqrt()');
  s.cmp('rsqrt', p.rsqrt(), 'p.rsqrt()');
  s.cmp('sqrt_f64', p64.sqrt(), 'p64.sqrt()');
  s.cmp('square', a.square(), 'a.square()');
  s.cmp('abs', a.abs(), 'a.abs()');
  s.cmp('abs_int', ints.abs(), 'ints.abs()');
  s.cmp('sign', a.sign(), 'a.sign()');
  s.cmp('sign_zero', torch.tensor([-2, 0, 3]).sign(), 'torch.tensor([-2., 0., 3.]).sign()');
  s.cmp('neg', a.neg(), '-a');
  s.cmp('exp', a.exp(), 'a.exp()');
  s.cmp('exp_f64', a64.exp(), 'a64.exp()');
  s.cmp('log', p.log(), 'p.log()');
  s.cmp('log_f64', p64.log(), 'p64.log()');
  s.cmp('tanh', a.tanh(), 'a.tanh()');
  s.cmp('sigmoid', a.sigmoid(), 'a.sigmoid()');
  s.cmp('relu', a.relu(), 'a.relu()');
  s.cmp('clamp', a.clamp(-0.5, 0.7), 'a.clamp(-0.5, 0.7)');
  s.cmp('clamp_min', a.clamp(0.1), 'a.clamp(min=0.1)');
  s.cmp('clamp_max', a.clamp(null, 0), 'a.clamp(max=0)');
  s.cmp('clamp_tensor', a.clamp(c, c.add(0.5)), 'torch.clamp(a, c, c + 0.5)');
  s.cmp('clamp_tensor_num', a.clamp(b, 1), 'torch.clamp(a, b, torch.full_like(a, 1))');
  s.cmp('clamp_int', ints.clamp(-1, 4), 'ints.clamp(-1, 4)');
  s.cmp('maximum', a.maximum(b), 'torch.maximum(a, b)');
  s.cmp('minimum', a.minimum(c), 'torch.minimum(a, c)');
  s.cmp('matmul', a.matmul(a.T), 'a @ a.T');
  s.cmp('matmul_vec', a.matmul(b), 'a @ b');
  s.cmp('matmul_f64', a64.matmul(p64.T), 'a64 @ p64.T');
  s.cmp('lerp', a.lerp(p, 0.3), 'torch.lerp(a, p, 0.3)');

  s.cmp('where', torch.where(a.gt(0), a, b), 'torch.where(a > 0, a, b)');
  s.cmp('where_bcast', torch.where(c.gt(0), a, p), 'torch.where(c > 0, a, p)');
  s.cmp('where_scalar_other', torch.where(a.gt(0), a, 0.5), 'torch.where(a > 0, a, torch.tensor(0.5))');
  s.cmp('where_scalar_self', torch.where(a.gt(0), -1.5, a), 'torch.where(a > 0, torch.tensor(-1.5), a)');
  s.cmp('where_scalars', torch.where(a.gt(0), 1, 0), 'torch.where(a > 0, 1, 0)');
  s.cmp('masked_fill', a.maskedFill(a.lt(0), -9), 'a.masked_fill(a < 0, -9)');

  s.cmp('eq', a.eq(a.clamp(0)), 'a == a.clamp(0)');
  s.cmp('eq_s', ints.eq(3), 'ints == 3');
  s.cmp('ne', ints.ne(ints.abs()), 'ints != ints.abs()');
  s.cmp('ne_s', ints.ne(5), 'ints != 5');
  s.cmp('lt', a.lt(b), 'a < b');
  s.cmp('lt_s', a.lt(0.25), 'a < 0.25');
  s.cmp('le', a.le(c), 'a <= c');
  s.cmp('le_s', ints.le(3), 'ints <= 3');
  s.cmp('gt', a.gt(b), 'a > b');
  s.cmp('gt_s', a.gt(-0.1), 'a > -0.1');
  s.cmp('ge', a.ge(c), 'a >= c');
  s.cmp('ge_s', ints.ge(-2), 'ints >= -2');
  s.cmp('bool_sum', a.gt(0).sum(), '(a > 0).sum()');
});

const reductions = section('reductions', (s) => {
  const x = s.in('x', N([3, 4, 5]));
  const x64 = s.in('x64', N([4, 6], 'float64'));
  s.cmp('sum', x.sum(), 'x.sum()');
  s.cmp('sum_dim', x.sum(1), 'x.sum(1)');
  s.cmp('sum_dims_keep', x.sum([0, 2], true), 'x.sum((0, 2), keepdim=True)');
  s.cmp('sum_neg', x.sum(-1), 'x.sum(-1)');
  s.cmp('sum_f64', x64.sum(0), 'x64.sum(0)');
  s.cmp('sum_int', torch.arange(10).sum(), 'torch.arange(10).sum()');
  s.cmp('mean', x.mean(), 'x.mean()');
  s.cmp('mean_dim', x.mean(2), 'x.mean(2)');
  s.cmp('mean_keep', x.mean([1, 2], true), 'x.mean((1, 2), keepdim=True)');
  s.cmp('mean_f64', x64.mean(1), 'x64.mean(1)');
  s.cmp('var', x.var(), 'x.var()');
  s.cmp('var_pop', x.var(undefined, { correction: 0 }), 'x.var(unbiased=False)');
  s.cmp('var_dim', x.var(1), 'x.var(1)');
  s.cmp('var_dim_keep0', x.var([0, 2], { correction: 0, keepdim: true }), 'torch.var(x, (0, 2), correction=0, keepdim=True)');
  s.cmp('var_f64_c2', x64.var(1, { correction: 2 }), 'torch.var(x64, 1, correction=2)');
  s.cmp('std', x.std(), 'x.std()');
  s.cmp('std_dim', x.std(2, { correction: 0 }), 'torch.std(x, 2, correction=0)');
  s.cmp('std_keep', x.std(0, { keepdim: true }), 'x.std(0, keepdim=True)');
  s.cmp('std_f64', x64.std(0), 'x64.std(0)');
  s.cmp('max_all', x.max(), 'x.max()');
  s.cmp('min_all', x.min(), 'x.min()');
  const mx = x.max(1);
  s.cmp('max_dim_v', mx.values, 'x.max(1).values');
  s.cmp('max_dim_i', mx.indices, 'x.max(1).indices');
  const mn = x.min(-1, true);
  s.cmp('min_dim_v', mn.values, 'x.min(-1, keepdim=True).values');
  s.cmp('min_dim_i', mn.indices, 'x.min(-1, keepdim=True).indices');
  s.cmp('amax', x.amax([0, 1]), 'x.amax((0, 1))');
  s.cmp('amin', x.amin(2, true), 'x.amin(2, keepdim=True)');
  s.cmp('argmax', x.argmax(), 'x.argmax()');
  s.cmp('argmax_dim', x.argmax(2), 'x.argmax(2)');
  s.cmp('argmax_keep', x.argmax(0, true), 'x.argmax(0, keepdim=True)');
  const tk = x.topk(3);
  s.cmp('topk_v', tk.values, 'x.topk(3).values');
  s.cmp('topk_i', tk.indices, 'x.topk(3).indices');
  const tk2 = x.topk(2, 1, false);
  s.cmp('topk_small_v', tk2.values, 'x.topk(2, 1, largest=False).values');
  s.cmp('topk_small_i', tk2.indices, 'x.topk(2, 1, largest=False).indices');
  const so = x.sort(0, true);
  s.cmp('sort_v', so.values, 'x.sort(0, descending=True).values');
  s.cmp('sort_i', so.indices, 'x.sort(0, descending=True).indices');
  s.cmp('norm', x.norm(), 'x.norm()');
  s.cmp('norm1_dim', x.norm(1, [1, 2]), 'x.norm(1, (1, 2))');
  s.cmp('item', x.sum().item(), 'x.sum().item()', 1e-6);
  s.cmp('item_int', torch.tensor([1n, 2n, 3n]).sum().item(), '6');
});

const inplace = section('inplace', (s) => {
  const a0 = s.in('a0', N([3, 4]));
  const b = s.in('b', N([4]));
  const c = s.in('c', U([3, 4], 0.5, 2));
  const a64 = s.in('a64', N([5], 'float64'));
  const e64 = s.in('e64', U([5], 0.5, 2, 'float64'));

  const run = (f: (t: Tensor) => Tensor): Tensor => {
    const t = a0.clone();
    const sid = t.storageId();
    const r = f(t);
    assert.equal(r, t, 'in-place ops return this');
    assert.equal(t.storageId(), sid, 'in-place ops keep the storage');
    return t;
  };
  s.cmp('mul_', run((t) => t.mul_(b)), 'a0.clone().mul_(b)');
  s.cmp('mul_s', run((t) => t.mul_(0.25)), 'a0.clone().mul_(0.25)');
  s.cmp('add_', run((t) => t.add_(c)), 'a0.clone().add_(c)');
  s.cmp('add_alpha', run((t) => t.add_(b, -0.1)), 'a0.clone().add_(b, alpha=-0.1)');
  s.cmp('add_s', run((t) => t.add_(3)), 'a0.clone().add_(3)');
  s.cmp('sub_alpha', run((t) => t.sub_(c, 2)), 'a0.clone().sub_(c, alpha=2)');
  s.cmp('div_', run((t) => t.div_(c)), 'a0.clone().div_(c)');
  s.cmp('div_s', run((t) => t.div_(3)), 'a0.clone().div_(3)');
  s.cmp('addcmul_', run((t) => t.addcmul_(b, c, 0.5)), 'a0.clone().addcmul_(b, c, value=0.5)');
  s.cmp('addcmul_1', run((t) => t.addcmul_(c, c)), 'a0.clone().addcmul_(c, c)');
  s.cmp('addcdiv_', run((t) => t.addcdiv_(b, c, -0.01)), 'a0.clone().addcdiv_(b, c, value=-0.01)');
  s.cmp('copy_', run((t) => t.copy_(c)), 'a0.clone().copy_(c)');
  s.cmp('copy_bcast', run((t) => t.copy_(b)), 'a0.clone().copy_(b)');
  s.cmp('copy_f64', run((t) => t.copy_(c.double())), 'a0.clone().copy_(c.double())');
  s.cmp('zero_', run((t) => t.zero_()), 'a0.clone().zero_()');
  s.cmp('fill_', run((t) => t.fill_(1.25)), 'a0.clone().fill_(1.25)');
  s.cmp('clamp_', run((t) => t.clamp_(-0.2, 0.2)), 'a0.clone().clamp_(-0.2, 0.2)');
  s.cmp('relu_', run((t) => t.relu_()), 'a0.clone().relu_()');
  s.cmp('lerp_', run((t) => t.lerp_(c, 0.9)), 'a0.clone().lerp_(c, 0.9)');
  s.cmp('sqrt_', run((t) => t.copy_(t.abs()).sqrt_()), 'a0.abs().sqrt()');
  s.cmp('chain', run((t) => t.mul_(0.9).add_(c, 0.1).addcdiv_(b, c, -1)), 'a0.clone().mul_(0.9).add_(c, alpha=0.1).addcdiv_(b, c, value=-1)');
  // f64: an SGD-with-momentum-like update
  const p = a64.clone();
  const buf = torch.zerosLike(p);
  for (let i = 0; i < 3; i++) {
    buf.mul_(0.9).add_(e64, 1);
    p.add_(buf, -0.01);
  }
  s.py('p = a64.clone(); buf = torch.zeros_like(p)');
  s.py('for _ in range(3):\n    buf.mul_(0.9).add_(e64, alpha=1)\n    p.add_(buf, alpha=-0.01)');
  s.cmp('sgd_f64', p, 'p');
  // in place through a view writes the base
  const base = a0.clone();
  base.narrow(1, 1, 2).mul_(0);
  s.cmp('view_write', base, '(lambda t: (t[:, 1:3].mul_(0), t)[1])(a0.clone())');
});

const foreachSec = section('foreach', (s) => {
  // foreach kernels against the per-tensor loop (both ours), then against PyTorch's _foreach_*
  const shapes = [[3, 4], [5], [2, 3, 2], [1]];
  const mk = (lo: number, hi: number) => shapes.map((sh) => U(sh, lo, hi));
  const xs = mk(-1, 1);
  const ys = mk(-1, 1);
  const zs = mk(0.5, 2);
  xs.forEach((t, i) => s.in(`x${i}`, t));
  ys.forEach((t, i) => s.in(`y${i}`, t));
  zs.forEach((t, i) => s.in(`z${i}`, t));
  s.py(`X = [${shapes.map((_, i) => `x${i}`).join(', ')}]`);
  s.py(`Y = [${shapes.map((_, i) => `y${i}`).join(', ')}]`);
  s.py(`Z = [${shapes.map((_, i) => `z${i}`).join(', ')}]`);
  const clones = (ts: Tensor[]) => ts.map((t) => t.clone());
  const same = (what: string, a: Tensor[], b: Tensor[]) => {
    assert.equal(a.length, b.length);
    for (let i = 0; i < a.length; i++) {
      assert.deepEqual(a[i].shape, b[i].shape, `${what}[${i}] shape`);
      assert.ok(maxRelDiff(a[i], b[i]) <= 1e-6, `${what}[${i}]: foreach differs from the loop by ${maxRelDiff(a[i], b[i])}`);
    }
  };
  const both = (
    key: string,
    fe: (t: Tensor[]) => void,
    loop: (t: Tensor, i: number) => void,
    py: string,
  ) => {
    const a = clones(xs);
    const b = clones(xs);
    fe(a);
    b.forEach(loop);
    same(key, a, b);
    s.py(`_t = [t.clone() for t in X]\n${py}`);
    a.forEach((t, i) => s.cmp(`${key}_${i}`, t, `_t[${i}]`));
  };
  both('add_', (a) => foreach.add_(a, ys, 0.5), (t, i) => t.add_(ys[i], 0.5), 'torch._foreach_add_(_t, Y, alpha=0.5)');
  both('add_s', (a) => foreach.add_(a, 2), (t) => t.add_(2), 'torch._foreach_add_(_t, 2)');
  both('sub_', (a) => foreach.sub_(a, ys, 2), (t, i) => t.sub_(ys[i], 2), 'torch._foreach_sub_(_t, Y, alpha=2)');
  both('mul_', (a) => foreach.mul_(a, ys), (t, i) => t.mul_(ys[i]), 'torch._foreach_mul_(_t, Y)');
  both('mul_s', (a) => foreach.mul_(a, 0.9), (t) => t.mul_(0.9), 'torch._foreach_mul_(_t, 0.9)');
  both('mul_list', (a) => foreach.mul_(a, [1, 2, 3, 4]), (t, i) => t.mul_(i + 1), 'torch._foreach_mul_(_t, [1., 2., 3., 4.])');
  both('div_', (a) => foreach.div_(a, zs), (t, i) => t.div_(zs[i]), 'torch._foreach_div_(_t, Z)');
  both('div_s', (a) => foreach.div_(a, 3), (t) => t.div_(3), 'torch._foreach_div_(_t, 3)');
  both('addcmul_', (a) => foreach.addcmul_(a, ys, zs, 0.3), (t, i) => t.addcmul_(ys[i], zs[i], 0.3), 'torch._foreach_addcmul_(_t, Y, Z, 0.3)');
  both('addcmul_list', (a) => foreach.addcmul_(a, ys, zs, [1, -1, 0.5, 2]), (t, i) => t.addcmul_(ys[i], zs[i], [1, -1, 0.5, 2][i]),
    'torch._foreach_addcmul_(_t, Y, Z, [1., -1., 0.5, 2.])');
  both('addcdiv_', (a) => foreach.addcdiv_(a, ys, zs, -0.1), (t, i) => t.addcdiv_(ys[i], zs[i], -0.1), 'torch._foreach_addcdiv_(_t, Y, Z, -0.1)');
  both('addcdiv_list', (a) => foreach.addcdiv_(a, ys, zs, [0.1, 0.2, 0.3, 0.4]), (t, i) => t.addcdiv_(ys[i], zs[i], [0.1, 0.2, 0.3, 0.4][i]),
    'torch._foreach_addcdiv_(_t, Y, Z, [0.1, 0.2, 0.3, 0.4])');
  both('zero_', (a) => foreach.zero_(a), (t) => t.zero_(), 'torch._foreach_zero_(_t)');
  both('maximum_', (a) => foreach.maximum_(a, ys), (t, i) => t.copy_(t.maximum(ys[i])), 'torch._foreach_maximum_(_t, Y)');
  {
    const a = clones(zs);
    foreach.sqrt_(a);
    same('sqrt_', a, zs.map((t) => t.sqrt()));
    same('sqrt', foreach.sqrt(zs), zs.map((t) => t.sqrt()));
    same('mul', foreach.mul(xs, ys), xs.map((t, i) => t.mul(ys[i])));
    same('mul_scalar', foreach.mul(xs, -2), xs.map((t) => t.mul(-2)));
    const norms = foreach.norm(xs);
    same('norm', norms, xs.map((t) => t.norm()));
    norms.forEach((t, i) => s.cmp(`norm_${i}`, t, `torch._foreach_norm(X)[${i}]`));
  }
  assert.throws(() => foreach.add_(clones(xs), ys.slice(1)), /different lengths/);
});

const nn = section('nn', (s) => {
  const x = s.in('x', N([2, 4, 9, 9]));
  const w = s.in('w', N([6, 4, 3, 3]).mul(0.2));
  const bias = s.in('bias', N([6]));
  s.cmp('conv', F.conv2d(x, w), 'F.conv2d(x, w)');
  s.cmp('conv_bias_pad', F.conv2d(x, w, bias, { padding: 1 }), 'F.conv2d(x, w, bias, padding=1)');
  s.cmp('conv_stride', F.conv2d(x, w, bias, { stride: 2, padding: 1 }), 'F.conv2d(x, w, bias, stride=2, padding=1)');
  s.cmp('conv_stride_pair', F.conv2d(x, w, null, { stride: [2, 1], padding: [0, 2] }), 'F.conv2d(x, w, None, stride=(2, 1), padding=(0, 2))');
  s.cmp('conv_dilation', F.conv2d(x, w, bias, { dilation: 2, padding: 2 }), 'F.conv2d(x, w, bias, dilation=2, padding=2)');
  const wg = s.in('wg', N([6, 2, 3, 3]).mul(0.2));
  s.cmp('conv_groups', F.conv2d(x, wg, bias, { groups: 2, padding: 1 }), 'F.conv2d(x, wg, bias, groups=2, padding=1)');
  const wd = s.in('wd', N([4, 1, 3, 3]).mul(0.3));
  s.cmp('conv_depthwise', F.conv2d(x, wd, null, { groups: 4, padding: 1, stride: 2 }), 'F.conv2d(x, wd, None, groups=4, padding=1, stride=2)');
  const wd2 = s.in('wd2', N([8, 1, 3, 3]).mul(0.3));
  s.cmp('conv_depthwise_mult', F.conv2d(x, wd2, null, { groups: 4 }), 'F.conv2d(x, wd2, None, groups=4)');
  const w1 = s.in('w1', N([3, 4, 1, 1]));
  s.cmp('conv_1x1', F.conv2d(x, w1), 'F.conv2d(x, w1)');
  s.cmp('conv_channels_last', F.conv2d(x.toChannelsLast(), w, bias, { padding: 1 }).contiguous(), 'F.conv2d(x, w, bias, padding=1)');
  const x64 = s.in('x64', N([2, 3, 6, 6], 'float64'));
  const w64 = s.in('w64', N([5, 3, 3, 3], 'float64'));
  s.cmp('conv_f64', F.conv2d(x64, w64, null, { padding: 1 }), 'F.conv2d(x64, w64, None, padding=1)');

  // batch norm, training: output and the running-stat update (momentum, unbiased variance)
  const bnIn = s.in('bn_in', N([4, 3, 5, 5]).mul(2).add(0.5));
  const gamma = s.in('gamma', U([3], 0.5, 1.5));
  const beta = s.in('beta', N([3]));
  const rm = s.in('rm0', N([3]).mul(0.1));
  const rv = s.in('rv0', U([3], 0.5, 1.5));
  const rm0 = rm.clone();
  const rv0 = rv.clone();
  s.py('rm = rm0.clone(); rv = rv0.clone()');
  const yTrain = F.batchNorm(bnIn, rm, rv, { weight: gamma, bias: beta, training: true, momentum: 0.3, eps: 1e-3 });
  s.cmp('bn_train', yTrain, 'F.batch_norm(bn_in, rm, rv, gamma, beta, training=True, momentum=0.3, eps=1e-3)');
  s.cmp('bn_rm', rm, 'rm');
  s.cmp('bn_rv', rv, 'rv');
  // the update rule written out (so a wrong formula on both sides would still fail)
  s.cmp('bn_rm_formula', rm, '0.7 * rm0 + 0.3 * bn_in.mean((0, 2, 3))');
  s.cmp('bn_rv_formula', rv, '0.7 * rv0 + 0.3 * bn_in.var((0, 2, 3), unbiased=True)');
  const bm = bnIn.mean([0, 2, 3]);
  const bv = bnIn.var([0, 2, 3], { correction: 1 });
  assert.ok(maxRelDiff(rm, rm0.mul(0.7).add(bm.mul(0.3))) < 1e-5, 'running mean = 0.7 old + 0.3 batch mean');
  assert.ok(maxRelDiff(rv, rv0.mul(0.7).add(bv.mul(0.3))) < 1e-5, 'running var uses the unbiased batch variance');
  assert.ok(maxRelDiff(rv, rv0.mul(0.7).add(bnIn.var([0, 2, 3], { correction: 0 }).mul(0.3))) > 1e-3, 'and not the biased one');
  assert.ok(maxRelDiff(yTrain.mean([0, 2, 3]), beta) < 1e-5, 'train output has per-channel mean beta');
  // a second training step keeps accumulating
  F.batchNorm(bnIn.mul(0.5), rm, rv, { training: true });
  s.py('F.batch_norm(bn_in * 0.5, rm, rv, training=True)');
  s.cmp('bn_rm2', rm, 'rm');
  s.cmp('bn_rv2', rv, 'rv');
  s.cmp('bn_eval', F.batchNorm(bnIn, rm, rv, { weight: gamma, bias: beta }), 'F.batch_norm(bn_in, rm, rv, gamma, beta)');
  const rmBefore = rm.toArray();
  F.batchNorm(bnIn, rm, rv, { training: false });
  assert.deepEqual(rm.toArray(), rmBefore, 'eval mode leaves running stats alone');
  s.cmp('bn_train_nostats', F.batchNorm(bnIn, null, null, { training: true }), 'F.batch_norm(bn_in, None, None, training=True)');
  const bn64 = s.in('bn64', N([3, 2, 4, 4], 'float64'));
  const rm64 = torch.zeros([2], { dtype: 'float64' });
  const rv64 = torch.ones([2], { dtype: 'float64' });
  s.py('rm64 = torch.zeros(2, dtype=torch.float64); rv64 = torch.ones(2, dtype=torch.float64)');
  s.cmp('bn64', F.batchNorm(bn64, rm64, rv64, { training: true }), 'F.batch_norm(bn64, rm64, rv64, training=True)');
  s.cmp('bn64_rv', rv64, 'rv64');

  const z = s.in('z', N([5, 7]).mul(3));
  s.cmp('relu', F.relu(z), 'F.relu(z)');
  const zr = z.clone();
  assert.equal(F.relu(zr, true), zr);
  s.cmp('relu_inplace', zr, 'F.relu(z)');
  s.cmp('sigmoid', F.sigmoid(z), 'torch.sigmoid(z)');
  s.cmp('hardsigmoid', F.hardsigmoid(z), 'F.hardsigmoid(z)');
  s.cmp('hardswish', F.hardswish(z), 'F.hardswish(z)');
  const lw = s.in('lw', N([3, 7]));
  const lb = s.in('lb', N([3]));
  s.cmp('linear', F.linear(z, lw, lb), 'F.linear(z, lw, lb)');
  s.cmp('linear_nobias', F.linear(z, lw), 'F.linear(z, lw)');
  const lw4 = s.in('lw4', N([5, 4]));
  s.cmp('linear_3d', F.linear(x.permute([0, 2, 3, 1]), lw4), 'F.linear(x.permute(0, 2, 3, 1), lw4)');
  s.cmp('aap1', F.adaptiveAvgPool2d(x, 1), 'F.adaptive_avg_pool2d(x, 1)');
  s.cmp('aap_3x2', F.adaptiveAvgPool2d(x, [3, 2]), 'F.adaptive_avg_pool2d(x, (3, 2))');
  s.cmp('aap_4', F.adaptiveAvgPool2d(x, 4), 'F.adaptive_avg_pool2d(x, 4)');
  s.cmp('maxpool', F.maxPool2d(x, 2), 'F.max_pool2d(x, 2)');
  s.cmp('maxpool_s_p', F.maxPool2d(x, 3, { stride: 2, padding: 1 }), 'F.max_pool2d(x, 3, stride=2, padding=1)');
  s.cmp('maxpool_ceil', F.maxPool2d(x, 2, { ceilMode: true }), 'F.max_pool2d(x, 2, ceil_mode=True)');
  s.cmp('avgpool', F.avgPool2d(x, 3, { stride: 2, padding: 1 }), 'F.avg_pool2d(x, 3, stride=2, padding=1)');
  s.cmp('log_softmax', F.logSoftmax(z, 1), 'F.log_softmax(z, 1)');
  s.cmp('log_softmax0', F.logSoftmax(z, 0), 'F.log_softmax(z, 0)');
  s.cmp('softmax', F.softmax(z, -1), 'F.softmax(z, -1)');
  const z64 = s.in('z64', N([6, 4], 'float64').mul(4));
  s.cmp('log_softmax_f64', F.logSoftmax(z64, 1), 'F.log_softmax(z64, 1)');

  const labels = s.in('labels', torch.tensor([0n, 6n, 3n, 3n, 1n]));
  const soft = s.in('soft', F.softmax(N([5, 7]), 1));
  s.cmp('ce', F.crossEntropy(z, labels), 'F.cross_entropy(z, labels)');
  s.cmp('ce_ls', F.crossEntropy(z, labels, { labelSmoothing: 0.1 }), 'F.cross_entropy(z, labels, label_smoothing=0.1)');
  s.cmp('ce_soft', F.crossEntropy(z, soft), 'F.cross_entropy(z, soft)');
  s.cmp('ce_soft_ls', F.crossEntropy(z, soft, { labelSmoothing: 0.1 }), 'F.cross_entropy(z, soft, label_smoothing=0.1)');
  s.cmp('ce_none', F.crossEntropy(z, labels, { reduction: 'none' }), "F.cross_entropy(z, labels, reduction='none')");
  s.cmp('ce_sum', F.crossEntropy(z, labels, { reduction: 'sum' }), "F.cross_entropy(z, labels, reduction='sum')");
  const cw = s.in('cw', U([7], 0.5, 2));
  s.cmp('ce_weight', F.crossEntropy(z, labels, { weight: cw }), 'F.cross_entropy(z, labels, weight=cw)');
  s.cmp('ce_ignore', F.crossEntropy(z, labels, { ignoreIndex: 3 }), 'F.cross_entropy(z, labels, ignore_index=3)');
  const labels64 = s.in('labels64', torch.tensor([2n, 0n, 3n, 1n, 1n, 0n]));
  s.cmp('ce_f64_ls', F.crossEntropy(z64, labels64, { labelSmoothing: 0.1 }), 'F.cross_entropy(z64, labels64, label_smoothing=0.1)');
  // label smoothing 0.1 equals soft targets (1-0.1)*onehot + 0.1/C, and the hard loss equals -mean(log_softmax[label])
  const smoothed = F.oneHot(labels, 7).to('float32').mul(0.9).add(0.1 / 7);
  assert.ok(Math.abs(F.crossEntropy(z, smoothed).item() - F.crossEntropy(z, labels, { labelSmoothing: 0.1 }).item()) < 1e-5);
  const manual = F.logSoftmax(z, 1).mul(F.oneHot(labels, 7).to('float32')).sum().neg().div(5);
  assert.ok(Math.abs(manual.item() - F.crossEntropy(z, labels).item()) < 1e-5);
  s.cmp('nll', F.nllLoss(F.logSoftmax(z, 1), labels), 'F.nll_loss(F.log_softmax(z, 1), labels)');
  s.cmp('mse', F.mseLoss(z, z.flip(0)), 'F.mse_loss(z, z.flip(0))');
  s.cmp('one_hot', F.oneHot(labels, 7), 'F.one_hot(labels, 7)');
  s.cmp('one_hot_infer', F.oneHot(labels), 'F.one_hot(labels)');
});

let ref: Record<string, Record<string, unknown>> = {};
before(() => {
  const payload: Record<string, unknown> = {};
  for (const s of sections) if (!s.error) payload[s.name] = s.payload();
  ref = runPython<typeof ref>(PY_DRIVER, payload);
});

function run(s: Section): void {
  if (s.error) throw s.error;
  compare(s, ref[s.name]);
}

test('creation: tensor/fromTypedArray per dtype, constants, arange inference, seeded random = PyTorch', () => run(creation));
test('shape ops: reshape/view/permute/transpose/narrow/slice/indexSelect/cat/stack/pad/flip/channels-last', () => run(shapes));
test('elementwise maths with broadcasting, where, comparisons', () => run(elementwise));
test('reductions: sum/mean/var/std (correction, keepdim), min/max with dim, argmax, topk, sort', () => run(reductions));
test('in-place ops: mul_, add_ (alpha), addcmul_, addcdiv_, copy_, zero_, ...', () => run(inplace));
test('foreach ops equal the per-tensor loop and PyTorch _foreach_*', () => run(foreachSec));
test('nn functions: conv2d, batch_norm (train/eval, running stats), activations, pools, losses, one_hot', () => run(nn));

test('dropout: p=0 and eval are identity; train zeroes ~p and scales kept values by 1/(1-p)', () => {
  torch.tidy(() => {
    const x = torch.rand([200, 100]).add(0.5);
    assert.deepEqual(F.dropout(x, 0, true).toArray(), x.toArray());
    assert.deepEqual(F.dropout(x, 0.5, false).toArray(), x.toArray());
    for (const p of [0.2, 0.5, 0.8]) {
      torch.manualSeed(11);
      const y = F.dropout(x, p, true);
      const n = x.numel;
      const zeroed = y.eq(0).sum().item() / n;
      // binomial std for n=20000: sqrt(p(1-p)/n) <= 0.0036; allow ~5 sigma
      assert.ok(Math.abs(zeroed - p) < 0.02, `p=${p}: fraction zeroed ${zeroed}`);
      const kept = y.ne(0);
      const ratio = torch.where(kept, y.div(x), 0).sum().item() / kept.sum().item();
      assert.ok(Math.abs(ratio - 1 / (1 - p)) < 1e-5, `p=${p}: kept values scaled by ${ratio}, expected ${1 / (1 - p)}`);
      const yv = y.toArray();
      const xv = x.toArray();
      for (let i = 0; i < n; i++) {
        if (yv[i] !== 0) assert.ok(Math.abs(yv[i] - xv[i] / (1 - p)) <= 1e-6 * Math.abs(yv[i]), `element ${i}`);
      }
      // reproducible with the same seed
      torch.manualSeed(11);
      assert.deepEqual(F.dropout(x, p, true).toArray(), yv);
    }
    const all = F.dropout(x, 1, true);
    assert.equal(all.abs().sum().item(), 0);
    assert.throws(() => F.dropout(x, 1.5), RangeError);
  });
});

test('setNumThreads also sizes OpenBLAS\'s own thread pool (the matrix products of Debian\'s libtorch)', () => {
  const threads = torch.getNumThreads();
  // this libtorch links OpenBLAS (its matmul runs there): the pool must follow the setting
  const usesOpenBlas = torch.blasNumThreads() !== -1;
  try {
    torch.setNumThreads(1);
    if (usesOpenBlas) assert.equal(torch.blasNumThreads(), 1);
    torch.setNumThreads(2);
    if (usesOpenBlas) assert.equal(torch.blasNumThreads(), 2);
    // a product is the same maths at either setting: within float32 rounding of the float64 product.
    // Not bit for bit: whether OpenBLAS splits the sum over threads depends on its kernel for this CPU
    // (equal on the AVX-512 hosts we tried, 4.6e-5 apart on an AVX2-only EPYC).
    torch.tidy(() => {
      const g = new torch.Generator(3);
      const a = torch.randn([96, 300], { generator: g });
      const b = torch.randn([300, 80], { generator: g });
      const exact = a.to('float64').matmul(b.to('float64'));
      const scale = a.abs().to('float64').matmul(b.abs().to('float64')); // sum of |terms|, the rounding's scale
      for (const n of [1, 2]) {
        torch.setNumThreads(n);
        const err = a.matmul(b).to('float64').sub(exact).abs().div(scale).max().item();
        assert.ok(err < 300 * 2 ** -24, `${n} thread(s): error ${err} of the sum of |terms|`);
      }
    });
  } finally {
    torch.setNumThreads(threads);
  }
});
