/**
 * Model families: what the training and deployment pipeline needs to know about a family of models,
 * so that search, train, eval, deploy, export and quantize work on every architecture `listArchs()`
 * lists without knowing which family it belongs to.
 *
 *   const family = familyOf({ arch: 'RepOpt-GhostNet-0.5x', inChannels: 3, numClasses: 10 });
 *   const model = family.create(spec, family.targetMode);
 *   const scales = family.loadScales(model, 'RepOptGhostNet_0_5x_scales.pth');
 *   const handler = family.handler(model, scales);      // Grad Mults, Rule of Initialization
 *   const deployed = family.deploy(model);               // the plain inference network
 *
 * Families register themselves (src/models/families.ts registers RepOpt-VGG and RepOpt-GhostNet).
 */
import type { Tensor } from '../torch/index.js';
import type { Module } from '../nn/index.js';
import type { RepOptHandler } from '../repopt/handler.js';
import type { ScaleMap, ScaleScheme, SiteOptions } from './scales.js';
import { getArch, listArchs, registerArch, type ArchInfo } from './registry.js';
import { OptionError } from '../errors.js';

/** A model to build: a registered architecture, or a family's custom configuration; channels and classes. */
export interface ModelSpec {
  /** A registered architecture name (`repopt models`). */
  arch?: string;
  /** RepOpt-VGG custom configuration: blocks and width multipliers of stages 1-4. */
  blocks?: number[];
  widths?: number[];
  /** RepOpt-VGG: the five stage strides (default 2,2,2,2,2). */
  strides?: number[];
  /** A network file (`--model FILE`): its default export builds the network in a mode (src/models/csla-family.ts). */
  file?: string;
  inChannels: number;
  numClasses: number;
}

/** The facts a state dict of a family carries about its model. */
export interface StateDictInfo {
  /** The mode it was saved in; `'deploy'` for the fused inference form. */
  mode: string;
  inChannels: number;
  numClasses: number;
}

export interface ModelFamily {
  readonly name: string;
  /** The model modes (what `create` accepts). */
  readonly modes: readonly string[];
  /** The plain training form RepOpt trains (with Grad Mults), and the form `plain` runs train without them. */
  readonly targetMode: string;
  /** The Hyper-Search form (branches with trainable scales). */
  readonly hsMode: string;
  /** The structurally re-parameterized multi-branch baseline (RepVGG, RepGhostNet). */
  readonly baselineMode: string;
  /** Whether this family builds the model a spec describes. */
  covers(spec: ModelSpec): boolean;
  /** A readable name of the model a spec describes. */
  label(spec: ModelSpec): string;
  /** The model in a mode (an error names the family's modes). */
  create(spec: ModelSpec, mode: string): Module;
  /** Mode, input channels and classes from a state dict of this family (an error when it is not one). */
  inspectStateDict(sd: ReadonlyMap<string, Tensor>, spec?: Omit<ModelSpec, 'inChannels' | 'numClasses'>): StateDictInfo;
  /** The scales of a scale file or Hyper-Search checkpoint for a model, checked by name (the caller disposes them). */
  loadScales(model: Module, file: string): ScaleMap;
  /** The searched scales of a trained Hyper-Search model, by name (copies; the caller disposes them). */
  extractScales(model: Module): ScaleMap;
  /** Writes a scale file (+ its JSON summary) readable by `loadScales` and by the release's code. */
  saveScales(file: string, scales: ScaleMap, model: Module, label: string): { file: string; summary: string };
  /** The RepOptimizer handler of a target model from checked scales (Grad Mults, Rule of Initialization). */
  handler(model: Module, scales: ScaleMap, opts?: SiteOptions): RepOptHandler;
  /** The weight-decay rule: whether a parameter decays (the release's rule). */
  decays(name: string, p: Tensor): boolean;
  /** The deploy form of a model in any mode (a new module in eval mode; the model is unchanged). */
  deploy(model: Module): Module;
  /** An empty deploy-form model, to load a deployed state dict into. */
  createDeployed(spec: ModelSpec): Module;
  /** Names of the arms of a comparison by run mode (`target`, `plain`, the baseline), where not {@link armName}'s default. */
  readonly armNames?: Readonly<Record<string, string>>;
  /** The family's named architectures: `registerFamily` registers them (`createModel`, `listArchs`, `familyOf`). */
  readonly archs?: readonly ArchInfo[];
  /** The scale scheme of its named architectures (`loadScaleFile(file, arch)`, `repopt scales`), where it has one. */
  readonly scales?: ScaleScheme;
}

/**
 * The name of a run of a family in a mode, as reports and studies show it: `hs` is the Hyper-Search;
 * otherwise the family's own name for the mode, or `RepOpt-X` (target), `plain X`, `X (mode)`.
 */
export function armName(family: ModelFamily, mode: string): string {
  if (mode === 'hs') return 'Hyper-Search';
  const own = family.armNames?.[mode];
  if (own) return own;
  const base = family.name.replace(/^RepOpt-/, '');
  if (mode === 'target') return family.name.startsWith('RepOpt-') ? family.name : `RepOpt ${family.name}`;
  if (mode === 'plain') return `plain ${base}`;
  return `${base} (${mode})`;
}

const families: ModelFamily[] = [];

/** Registers a family and its architectures (`f.archs`): the one registry of models, scale schemes included. */
export function registerFamily(f: ModelFamily): void {
  if (families.some((x) => x.name === f.name)) throw new Error(`model family '${f.name}' registered twice`);
  for (const a of f.archs ?? []) {
    if (a.family !== f.name) throw new Error(`architecture '${a.name}' says family '${a.family}', registered by family '${f.name}'`);
  }
  families.push(f);
  for (const a of f.archs ?? []) registerArch(a);
}

/** The scale scheme of a named architecture: its family's (`ModelFamily.scales`), found through the architecture registry. */
export function scaleSchemeOf(arch: string): ScaleScheme | undefined {
  let family: string;
  try {
    family = getArch(arch).family;
  } catch {
    return undefined;
  }
  return families.find((f) => f.name === family)?.scales;
}

/** Every registered family's scale scheme. */
export function listScaleSchemes(): ScaleScheme[] {
  return families.flatMap((f) => (f.scales ? [f.scales] : []));
}

export function listFamilies(): readonly ModelFamily[] {
  return families;
}

/** The family that builds a spec: by its architecture's family, or the family that takes its custom configuration. */
export function familyOf(spec: ModelSpec): ModelFamily {
  if (spec.arch !== undefined) {
    let family: string;
    try {
      family = getArch(spec.arch).family;
    } catch (e) {
      throw new OptionError('arch', (e as Error).message);
    }
    const f = families.find((x) => x.name === family);
    if (!f) throw new Error(`architecture '${spec.arch}' (family ${family}) has no registered model family`);
    if (!f.covers(spec)) throw new OptionError('model', `${spec.arch}: options that ${family} does not take (${customOptions(spec).join(', ')})`);
    return f;
  }
  const f = families.find((x) => x.covers(spec));
  if (!f && spec.file !== undefined) throw new OptionError('model', `model file ${spec.file} is not loaded: await loadModelFile('${spec.file}') first`);
  if (!f) throw new OptionError('model', `no model: give an architecture (${listArchs().map((a) => a.name).slice(0, 3).join(', ')}, ...) or a custom RepOpt-VGG (blocks and widths)`);
  return f;
}

function customOptions(spec: ModelSpec): string[] {
  return (['blocks', 'widths', 'strides', 'file'] as const).filter((k) => spec[k] !== undefined);
}

/** The family whose state dicts look like this one (tries each family's `inspectStateDict`). */
export function familyOfStateDict(sd: ReadonlyMap<string, Tensor>): { family: ModelFamily; info: StateDictInfo } {
  const errors: string[] = [];
  for (const family of families) {
    try {
      return { family, info: family.inspectStateDict(sd) };
    } catch (e) {
      errors.push((e as Error).message);
    }
  }
  throw new Error(`not a state dict of any model family (${errors.join('; ')})`);
}
