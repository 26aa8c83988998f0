/**
 * SGD with PyTorch's semantics (momentum, dampening, nesterov, coupled weight
 * decay). With Grad Mults set it is RepOptimizer's SGD: g = M * grad + wd * p.
 */
import { foreach, getFusedKernels, type Tensor } from '../torch/index.js';
import { wrapHandle } from '../torch/tensor.js';
import { native, type Handle } from '../torch/native.js';
import { Optimizer, type Group, type GroupSpec, type NamedParameters } from './optimizer.js';

export interface SGDOptions {
  lr: number;
  momentum: number;
  dampening: number;
  nesterov: boolean;
  weightDecay: number;
}

export class SGD extends Optimizer<SGDOptions> {
  constructor(params: NamedParameters | GroupSpec<SGDOptions>[], options: Partial<SGDOptions> & { lr: number }) {
    super(params, { momentum: 0, dampening: 0, nesterov: false, weightDecay: 0, ...options });
  }

  protected override validate(h: SGDOptions): void {
    super.validate(h);
    if (h.momentum < 0) throw new RangeError(`invalid momentum ${h.momentum}`);
    if (h.weightDecay < 0) throw new RangeError(`invalid weight decay ${h.weightDecay}`);
    if (h.nesterov && (h.momentum <= 0 || h.dampening !== 0)) throw new Error('nesterov needs momentum > 0 and dampening 0');
  }

  /**
   * One native pass per parameter (native/kernels.cc sgdStep: mult, weight decay, momentum and the
   * update fused, in ATen's float operations, so the same numbers as `update`); `update`'s composed
   * foreach ops where it does not apply (another dtype or layout) or with setFusedKernels(false).
   */
  protected override stepGroup(group: Group<SGDOptions>): void {
    if (!getFusedKernels()) return super.stepGroup(group);
    const { names, params, grads, mults } = this.withGrads(group);
    if (!params.length) return;
    const bufs = names.map((n): Handle | null => (group.hyper.momentum !== 0 ? (this.state.get(n)?.get('momentum_buffer')?.handle ?? null) : null));
    const created = native.sgdStep(
      params.map((p) => p.handle),
      grads.map((g) => g.handle),
      mults.map((m) => m?.handle ?? null),
      bufs,
      group.hyper,
    );
    if (created === null) return super.stepGroup(group);
    created.forEach((h, i) => {
      if (h !== null) this.setState(names[i], 'momentum_buffer', wrapHandle(h));
    });
  }

  protected update(group: Group<SGDOptions>, params: Tensor[], grads: Tensor[], names: string[], owned: boolean[]): void {
    const { lr, momentum, dampening, nesterov, weightDecay } = group.hyper;
    let d = weightDecay !== 0 ? withWeightDecay(grads, params, owned, weightDecay) : grads;
    if (momentum !== 0) {
      const bufs: Tensor[] = [];
      const fresh: boolean[] = [];
      names.forEach((n, i) => {
        const b = this.state.get(n)?.get('momentum_buffer');
        fresh.push(!b);
        bufs.push(b ?? this.setState(n, 'momentum_buffer', d[i].clone()));
      });
      const old = bufs.filter((_, i) => !fresh[i]);
      if (old.length) {
        const oldGrads = d.filter((_, i) => !fresh[i]);
        foreach.mul_(old, momentum);
        foreach.add_(old, oldGrads, 1 - dampening);
      }
      d = nesterov ? foreach.add(d, bufs, momentum) : bufs;
    }
    foreach.add_(params, d, -lr);
  }
}

/**
 * g + wd * p (coupled weight decay, added after any Grad Mult): in place on the fresh
 * (multiplied) gradients, out of place on the parameters' own .grad, which stay untouched.
 */
function withWeightDecay(grads: Tensor[], params: Tensor[], owned: boolean[], wd: number): Tensor[] {
  const own = owned.flatMap((o, i) => (o ? [i] : []));
  const shared = owned.flatMap((o, i) => (o ? [] : [i]));
  const out = grads.slice();
  if (own.length) foreach.add_(own.map((i) => grads[i]), own.map((i) => params[i]), wd);
  if (shared.length) {
    const fresh = foreach.add(shared.map((i) => grads[i]), shared.map((i) => params[i]), wd);
    shared.forEach((i, k) => (out[i] = fresh[k]));
  }
  return out;
}

