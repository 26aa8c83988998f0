/**
 * libtorch's `_foreach_*` kernels: one dispatcher call updates a whole list of
 * tensors (the optimizers' per-parameter loops). Lists must have equal lengths.
 */
import { defOp } from './ops.js';
import { wrapHandles, type Tensor } from './tensor.js';

const O = {
  add_: defOp('aten::_foreach_add_.List'),
  addScalar_: defOp('aten::_foreach_add_.Scalar'),
  sub_: defOp('aten::_foreach_sub_.List'),
  mul_: defOp('aten::_foreach_mul_.List'),
  mulScalar_: defOp('aten::_foreach_mul_.Scalar'),
  mulScalarList_: defOp('aten::_foreach_mul_.ScalarList'),
  div_: defOp('aten::_foreach_div_.List'),
  divScalar_: defOp('aten::_foreach_div_.Scalar'),
  divScalarList_: defOp('aten::_foreach_div_.ScalarList'),
  addcmul_: defOp('aten::_foreach_addcmul_.Scalar'),
  addcmulList_: defOp('aten::_foreach_addcmul_.ScalarList'),
  addcdiv_: defOp('aten::_foreach_addcdiv_.Scalar'),
  addcdivList_: defOp('aten::_foreach_addcdiv_.ScalarList'),
  sqrt: defOp('aten::_foreach_sqrt'),
  sqrt_: defOp('aten::_foreach_sqrt_'),
  zero_: defOp('aten::_foreach_zero_'),
  mul: defOp('aten::_foreach_mul.List'),
  add: defOp('aten::_foreach_add.List'),
  mulScalar: defOp('aten::_foreach_mul.Scalar'),
  norm: defOp('aten::_foreach_norm.Scalar'),
  maximum_: defOp('aten::_foreach_maximum_.List'),
};

const hs = (ts: Tensor[]) => ts.map((t) => t.handle);

function same(a: Tensor[], b: Tensor[], what: string): void {
  if (a.length !== b.length) throw new Error(`foreach.${what}: lists of different lengths (${a.length} vs ${b.length})`);
}

/** self[i] += alpha * other[i] */
export function add_(self: Tensor[], other: Tensor[] | number, alpha = 1): void {
  if (typeof other === 'number') {
    O.addScalar_(hs(self), other * alpha);
    return;
  }
  same(self, other, 'add_');
  O.add_(hs(self), hs(other), alpha);
}
export function sub_(self: Tensor[], other: Tensor[], alpha = 1): void {
  same(self, other, 'sub_');
  O.sub_(hs(self), hs(other), alpha);
}
/** self[i] *= other[i] (tensors), a scalar, or scalars[i]. */
export function mul_(self: Tensor[], other: Tensor[] | number | number[]): void {
  if (typeof other === 'number') O.mulScalar_(hs(self), other);
  else if (typeof other[0] === 'number' || other.length === 0) O.mulScalarList_(hs(self), other);
  else {
    same(self, other as Tensor[], 'mul_');
    O.mul_(hs(self), hs(other as Tensor[]));
  }
}
export function div_(self: Tensor[], other: Tensor[] | number | number[]): void {
  if (typeof other === 'number') O.divScalar_(hs(self), other);
  else if (typeof other[0] === 'number' || other.length === 0) O.divScalarList_(hs(self), other);
  else {
    same(self, other as Tensor[], 'div_');
    O.div_(hs(self), hs(other as Tensor[]));
  }
}
/** self[i] += value * t1[i] * t2[i] */
export function addcmul_(self: Tensor[], t1: Tensor[], t2: Tensor[], value: number | number[] = 1): void {
  same(self, t1, 'addcmul_');
  same(self, t2, 'addcmul_');
  if (typeof value === 'number') O.addcmul_(hs(self), hs(t1), hs(t2), value);
  else O.addcmulList_(hs(self), hs(t1), hs(t2), value);
}
/** self[i] += value * t1[i] / t2[i] */
export function addcdiv_(self: Tensor[], t1: Tensor[], t2: Tensor[], value: number | number[] = 1): void {
  same(self, t1, 'addcdiv_');
  same(self, t2, 'addcdiv_');
  if (typeof value === 'number') O.addcdiv_(hs(self), hs(t1), hs(t2), value);
  else O.addcdivList_(hs(self), hs(t1), hs(t2), value);
}
export function sqrt(self: Tensor[]): Tensor[] {
  return wrapHandles(O.sqrt(hs(self)));
}
export function sqrt_(self: Tensor[]): void {
  O.sqrt_(hs(self));
}
export function zero_(self: Tensor[]): void {
  O.zero_(hs(self));
}
export function mul(self: Tensor[], other: Tensor[] | number): Tensor[] {
  if (typeof other === 'number') return wrapHandles(O.mulScalar(hs(self), other));
  same(self, other, 'mul');
  return wrapHandles(O.mul(hs(self), hs(other)));
}
/** out[i] = self[i] + alpha * other[i] (new tensors). */
export function add(self: Tensor[], other: Tensor[], alpha = 1): Tensor[] {
  same(self, other, 'add');
  return wrapHandles(O.add(hs(self), hs(other), alpha));
}
export function norm(self: Tensor[], ord = 2): Tensor[] {
  return wrapHandles(O.norm(hs(self), ord));
}
export function maximum_(self: Tensor[], other: Tensor[]): void {
  same(self, other, 'maximum_');
  O.maximum_(hs(self), hs(other));
}
