/**
 * Gradient clipping by global norm, as PyTorch's clip_grad_norm_, and the
 * RepOptimizer-safe variant. Plain clipping breaks the CSLA equivalence (the
 * single-kernel model sees a different norm than the multi-branch one); the
 * CSLA variant computes the imaginary multi-branch model's norm,
 *   sqrt(sum M_sgd * G^2 over re-parameterised kernels + sum G^2 over the rest),
 * and scales the raw gradients before the Grad Mult is applied (in step()).
 */
import * as torch from '../torch/index.js';
import type { Tensor } from '../torch/index.js';

const EPS = 1e-6;

function scaleGrads(grads: Tensor[], total: Tensor, maxNorm: number): void {
  const coef = total.add(EPS).pow(-1).mul(maxNorm).clamp(null, 1);
  for (const g of grads) g.mul_(coef);
}

function gradsOf(params: Iterable<Tensor>): Tensor[] {
  const out: Tensor[] = [];
  for (const p of params) {
    const g = p.grad;
    if (g) out.push(g);
  }
  return out;
}

/** Clips the gradients' global L2 norm to maxNorm in place; returns the norm before clipping. */
export function clipGradNorm(params: Iterable<Tensor>, maxNorm: number): number {
  return torch.noGrad(() =>
    torch.tidy(() => {
      const grads = gradsOf(params);
      if (grads.length === 0) return 0;
      const total = torch.stack(grads.map((g) => g.norm(2))).norm(2);
      scaleGrads(grads, total, maxNorm);
      return total.item();
    }),
  );
}

/** The global gradient norm of the imaginary CSLA model (mults: the SGD Grad Mults, power 2). */
export function cslaGradNorm(named: Iterable<[string, Tensor]>, sgdMults: ReadonlyMap<string, Tensor>): number {
  return torch.noGrad(() => torch.tidy(() => cslaNormTensor(named, sgdMults)[0]?.item() ?? 0));
}

function cslaNormTensor(named: Iterable<[string, Tensor]>, sgdMults: ReadonlyMap<string, Tensor>): [Tensor | undefined, Tensor[]] {
  const grads: Tensor[] = [];
  const squares: Tensor[] = [];
  for (const [name, p] of named) {
    const g = p.grad;
    if (!g) continue;
    grads.push(g);
    const m = sgdMults.get(name);
    squares.push(m ? g.square().mul(m).sum() : g.square().sum());
  }
  if (!squares.length) return [undefined, grads];
  return [torch.stack(squares).sum().sqrt(), grads];
}

/**
 * Clips by the CSLA model's global norm (equivalence-preserving under RepOptimizer):
 * every gradient is scaled by min(1, maxNorm / (norm + 1e-6)); returns the norm.
 */
export function clipGradNormCsla(named: Iterable<[string, Tensor]>, maxNorm: number, sgdMults: ReadonlyMap<string, Tensor>): number {
  return torch.noGrad(() =>
    torch.tidy(() => {
      const [total, grads] = cslaNormTensor(named, sgdMults);
      if (!total) return 0;
      scaleGrads(grads, total, maxNorm);
      return total.item();
    }),
  );
}
