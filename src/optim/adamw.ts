/**
 * AdamW with PyTorch's semantics (decoupled weight decay, bias correction,
 * amsgrad). With Grad Mults set it is RepOptimizer's AdamW: the gradient is
 * multiplied by M before the moments, and the first moment by M again in the
 * update, p -= lr * (m_hat * M) / (sqrt(v_hat) + eps).
 */
import { foreach, type Tensor } from '../torch/index.js';
import * as torch from '../torch/index.js';
import { Optimizer, type Group, type GroupSpec, type NamedParameters } from './optimizer.js';

export interface AdamWOptions {
  lr: number;
  beta1: number;
  beta2: number;
  eps: number;
  weightDecay: number;
  amsgrad: boolean;
}

export class AdamW extends Optimizer<AdamWOptions> {
  constructor(params: NamedParameters | GroupSpec<AdamWOptions>[], options: Partial<AdamWOptions> & { lr: number }) {
    super(params, { beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0.01, amsgrad: false, ...options });
  }

  protected override validate(h: AdamWOptions): void {
    super.validate(h);
    if (!(h.beta1 >= 0 && h.beta1 < 1) || !(h.beta2 >= 0 && h.beta2 < 1)) throw new RangeError(`invalid betas (${h.beta1}, ${h.beta2})`);
    if (!(h.eps >= 0)) throw new RangeError(`invalid eps ${h.eps}`);
  }

  protected update(group: Group<AdamWOptions>, params: Tensor[], grads: Tensor[], names: string[]): void {
    const { lr, beta1, beta2, eps, weightDecay, amsgrad } = group.hyper;
    const m: Tensor[] = [];
    const v: Tensor[] = [];
    const vmax: Tensor[] = [];
    const steps: number[] = [];
    names.forEach((n, i) => {
      const s = this.stateOf(n);
      if (!s.has('exp_avg')) {
        this.setState(n, 'step', torch.zeros([], { dtype: 'float32' }));
        this.setState(n, 'exp_avg', torch.zerosLike(params[i]));
        this.setState(n, 'exp_avg_sq', torch.zerosLike(params[i]));
        if (amsgrad) this.setState(n, 'max_exp_avg_sq', torch.zerosLike(params[i]));
      }
      const step = s.get('step')!.add_(1);
      steps.push(step.item());
      m.push(s.get('exp_avg')!);
      v.push(s.get('exp_avg_sq')!);
      if (amsgrad) vmax.push(s.get('max_exp_avg_sq')!);
    });
    if (weightDecay !== 0) foreach.mul_(params, 1 - lr * weightDecay);
    // m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2
    foreach.mul_(m, beta1);
    foreach.add_(m, grads, 1 - beta1);
    foreach.mul_(v, beta2);
    foreach.addcmul_(v, grads, grads, 1 - beta2);
    if (amsgrad) foreach.maximum_(vmax, v);
    const second = amsgrad ? vmax : v;
    const bc2sqrt = steps.map((t) => Math.sqrt(1 - beta2 ** t));
    const denom = foreach.sqrt(second);
    foreach.div_(denom, bc2sqrt);
    foreach.add_(denom, eps);
    const numer = names.map((n, i) => {
      const mult = this.gradMult(n);
      return mult ? m[i].mul(mult) : m[i];
    });
    foreach.addcdiv_(params, numer, denom, steps.map((t) => -lr / (1 - beta1 ** t)));
  }
}
