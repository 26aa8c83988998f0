/** Creating tensors: from JS data, constants, ranges and random draws. */
import { native } from './native.js';
import { defOp } from './ops.js';
import { Tensor, wrapHandle, type NestedArray } from './tensor.js';
import { DTYPE_CODE, dtypeOfArray, type DType, type TypedArray } from './dtype.js';
import type { Generator } from './random.js';

export interface CreateOptions {
  dtype?: DType;
  requiresGrad?: boolean;
}

const O = {
  zeros: defOp('aten::zeros'),
  ones: defOp('aten::ones'),
  full: defOp('aten::full'),
  empty: defOp('aten::empty.memory_format'),
  arange: defOp('aten::arange.start_step'),
  rand: defOp('aten::rand.generator'),
  randn: defOp('aten::randn.generator'),
  randint: defOp('aten::randint.low_generator'),
  randperm: defOp('aten::randperm.generator'),
  zerosLike: defOp('aten::zeros_like'),
  onesLike: defOp('aten::ones_like'),
  fullLike: defOp('aten::full_like'),
  eye: defOp('aten::eye'),
};

function finish(t: Tensor, opts: CreateOptions): Tensor {
  if (opts.requiresGrad) t.requiresGrad_(true);
  return t;
}

function code(opts: CreateOptions, fallback: DType = 'float32'): number {
  return DTYPE_CODE[opts.dtype ?? fallback];
}

/** A tensor holding a copy of `data` (a typed array) with the given shape. */
export function fromTypedArray(data: TypedArray, shape: number[], dtype: DType = dtypeOfArray(data), opts: CreateOptions = {}): Tensor {
  return finish(new Tensor(native.fromBuffer(data, shape, DTYPE_CODE[dtype])), opts);
}

function inferShape(data: NestedArray): number[] {
  const shape: number[] = [];
  let cur: NestedArray = data;
  while (Array.isArray(cur)) {
    shape.push(cur.length);
    cur = cur[0];
  }
  return shape;
}

/**
 * A tensor from nested JS arrays or a number (like `torch.tensor`). The default
 * dtype is float32 for numbers, bool for booleans, int64 for bigints.
 */
export function tensor(data: NestedArray | TypedArray, opts: CreateOptions = {}): Tensor {
  if (ArrayBuffer.isView(data)) {
    const own = dtypeOfArray(data);
    const t = fromTypedArray(data, [data.length], own, opts.dtype && opts.dtype !== own ? {} : opts);
    if (!opts.dtype || opts.dtype === own) return t;
    const out = t.to(opts.dtype);
    t.dispose();
    return finish(out, opts);
  }
  const shape = inferShape(data);
  const flat = (Array.isArray(data) ? (data as unknown[]).flat(Infinity) : [data]) as (number | boolean | bigint)[];
  const numel = shape.reduce((a, b) => a * b, 1);
  if (flat.length !== numel) throw new Error(`tensor(): ragged nested array (shape [${shape}] expects ${numel} values, got ${flat.length})`);
  const first = flat[0];
  const dtype = opts.dtype ?? (typeof first === 'boolean' ? 'bool' : typeof first === 'bigint' ? 'int64' : 'float32');
  let arr: TypedArray;
  switch (dtype) {
    case 'float64': arr = Float64Array.from(flat, Number); break;
    case 'int64': arr = BigInt64Array.from(flat, (x) => (typeof x === 'bigint' ? x : BigInt(typeof x === 'boolean' ? Number(x) : Math.trunc(Number(x))))); break;
    case 'int32': arr = Int32Array.from(flat, Number); break;
    case 'int16': arr = Int16Array.from(flat, Number); break;
    case 'int8': arr = Int8Array.from(flat, Number); break;
    case 'uint8': arr = Uint8Array.from(flat, (x) => Number(x)); break;
    case 'bool': arr = Uint8Array.from(flat, (x) => (Number(x) !== 0 ? 1 : 0)); break;
    default: {
      const t = fromTypedArray(Float64Array.from(flat, Number), shape, 'float64');
      const out = t.to(dtype);
      t.dispose();
      return finish(out, opts);
    }
  }
  return finish(fromTypedArray(arr, shape, dtype), opts);
}

export function zeros(shape: number[], opts: CreateOptions = {}): Tensor {
  return finish(wrapHandle(O.zeros(shape, code(opts))), opts);
}
export function ones(shape: number[], opts: CreateOptions = {}): Tensor {
  return finish(wrapHandle(O.ones(shape, code(opts))), opts);
}
export function full(shape: number[], value: number | boolean, opts: CreateOptions = {}): Tensor {
  return finish(wrapHandle(O.full(shape, value, code(opts))), opts);
}
export function empty(shape: number[], opts: CreateOptions = {}): Tensor {
  return finish(wrapHandle(O.empty(shape, code(opts))), opts);
}
export function eye(n: number, opts: CreateOptions = {}): Tensor {
  return finish(wrapHandle(O.eye(n, code(opts))), opts);
}
export function zerosLike(t: Tensor, opts: CreateOptions = {}): Tensor {
  return finish(wrapHandle(O.zerosLike(t.handle, opts.dtype ? DTYPE_CODE[opts.dtype] : null)), opts);
}
export function onesLike(t: Tensor, opts: CreateOptions = {}): Tensor {
  return finish(wrapHandle(O.onesLike(t.handle, opts.dtype ? DTYPE_CODE[opts.dtype] : null)), opts);
}
export function fullLike(t: Tensor, value: number, opts: CreateOptions = {}): Tensor {
  return finish(wrapHandle(O.fullLike(t.handle, value, opts.dtype ? DTYPE_CODE[opts.dtype] : null)), opts);
}

/** `arange(end)`, `arange(start, end, step)`; int64 when all arguments are integers (as PyTorch). */
export function arange(startOrEnd: number, end?: number, step = 1, opts: CreateOptions = {}): Tensor {
  const [s, e] = end === undefined ? [0, startOrEnd] : [startOrEnd, end];
  const ints = [s, e, step].every(Number.isInteger);
  return finish(wrapHandle(O.arange(s, e, step, code(opts, ints ? 'int64' : 'float32'))), opts);
}

export interface RandomOptions extends CreateOptions {
  generator?: Generator;
}

export function rand(shape: number[], opts: RandomOptions = {}): Tensor {
  return finish(wrapHandle(O.rand(shape, opts.generator?.handle ?? null, code(opts))), opts);
}
export function randn(shape: number[], opts: RandomOptions = {}): Tensor {
  return finish(wrapHandle(O.randn(shape, opts.generator?.handle ?? null, code(opts))), opts);
}
/** Integers uniform in [low, high). */
export function randint(low: number, high: number, shape: number[], opts: RandomOptions = {}): Tensor {
  return finish(wrapHandle(O.randint(low, high, shape, opts.generator?.handle ?? null, code(opts, 'int64'))), opts);
}
export function randperm(n: number, opts: RandomOptions = {}): Tensor {
  return wrapHandle(O.randperm(n, opts.generator?.handle ?? null, code(opts, 'int64')));
}
