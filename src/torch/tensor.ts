/// <reference lib="esnext.disposable" preserve="true" />
/**
 * The Tensor: a handle on a libtorch tensor, with PyTorch's method names in
 * camelCase. Every method is one dispatcher call (see ops.ts); nothing is
 * computed in JavaScript. In-place methods end in `_` and return `this`.
 */
import { native, type Handle } from './native.js';
import { defOp } from './ops.js';
import { track } from './scope.js';
import { DTYPE_CODE, MEMORY_FORMAT, dtypeFromCode, typedArrayFor, type DType, type MemoryFormat, type TypedArray } from './dtype.js';

export type Scalar = number | boolean;
export type Dims = number | number[];

/**
 * An in-place operator. Its result is `self` again, which the addon returns as
 * a new handle: release that one at once, or every in-place call would keep a
 * native handle (and its reported external memory) alive until GC.
 */
function defInPlace(qualified: string): (...args: unknown[]) => void {
  const op = defOp(qualified);
  return (...args: unknown[]) => {
    native.dispose(op(...args) as Handle);
  };
}

const A = {
  add: defOp('aten::add.Tensor'),
  addS: defOp('aten::add.Scalar'),
  sub: defOp('aten::sub.Tensor'),
  subS: defOp('aten::sub.Scalar'),
  mul: defOp('aten::mul.Tensor'),
  mulS: defOp('aten::mul.Scalar'),
  div: defOp('aten::div.Tensor'),
  divS: defOp('aten::div.Scalar'),
  pow: defOp('aten::pow.Tensor_Tensor'),
  powS: defOp('aten::pow.Tensor_Scalar'),
  neg: defOp('aten::neg'),
  sqrt: defOp('aten::sqrt'),
  rsqrt: defOp('aten::rsqrt'),
  square: defOp('aten::square'),
  abs: defOp('aten::abs'),
  sign: defOp('aten::sign'),
  exp: defOp('aten::exp'),
  log: defOp('aten::log'),
  tanh: defOp('aten::tanh'),
  sigmoid: defOp('aten::sigmoid'),
  relu: defOp('aten::relu'),
  clamp: defOp('aten::clamp'),
  clampT: defOp('aten::clamp.Tensor'),
  maximum: defOp('aten::maximum'),
  minimum: defOp('aten::minimum'),
  matmul: defOp('aten::matmul'),
  eq: defOp('aten::eq.Tensor'),
  eqS: defOp('aten::eq.Scalar'),
  ne: defOp('aten::ne.Tensor'),
  neS: defOp('aten::ne.Scalar'),
  lt: defOp('aten::lt.Tensor'),
  ltS: defOp('aten::lt.Scalar'),
  le: defOp('aten::le.Tensor'),
  leS: defOp('aten::le.Scalar'),
  gt: defOp('aten::gt.Tensor'),
  gtS: defOp('aten::gt.Scalar'),
  ge: defOp('aten::ge.Tensor'),
  geS: defOp('aten::ge.Scalar'),
  maskedFill: defOp('aten::masked_fill.Scalar'),
  lerp: defOp('aten::lerp.Scalar'),
  // reductions
  sumAll: defOp('aten::sum'),
  sumDim: defOp('aten::sum.dim_IntList'),
  meanAll: defOp('aten::mean'),
  meanDim: defOp('aten::mean.dim'),
  varC: defOp('aten::var.correction'),
  stdC: defOp('aten::std.correction'),
  maxAll: defOp('aten::max'),
  maxDim: defOp('aten::max.dim'),
  minAll: defOp('aten::min'),
  minDim: defOp('aten::min.dim'),
  amax: defOp('aten::amax'),
  amin: defOp('aten::amin'),
  argmax: defOp('aten::argmax'),
  topk: defOp('aten::topk'),
  sort: defOp('aten::sort'),
  norm: defOp('aten::norm.Scalar'),
  normDim: defOp('aten::norm.ScalarOpt_dim'),
  // shapes
  reshape: defOp('aten::reshape'),
  view: defOp('aten::view'),
  permute: defOp('aten::permute'),
  transpose: defOp('aten::transpose.int'),
  narrow: defOp('aten::narrow'),
  slice: defOp('aten::slice.Tensor'),
  select: defOp('aten::select.int'),
  indexSelect: defOp('aten::index_select'),
  flip: defOp('aten::flip'),
  squeeze: defOp('aten::squeeze'),
  squeezeDim: defOp('aten::squeeze.dim'),
  unsqueeze: defOp('aten::unsqueeze'),
  flatten: defOp('aten::flatten.using_ints'),
  expand: defOp('aten::expand'),
  asStrided: defOp('aten::as_strided'),
  contiguous: defOp('aten::contiguous'),
  clone: defOp('aten::clone'),
  detach: defOp('aten::detach'),
  to: defOp('aten::to.dtype'),
  fullLike: defOp('aten::full_like'),
  chunk: defOp('aten::chunk'),
  split: defOp('aten::split.Tensor'),
  unbind: defOp('aten::unbind.int'),
  item: defOp('aten::item'),
  // in place
  add_: defInPlace('aten::add_.Tensor'),
  addS_: defInPlace('aten::add_.Scalar'),
  sub_: defInPlace('aten::sub_.Tensor'),
  subS_: defInPlace('aten::sub_.Scalar'),
  mul_: defInPlace('aten::mul_.Tensor'),
  mulS_: defInPlace('aten::mul_.Scalar'),
  div_: defInPlace('aten::div_.Tensor'),
  divS_: defInPlace('aten::div_.Scalar'),
  addcmul_: defInPlace('aten::addcmul_'),
  addcdiv_: defInPlace('aten::addcdiv_'),
  copy_: defInPlace('aten::copy_'),
  zero_: defInPlace('aten::zero_'),
  fill_: defInPlace('aten::fill_.Scalar'),
  clamp_: defInPlace('aten::clamp_'),
  sqrt_: defInPlace('aten::sqrt_'),
  relu_: defInPlace('aten::relu_'),
  lerp_: defInPlace('aten::lerp_.Scalar'),
  uniform_: defInPlace('aten::uniform_'),
  normal_: defInPlace('aten::normal_'),
};

/** The numbers of a tensor as nested arrays (shape-shaped); 0-d gives a number. */
export type NestedArray = number | boolean | bigint | NestedArray[];

function wrap(h: unknown): Tensor {
  return new Tensor(h as Handle);
}

function wrapAll(hs: unknown): Tensor[] {
  return (hs as Handle[]).map((h) => new Tensor(h));
}

function dimList(d: Dims | undefined): number[] | null {
  if (d === undefined) return null;
  return typeof d === 'number' ? [d] : d;
}

export class Tensor {
  #h: Handle;

  /** Wraps a native handle; registers it with the current `tidy` scope. */
  constructor(handle: Handle) {
    this.#h = handle;
    track(this);
  }

  /** The native handle (for binding code). Throws if disposed. */
  get handle(): Handle {
    return this.#h;
  }

  // ------------------------------------------------------------ facts

  get shape(): number[] {
    return native.shape(this.#h);
  }
  get ndim(): number {
    return native.shape(this.#h).length;
  }
  get dtype(): DType {
    return dtypeFromCode(native.dtype(this.#h));
  }
  get numel(): number {
    return native.shape(this.#h).reduce((a, b) => a * b, 1);
  }
  size(dim: number): number {
    const s = native.shape(this.#h);
    const d = dim < 0 ? dim + s.length : dim;
    if (d < 0 || d >= s.length) throw new RangeError(`dimension ${dim} out of range for a ${s.length}-d tensor`);
    return s[d];
  }
  strides(): number[] {
    return native.strides(this.#h);
  }
  isContiguous(memoryFormat: MemoryFormat = 'contiguous'): boolean {
    return native.isContiguous(this.#h, memoryFormat === 'channelsLast');
  }
  get isDisposed(): boolean {
    return native.isDisposed(this.#h);
  }
  /** Identity of the storage (equal for views of one another). */
  storageId(): bigint {
    return native.storageId(this.#h);
  }

  // ------------------------------------------------------------ memory

  /** Frees the native tensor now. Further use throws. Idempotent. */
  dispose(): void {
    native.dispose(this.#h);
  }
  [Symbol.dispose](): void {
    this.dispose();
  }

  // ------------------------------------------------------------ data out

  /** A copy of the data in row-major order (bool -> Uint8Array, int64 -> BigInt64Array). */
  toTypedArray(): TypedArray {
    return typedArrayFor(this.dtype, native.toBuffer(this.#h));
  }

  /** Values as a flat number array (int64 converted to number). */
  toArray(): number[] {
    const a = this.toTypedArray();
    if (a instanceof BigInt64Array) return Array.from(a, (x) => Number(x));
    return Array.from(a as ArrayLike<number>);
  }

  /** Values as nested arrays following the shape. */
  tolist(): NestedArray {
    const flat = this.toArray();
    const shape = this.shape;
    const isBool = this.dtype === 'bool';
    const conv = (x: number): number | boolean => (isBool ? x !== 0 : x);
    if (shape.length === 0) return conv(flat[0]);
    let i = 0;
    const build = (d: number): NestedArray[] => {
      const out: NestedArray[] = [];
      for (let k = 0; k < shape[d]; k++) out.push(d === shape.length - 1 ? conv(flat[i++]) : build(d + 1));
      return out;
    };
    return build(0);
  }

  /** The value of a one-element tensor. */
  item(): number {
    const v = A.item(this.#h);
    return typeof v === 'boolean' ? (v ? 1 : 0) : (v as number);
  }

  toString(): string {
    return `Tensor(shape=[${this.shape.join(', ')}], dtype=${this.dtype}${this.requiresGrad ? ', requiresGrad' : ''})`;
  }

  // ------------------------------------------------------------ autograd

  get requiresGrad(): boolean {
    return native.requiresGrad(this.#h);
  }
  set requiresGrad(v: boolean) {
    native.setRequiresGrad(this.#h, v);
  }
  requiresGrad_(v = true): this {
    native.setRequiresGrad(this.#h, v);
    return this;
  }
  /** The name of the autograd node that made this tensor (PyTorch's `grad_fn`), null for leaves and no-grad results. */
  get gradFnName(): string | null {
    return native.gradFnName(this.#h);
  }
  get isLeaf(): boolean {
    return native.isLeaf(this.#h);
  }
  /** The accumulated gradient (a new handle on it each call), or null. */
  get grad(): Tensor | null {
    const g = native.grad(this.#h);
    return g === null ? null : new Tensor(g);
  }
  set grad(g: Tensor | null) {
    native.setGrad(this.#h, g === null ? null : g.handle);
  }
  backward(gradient?: Tensor, opts: { retainGraph?: boolean; createGraph?: boolean } = {}): void {
    native.backward(
      [this.#h],
      gradient ? [gradient.handle] : null,
      opts.retainGraph ?? opts.createGraph ?? false,
      opts.createGraph ?? false,
    );
  }
  detach(): Tensor {
    return wrap(A.detach(this.#h));
  }

  // ------------------------------------------------------------ arithmetic

  add(other: Tensor | number, alpha = 1): Tensor {
    return wrap(typeof other === 'number' ? A.addS(this.#h, other, alpha) : A.add(this.#h, other.#h, alpha));
  }
  sub(other: Tensor | number, alpha = 1): Tensor {
    return wrap(typeof other === 'number' ? A.subS(this.#h, other, alpha) : A.sub(this.#h, other.#h, alpha));
  }
  mul(other: Tensor | number): Tensor {
    return wrap(typeof other === 'number' ? A.mulS(this.#h, other) : A.mul(this.#h, other.#h));
  }
  div(other: Tensor | number): Tensor {
    return wrap(typeof other === 'number' ? A.divS(this.#h, other) : A.div(this.#h, other.#h));
  }
  pow(exponent: Tensor | number): Tensor {
    return wrap(typeof exponent === 'number' ? A.powS(this.#h, exponent) : A.pow(this.#h, exponent.#h));
  }
  neg(): Tensor { return wrap(A.neg(this.#h)); }
  sqrt(): Tensor { return wrap(A.sqrt(this.#h)); }
  rsqrt(): Tensor { return wrap(A.rsqrt(this.#h)); }
  square(): Tensor { return wrap(A.square(this.#h)); }
  abs(): Tensor { return wrap(A.abs(this.#h)); }
  sign(): Tensor { return wrap(A.sign(this.#h)); }
  exp(): Tensor { return wrap(A.exp(this.#h)); }
  log(): Tensor { return wrap(A.log(this.#h)); }
  tanh(): Tensor { return wrap(A.tanh(this.#h)); }
  sigmoid(): Tensor { return wrap(A.sigmoid(this.#h)); }
  relu(): Tensor { return wrap(A.relu(this.#h)); }
  clamp(min?: number | Tensor | null, max?: number | Tensor | null): Tensor {
    if (min instanceof Tensor || max instanceof Tensor) {
      const temps: Handle[] = []; // bounds given as numbers, released after the call
      const h = (v: number | Tensor | null | undefined) => {
        if (v === null || v === undefined) return null;
        if (v instanceof Tensor) return v.#h;
        temps.push(A.fullLike(this.#h, v) as Handle);
        return temps[temps.length - 1];
      };
      try {
        return wrap(A.clampT(this.#h, h(min), h(max)));
      } finally {
        for (const t of temps) native.dispose(t);
      }
    }
    return wrap(A.clamp(this.#h, min ?? null, max ?? null));
  }
  maximum(other: Tensor): Tensor { return wrap(A.maximum(this.#h, other.#h)); }
  minimum(other: Tensor): Tensor { return wrap(A.minimum(this.#h, other.#h)); }
  matmul(other: Tensor): Tensor { return wrap(A.matmul(this.#h, other.#h)); }
  lerp(end: Tensor, weight: number): Tensor { return wrap(A.lerp(this.#h, end.#h, weight)); }

  eq(o: Tensor | Scalar): Tensor { return wrap(o instanceof Tensor ? A.eq(this.#h, o.#h) : A.eqS(this.#h, o)); }
  ne(o: Tensor | Scalar): Tensor { return wrap(o instanceof Tensor ? A.ne(this.#h, o.#h) : A.neS(this.#h, o)); }
  lt(o: Tensor | Scalar): Tensor { return wrap(o instanceof Tensor ? A.lt(this.#h, o.#h) : A.ltS(this.#h, o)); }
  le(o: Tensor | Scalar): Tensor { return wrap(o instanceof Tensor ? A.le(this.#h, o.#h) : A.leS(this.#h, o)); }
  gt(o: Tensor | Scalar): Tensor { return wrap(o instanceof Tensor ? A.gt(this.#h, o.#h) : A.gtS(this.#h, o)); }
  ge(o: Tensor | Scalar): Tensor { return wrap(o instanceof Tensor ? A.ge(this.#h, o.#h) : A.geS(this.#h, o)); }
  maskedFill(mask: Tensor, value: Scalar): Tensor { return wrap(A.maskedFill(this.#h, mask.#h, value)); }

  // ------------------------------------------------------------ reductions

  sum(dim?: Dims, keepdim = false): Tensor {
    return wrap(dim === undefined ? A.sumAll(this.#h) : A.sumDim(this.#h, dimList(dim), keepdim));
  }
  mean(dim?: Dims, keepdim = false): Tensor {
    return wrap(dim === undefined ? A.meanAll(this.#h) : A.meanDim(this.#h, dimList(dim), keepdim));
  }
  /** Variance; `correction` 1 (default) is unbiased, 0 the population variance. */
  var(dim?: Dims, opts: { correction?: number; keepdim?: boolean } = {}): Tensor {
    return wrap(A.varC(this.#h, dimList(dim), opts.correction ?? 1, opts.keepdim ?? false));
  }
  std(dim?: Dims, opts: { correction?: number; keepdim?: boolean } = {}): Tensor {
    return wrap(A.stdC(this.#h, dimList(dim), opts.correction ?? 1, opts.keepdim ?? false));
  }
  max(): Tensor;
  max(dim: number, keepdim?: boolean): { values: Tensor; indices: Tensor };
  max(dim?: number, keepdim = false): Tensor | { values: Tensor; indices: Tensor } {
    if (dim === undefined) return wrap(A.maxAll(this.#h));
    const [values, indices] = wrapAll(A.maxDim(this.#h, dim, keepdim));
    return { values, indices };
  }
  min(): Tensor;
  min(dim: number, keepdim?: boolean): { values: Tensor; indices: Tensor };
  min(dim?: number, keepdim = false): Tensor | { values: Tensor; indices: Tensor } {
    if (dim === undefined) return wrap(A.minAll(this.#h));
    const [values, indices] = wrapAll(A.minDim(this.#h, dim, keepdim));
    return { values, indices };
  }
  amax(dim: Dims = [], keepdim = false): Tensor { return wrap(A.amax(this.#h, dimList(dim), keepdim)); }
  amin(dim: Dims = [], keepdim = false): Tensor { return wrap(A.amin(this.#h, dimList(dim), keepdim)); }
  argmax(dim?: number, keepdim = false): Tensor { return wrap(A.argmax(this.#h, dim ?? null, keepdim)); }
  topk(k: number, dim = -1, largest = true, sorted = true): { values: Tensor; indices: Tensor } {
    const [values, indices] = wrapAll(A.topk(this.#h, k, dim, largest, sorted));
    return { values, indices };
  }
  sort(dim = -1, descending = false): { values: Tensor; indices: Tensor } {
    const [values, indices] = wrapAll(A.sort(this.#h, dim, descending));
    return { values, indices };
  }
  norm(p = 2, dim?: Dims, keepdim = false): Tensor {
    return wrap(dim === undefined ? A.norm(this.#h, p) : A.normDim(this.#h, p, dimList(dim), keepdim));
  }

  // ------------------------------------------------------------ shapes

  reshape(shape: number[]): Tensor { return wrap(A.reshape(this.#h, shape)); }
  view(shape: number[]): Tensor { return wrap(A.view(this.#h, shape)); }
  permute(dims: number[]): Tensor { return wrap(A.permute(this.#h, dims)); }
  transpose(dim0: number, dim1: number): Tensor { return wrap(A.transpose(this.#h, dim0, dim1)); }
  get T(): Tensor { return this.transpose(0, 1); }
  narrow(dim: number, start: number, length: number): Tensor { return wrap(A.narrow(this.#h, dim, start, length)); }
  /** Python's `t[start:end:step]` along `dim`. */
  slice(dim: number, start?: number, end?: number, step = 1): Tensor {
    return wrap(A.slice(this.#h, dim, start ?? null, end ?? null, step));
  }
  select(dim: number, index: number): Tensor { return wrap(A.select(this.#h, dim, index)); }
  indexSelect(dim: number, index: Tensor): Tensor { return wrap(A.indexSelect(this.#h, dim, index.#h)); }
  flip(dims: Dims): Tensor { return wrap(A.flip(this.#h, dimList(dims))); }
  squeeze(dim?: number): Tensor { return wrap(dim === undefined ? A.squeeze(this.#h) : A.squeezeDim(this.#h, dim)); }
  unsqueeze(dim: number): Tensor { return wrap(A.unsqueeze(this.#h, dim)); }
  flatten(startDim = 0, endDim = -1): Tensor { return wrap(A.flatten(this.#h, startDim, endDim)); }
  expand(shape: number[]): Tensor { return wrap(A.expand(this.#h, shape)); }
  asStrided(size: number[], stride: number[], offset = 0): Tensor { return wrap(A.asStrided(this.#h, size, stride, offset)); }
  contiguous(memoryFormat: MemoryFormat = 'contiguous'): Tensor {
    return wrap(A.contiguous(this.#h, MEMORY_FORMAT[memoryFormat]));
  }
  /** The same values in NHWC memory order (shape unchanged), as PyTorch's channels_last. */
  toChannelsLast(): Tensor { return this.contiguous('channelsLast'); }
  clone(memoryFormat?: MemoryFormat): Tensor {
    return wrap(A.clone(this.#h, memoryFormat === undefined ? null : MEMORY_FORMAT[memoryFormat]));
  }
  chunk(chunks: number, dim = 0): Tensor[] { return wrapAll(A.chunk(this.#h, chunks, dim)); }
  split(size: number, dim = 0): Tensor[] { return wrapAll(A.split(this.#h, size, dim)); }
  unbind(dim = 0): Tensor[] { return wrapAll(A.unbind(this.#h, dim)); }

  to(dtype: DType): Tensor {
    // aten::to returns an alias (a new handle on the same tensor) when nothing changes.
    return wrap(A.to(this.#h, DTYPE_CODE[dtype], false, false, null));
  }
  float(): Tensor { return this.to('float32'); }
  double(): Tensor { return this.to('float64'); }
  long(): Tensor { return this.to('int64'); }

  // ------------------------------------------------------------ in place

  add_(other: Tensor | number, alpha = 1): this {
    if (typeof other === 'number') A.addS_(this.#h, other, alpha);
    else A.add_(this.#h, other.#h, alpha);
    return this;
  }
  sub_(other: Tensor | number, alpha = 1): this {
    if (typeof other === 'number') A.subS_(this.#h, other, alpha);
    else A.sub_(this.#h, other.#h, alpha);
    return this;
  }
  mul_(other: Tensor | number): this {
    if (typeof other === 'number') A.mulS_(this.#h, other);
    else A.mul_(this.#h, other.#h);
    return this;
  }
  div_(other: Tensor | number): this {
    if (typeof other === 'number') A.divS_(this.#h, other);
    else A.div_(this.#h, other.#h);
    return this;
  }
  addcmul_(t1: Tensor, t2: Tensor, value = 1): this { A.addcmul_(this.#h, t1.#h, t2.#h, value); return this; }
  addcdiv_(t1: Tensor, t2: Tensor, value = 1): this { A.addcdiv_(this.#h, t1.#h, t2.#h, value); return this; }
  copy_(src: Tensor): this { A.copy_(this.#h, src.#h); return this; }
  zero_(): this { A.zero_(this.#h); return this; }
  fill_(value: Scalar): this { A.fill_(this.#h, value); return this; }
  clamp_(min?: number | null, max?: number | null): this { A.clamp_(this.#h, min ?? null, max ?? null); return this; }
  sqrt_(): this { A.sqrt_(this.#h); return this; }
  relu_(): this { A.relu_(this.#h); return this; }
  lerp_(end: Tensor, weight: number): this { A.lerp_(this.#h, end.#h, weight); return this; }
  uniform_(from = 0, to = 1, generator?: import('./random.js').Generator): this {
    A.uniform_(this.#h, from, to, generator?.handle ?? null);
    return this;
  }
  normal_(mean = 0, std = 1, generator?: import('./random.js').Generator): this {
    A.normal_(this.#h, mean, std, generator?.handle ?? null);
    return this;
  }
}

/** Wraps raw op results (handles) as Tensors. */
export const wrapHandle = wrap;
export const wrapHandles = wrapAll;
