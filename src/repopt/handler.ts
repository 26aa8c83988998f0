/**
 * The generic RepOptimizer handler. A model family only says where its
 * re-parameterised kernels are and which CSLA block each one stands for
 * (`ReparamSite`s, built from the searched scales); everything else, the Grad
 * Mult map for SGD or AdamW and the Rule of Initialization of a fresh target
 * model, is computed here from the general CSLA description (csla.ts).
 */
import * as torch from '../torch/index.js';
import type { DType, Tensor } from '../torch/index.js';
import { BatchNorm2d, type Module } from '../nn/index.js';
import { gradMult, initKernel, kernelShape, normalizeSpec, type CslaSpec, type GradMultOptions, type GradRule } from './csla.js';

/** One re-parameterised kernel of a target model. */
export interface ReparamSite {
  /** The target model's parameter name, e.g. `stage1.0.conv.weight`. */
  param: string;
  /** The CSLA block it replaces, scales resolved. */
  spec: CslaSpec;
  /** Initial values of the identity branches' trainable weights (default 1). */
  identityInit?: (ArrayLike<number> | number)[];
}

/** Refuses to re-initialise a model that has been trained (any BN weight != 1), unless forced. */
export function assertFresh(model: Module, force = false): void {
  if (force) return;
  for (const [name, m] of model.namedModules()) {
    if (!(m instanceof BatchNorm2d) || !m.weight) continue;
    const w = m.weight;
    const trained = torch.tidy(() => w.sub(1).abs().max().item() !== 0);
    if (trained) {
      throw new Error(
        `refusing to re-initialise a model that is not fresh: BatchNorm '${name}' has weights != 1 (it has been trained). ` +
          'The Rule of Initialization applies to a new model only; pass force to override.',
      );
    }
  }
}

export class RepOptHandler {
  constructor(readonly sites: ReparamSite[]) {
    for (const s of sites) normalizeSpec(s.spec); // validate early, with the block's own message
  }

  /**
   * Grad Mults keyed by parameter name (p = 2 for SGD, 1 for AdamW). The tensors are new and belong to
   * the caller: RepSGD / RepAdamW (and `setGradMults`) keep their own references, so the caller may
   * dispose these right after constructing the optimizer, and the optimizer's `dispose()` frees its own.
   * Undisposed, they are released at garbage collection.
   */
  gradMults(rule: GradRule, opts: GradMultOptions = {}): Map<string, Tensor> {
    return new Map(this.sites.map((s) => [s.param, torch.keep(gradMult(s.spec, rule, opts))]));
  }

  /**
   * Rule of Initialization: overwrites each re-parameterised kernel of a fresh
   * target model with the sum of freshly initialised branch kernels times their scales.
   */
  reinitialize(model: Module, opts: { force?: boolean } = {}): void {
    assertFresh(model, opts.force);
    const params = new Map(model.namedParameters());
    for (const s of this.sites) {
      const p = params.get(s.param);
      if (!p) throw new Error(`re-initialise: the model has no parameter '${s.param}'`);
      const want = kernelShape(s.spec);
      if (p.shape.join() !== want.join()) {
        throw new Error(`re-initialise: '${s.param}' has shape [${p.shape.join(', ')}], the scales describe [${want.join(', ')}]`);
      }
    }
    torch.noGrad(() =>
      torch.tidy(() => {
        for (const s of this.sites) {
          const p = params.get(s.param)!;
          p.copy_(initKernel(s.spec, { dtype: p.dtype as DType, identityWeights: s.identityInit }));
        }
      }),
    );
  }
}
