/**
 * From a run's configuration to a model and an optimizer: the model (named
 * arch or custom blocks/widths) in the right mode, the release's weight-decay
 * exclusion rule, and, for RepOpt training, the Grad Mults rebuilt from the
 * scales plus the Rule of Initialization of a fresh target model.
 */
import type { Tensor } from '../torch/index.js';
import type { Module } from '../nn/index.js';
import { SGD, AdamW, type Optimizer, type GroupSpec } from '../optim/index.js';
import { RepSGD, RepAdamW, type GradMults } from '../repopt/optimizers.js';
import { RepOptVGG, repOptVggConfig, type RepOptVGGMode } from '../models/repoptvgg.js';
import { layoutScheme, repOptVggHandler } from '../models/repoptvgg-handler.js';
import { checkScales, readScaleEntries, type ScaleMap } from '../models/scales.js';
import { loadStateDictFile } from './checkpoint.js';

export interface ModelConfig {
  arch?: string;
  blocks?: number[];
  widths?: number[];
  strides?: number[];
  inChannels: number;
  numClasses: number;
}

/** The run modes: `target` (RepOptimizer), `repvgg` and `plain` baselines, `hs` (Hyper-Search). */
export type RunMode = 'target' | 'repvgg' | 'plain' | 'hs';

export function modelMode(mode: RunMode): RepOptVGGMode {
  return mode === 'plain' ? 'target' : mode;
}

export function archLabel(m: ModelConfig): string {
  return m.arch ?? `RepOpt-VGG(blocks ${m.blocks?.join(',')}, widths ${m.widths?.join(',')})`;
}

export function buildModel(m: ModelConfig, mode: RepOptVGGMode): RepOptVGG {
  let numBlocks: readonly number[];
  let widthMultiplier: readonly number[];
  if (m.arch) {
    const cfg = repOptVggConfig(m.arch);
    if (!cfg) throw new Error(`unknown architecture '${m.arch}' (RepOpt-VGG-A0 ... RepOpt-VGG-L2, or use --blocks and --widths)`);
    ({ numBlocks, widthMultiplier } = cfg);
  } else {
    if (!m.blocks || !m.widths) throw new Error('give --arch NAME, or both --blocks and --widths');
    if (m.blocks.length !== 4 || m.widths.length !== 4) throw new Error('--blocks and --widths take 4 comma-separated values (stages 1-4)');
    if (m.blocks.some((b) => !Number.isInteger(b) || b < 1)) throw new Error(`--blocks must be positive integers, got ${m.blocks.join(',')}`);
    if (m.widths.some((w) => !(w > 0))) throw new Error(`--widths must be positive, got ${m.widths.join(',')}`);
    numBlocks = m.blocks;
    widthMultiplier = m.widths;
  }
  if (m.strides && (m.strides.length !== 5 || m.strides.some((s) => s !== 1 && s !== 2))) {
    throw new Error(`--strides takes 5 values of 1 or 2 (stage0..stage4), got ${m.strides.join(',')}`);
  }
  return new RepOptVGG({ numBlocks, widthMultiplier, mode, numClasses: m.numClasses, inChannels: m.inChannels, strides: m.strides });
}

/**
 * The release's weight-decay rule: decay on kernels (conv, linear weights) and
 * `scale_identity`; none on BN parameters, biases, `scale_conv`, `scale_1x1`.
 */
export function decays(name: string, p: Tensor): boolean {
  if (name.endsWith('scale_identity.weight')) return true;
  return p.ndim > 1;
}

export interface OptimizerConfig {
  kind: 'sgd' | 'adamw';
  lr: number;
  momentum: number;
  nesterov: boolean;
  weightDecay: number;
  /** Apply weight decay to every parameter (off: the release's exclusion rule). */
  decayAll?: boolean;
}

/** SGD / AdamW, or with Grad Mults the RepOptimizers RepSGD / RepAdamW (the mults stay the caller's to dispose). */
export function buildOptimizer(model: Module, o: OptimizerConfig, mults?: GradMults): Optimizer<{ lr: number }> {
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

/** Reads the searched scales for a model's layout (by name; any missing or mis-shaped key is an error). */
export function loadScalesFor(model: RepOptVGG, file: string): ScaleMap {
  const entries = readScaleEntries(file, layoutScheme(model.layout));
  return checkScales(entries, archLabelOf(model), { label: `${file}: scales`, scheme: layoutScheme(model.layout) });
}

function archLabelOf(model: RepOptVGG): string {
  return `this model (blocks ${model.config.numBlocks.join(',')}, widths ${model.config.widthMultiplier.join(',')})`;
}

export interface RunSetup {
  model: RepOptVGG;
  optimizer: Optimizer<{ lr: number }>;
  /** SGD Grad Mults (CSLA-norm clipping) when training with a RepOptimizer. */
  cslaMults?: Map<string, Tensor>;
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
}

export function setupRun(s: SetupOptions): RunSetup {
  const model = buildModel(s.model, modelMode(s.mode));
  try {
    if (s.init && !s.resuming) {
      const sd = loadStateDictFile(s.init);
      model.loadStateDict(sd);
      for (const t of sd.values()) t.dispose();
    }
    if (s.mode !== 'target') {
      if (s.scales) throw new Error(`--scales is only used by --mode target (RepOptimizer); this run is --mode ${s.mode}`);
      return { model, optimizer: buildOptimizer(model, s.optimizer) };
    }
    if (!s.scales) throw new Error('--mode target trains with a RepOptimizer and needs --scales FILE (from `repopt search` or the release); use --mode plain for ordinary training');
    const scales = loadScalesFor(model, s.scales);
    try {
      const handler = repOptVggHandler(model, scales, { identityInit: s.identityInit });
      // --init loads a state dict as it is; otherwise the fresh model gets the Rule of Initialization.
      if (!s.init && !s.resuming) handler.reinitialize(model);
      const mults = handler.gradMults(s.optimizer.kind, { signed: s.signedAdamW });
      const optimizer = buildOptimizer(model, s.optimizer, mults);
      // SGD's mults double as the CSLA-norm clipping weights; AdamW's are the optimizer's alone.
      if (s.optimizer.kind === 'sgd') return { model, optimizer, cslaMults: mults };
      for (const m of mults.values()) m.dispose();
      return { model, optimizer, cslaMults: handler.gradMults('sgd') };
    } finally {
      for (const t of scales.values()) t.dispose();
    }
  } catch (e) {
    model.dispose();
    throw e;
  }
}
