/**
 * From a run's configuration to a model and an optimizer: the model (named
 * arch or custom blocks/widths) in the right mode, the release's weight-decay
 * exclusion rule, and, for RepOpt training, the Grad Mults rebuilt from the
 * scales plus the Rule of Initialization of a fresh target model.
 */
import type { Tensor } from '../torch/index.js';
import type { Module } from '../nn/index.js';
import { SGD, AdamW, type Optimizer, type GroupSpec, type OptimizerKind } from '../optim/index.js';
import { RepSGD, RepAdamW, type GradMults } from '../repopt/optimizers.js';
import { QARepVGGBlock, RepOptVGG, isQARepVGGL2Kernel } from '../models/repoptvgg.js';
import { familyOf, type ModelFamily, type ModelSpec } from '../models/family.js';
import { releaseDecays } from '../models/families.js';
import type { ScaleMap } from '../models/scales.js';
import { OptionError } from '../errors.js';
import { loadStateDictFile, notFitting } from './checkpoint.js';
import { freezeParameters, loadPretrained, type PretrainedReport } from './pretrained.js';

/** A run's model: a registered architecture (any family) or a custom RepOpt-VGG; channels and classes from the data. */
export type ModelConfig = ModelSpec;

/**
 * The run modes: `target` (RepOptimizer: the plain form with Grad Mults), `plain` (the same model,
 * ordinary optimizer), `hs` (Hyper-Search), and the family's multi-branch baseline (`repvgg` for
 * RepOpt-VGG, `rep` for RepOpt-GhostNet). Evaluation also takes any model mode (`csla`).
 */
export type RunMode = 'target' | 'plain' | 'hs' | 'repvgg' | 'qarepvgg' | 'rep' | 'mobileone' | 'csla';

/** The model mode a run mode trains (`plain` trains the target form). */
export function modelMode(mode: RunMode, family?: ModelFamily): string {
  const m = mode === 'plain' ? (family?.targetMode ?? 'target') : mode;
  if (family && !family.modes.includes(m)) {
    throw new OptionError('mode', `${family.name} has no '${mode}' mode; its multi-branch baseline is '${family.baselineMode}' (modes: ${family.modes.join(', ')}, plain)`);
  }
  return m;
}

export function archLabel(m: ModelConfig): string {
  return familyOf(m).label(m);
}

/** The model of a configuration in a model mode, from its family. */
export function buildModel(m: ModelConfig, mode: string): Module {
  if (m.arch !== undefined && (m.blocks !== undefined || m.widths !== undefined)) throw new OptionError('model', 'give either an architecture or custom blocks and widths, not both');
  return familyOf(m).create(m, mode);
}

/** A RepOpt-VGG of a configuration (for the RepOpt-VGG benchmarks). */
export function buildVgg(m: ModelConfig, mode: string): RepOptVGG {
  const model = buildModel(m, mode);
  if (model instanceof RepOptVGG) return model;
  model.dispose();
  throw new OptionError('model', `${archLabel(m)} is not a RepOpt-VGG`);
}

/**
 * The release's weight-decay rule: decay on kernels (conv, linear weights) and
 * `scale_identity`; none on BN parameters, biases, `scale_conv`, `scale_1x1`.
 */
export const decays = releaseDecays;
export interface OptimizerConfig {
  kind: OptimizerKind;
  lr: number;
  momentum: number;
  nesterov: boolean;
  weightDecay: number;
  /** Apply weight decay to every parameter (off: the release's exclusion rule). */
  decayAll?: boolean;
}

/**
 * SGD / AdamW over the model's trainable parameters with a weight-decay rule (default: the release's), or
 * with Grad Mults the RepOptimizers RepSGD / RepAdamW (the mults stay the caller's to dispose).
 */
export function buildOptimizer(model: Module, o: OptimizerConfig, mults?: GradMults, decays: (name: string, p: Tensor) => boolean = releaseDecays): Optimizer<{ lr: number }> {
  const named = model.namedParameters().filter(([, p]) => p.requiresGrad);
  const decay = o.decayAll ? named : named.filter(([n, p]) => decays(n, p));
  const rest = o.decayAll ? [] : named.filter(([n, p]) => !decays(n, p));
  if (o.kind === 'sgd') {
    const groups: GroupSpec<{ lr: number; momentum: number; dampening: number; nesterov: boolean; weightDecay: number }>[] = [{ params: decay }];
    if (rest.length) groups.push({ params: rest, options: { weightDecay: 0 } });
    const hyper = { lr: o.lr, momentum: o.momentum, nesterov: o.nesterov, weightDecay: o.weightDecay };
    return mults ? new RepSGD(groups, hyper, mults) : new SGD(groups, hyper);
  }
  const groups: GroupSpec<{ lr: number; beta1: number; beta2: number; eps: number; weightDecay: number; amsgrad: boolean }>[] = [{ params: decay }];
  if (rest.length) groups.push({ params: rest, options: { weightDecay: 0 } });
  const hyper = { lr: o.lr, weightDecay: o.weightDecay };
  return mults ? new RepAdamW(groups, hyper, mults) : new AdamW(groups, hyper);
}

export interface RunSetup {
  model: Module;
  family: ModelFamily;
  optimizer: Optimizer<{ lr: number }>;
  /** SGD Grad Mults (CSLA-norm clipping) when training with a RepOptimizer. */
  cslaMults?: Map<string, Tensor>;
  /** A penalty the trainer adds to the loss (QARepVGG's custom L2). */
  regularizer?: () => Tensor;
  /** What `pretrained` loaded and replaced (src/train/pretrained.ts). */
  pretrained?: PretrainedReport;
  /** The parameters `freeze` froze. */
  frozen?: string[];
}

export interface SetupOptions {
  model: ModelConfig;
  mode: RunMode;
  optimizer: OptimizerConfig;
  scales?: string;
  init?: string;
  identityInit?: 'searched' | 'one';
  /** AdamW: the release's signed Grad Mult. */
  signedAdamW?: boolean;
  /** Resuming: the weights come from the checkpoint, skip (re)initialisation. */
  resuming?: boolean;
  /** QARepVGG (mode qarepvgg): its custom L2 instead of weight decay on the 3x3 and 1x1 kernels. */
  customL2?: boolean;
  /** Fine-tune from this checkpoint (src/train/pretrained.ts): a new classifier where the classes differ; no Rule of Initialization. */
  pretrained?: string;
  /** Parameter name prefixes to freeze (left out of the optimizer). */
  freeze?: readonly string[];
}

/**
 * QARepVGG's custom L2 (the official recipe): no weight decay on `rbr_dense.conv.weight` and `rbr_1x1.weight`;
 * instead wd / 2 times the sum of every block's `customL2()` joins the loss.
 */
function qaRepVggCustomL2(model: RepOptVGG, o: OptimizerConfig, family: ModelFamily): Pick<RunSetup, 'optimizer' | 'regularizer'> {
  const blocks = model.blocks.filter((b): b is QARepVGGBlock => b instanceof QARepVGGBlock);
  const optimizer = buildOptimizer(model, { ...o, decayAll: false }, undefined, (n, p) => !isQARepVGGL2Kernel(n) && family.decays(n, p));
  const half = o.weightDecay / 2;
  const regularizer = () => blocks.reduce((sum: Tensor | null, b) => (sum ? sum.add(b.customL2()) : b.customL2()), null)!.mul(half);
  return { optimizer, regularizer };
}

export function setupRun(s: SetupOptions): RunSetup {
  const family = familyOf(s.model);
  const model = buildModel(s.model, modelMode(s.mode, family));
  try {
    if (s.pretrained && s.init) throw new OptionError('pretrained', 'give either pretrained (fine-tune: a new classifier where needed) or init (a state dict loaded as it is), not both');
    if (s.init && !s.resuming) {
      const sd = loadStateDictFile(s.init);
      try {
        model.loadStateDict(sd);
      } catch (e) {
        throw notFitting(s.init, `${archLabel(s.model)} (${modelMode(s.mode, family)})`, e);
      } finally {
        for (const t of sd.values()) t.dispose();
      }
    }
    const pretrained = s.pretrained && !s.resuming ? loadPretrained(model, s.pretrained, { warmStart: s.mode === 'hs' }) : undefined;
    const frozen = s.freeze?.length ? freezeParameters(model, s.freeze) : undefined;
    const extra = { ...(pretrained ? { pretrained } : {}), ...(frozen ? { frozen } : {}) };
    if (s.customL2) {
      if (s.mode !== 'qarepvgg') throw new OptionError('customL2', `the custom L2 is QARepVGG's (mode qarepvgg); this run's mode is ${s.mode}`);
      return { model, family, ...qaRepVggCustomL2(model as RepOptVGG, s.optimizer, family), ...extra };
    }
    if (s.mode !== 'target') {
      if (s.scales) throw new OptionError('scales', `scales are only used by RepOpt training (mode target); this run's mode is ${s.mode}`);
      return { model, family, optimizer: buildOptimizer(model, s.optimizer, undefined, family.decays), ...extra };
    }
    if (!s.scales) throw new OptionError('scales', 'mode target trains with a RepOptimizer and needs scales (a scale file from Hyper-Search or the release); train mode plain for ordinary training');
    const scales: ScaleMap = family.loadScales(model, s.scales);
    try {
      const handler = family.handler(model, scales, { identityInit: s.identityInit });
      // An init file or a pretrained model is loaded as it is; otherwise the fresh model gets the Rule of Initialization.
      if (!s.init && !s.pretrained && !s.resuming) handler.reinitialize(model);
      const mults = handler.gradMults(s.optimizer.kind, { signed: s.signedAdamW });
      // Frozen parameters are not the optimizer's: their mults go (the clipping weights keep them; they have no gradient).
      const trainable = frozen ? new Map([...mults].filter(([n]) => !frozen.includes(n))) : mults;
      const optimizer = buildOptimizer(model, s.optimizer, trainable, family.decays);
      // SGD's mults double as the CSLA-norm clipping weights; AdamW's are the optimizer's alone.
      if (s.optimizer.kind === 'sgd') return { model, family, optimizer, cslaMults: mults, ...extra };
      for (const m of mults.values()) m.dispose();
      return { model, family, optimizer, cslaMults: handler.gradMults('sgd'), ...extra };
    } finally {
      for (const t of scales.values()) t.dispose();
    }
  } catch (e) {
    model.dispose();
    throw e;
  }
}
