/**
 * A model family from any network built of `CslaBlock`s (src/repopt/block.ts) and ordinary layers: the
 * pipeline (search, train, eval, deploy, export, quantize, report, data-parallel, resume) needs nothing
 * else than a function that builds the network in a mode.
 *
 *   // my-net.js
 *   export default (mode, { inChannels, numClasses }) => new MyNet(mode, inChannels, numClasses);
 *   export const baselineMode = 'mobileone';   // optional: a structural baseline mode the builder also takes
 *
 *   repopt search --model ./my-net.js --data fashion-mnist        (or runTraining({ model: { file } }))
 *
 * Everything generic is by block name (module path): scales `<block>.branches.<i>.scale.weight`, read and
 * written as scale files and checked key by key; the Grad Mults and the Rule of Initialization from
 * `repOptHandler`; deploy fusion with `reparameterizeModel`; a state dict's mode, input channels and
 * classes by building each mode and comparing keys and shapes.
 */
import fs from 'node:fs';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import type { Tensor } from '../torch/index.js';
import { Module } from '../nn/index.js';
import { CSLA_MODES, blockScaleShapesOf, cslaBlocks, extractScales, repOptHandler, repOptSites } from '../repopt/block.js';
import { reparameterizeModel } from '../repopt/reparam.js';
import { OptionError } from '../errors.js';
import { listFamilies, registerFamily, type ModelFamily, type ModelSpec, type StateDictInfo } from './family.js';
import { checkScales, readScaleEntries, saveScaleFile, type ScaleScheme } from './scales.js';
import type { CreateModelOptions } from './registry.js';

/** What a builder gets besides the mode: the data's channels and classes. */
export interface BuildOptions {
  inChannels: number;
  numClasses: number;
  /** The architecture asked for, when the family has several (`defineModel`'s `archs`). */
  arch?: string;
}

/** Builds a network in a mode: 'target' | 'hs' | 'csla' (passed on to its CslaBlocks) or the family's baseline mode. */
export type ModelBuilder = (mode: string, opts: BuildOptions) => Module;

export interface CslaFamilyDefinition {
  /** The family's name (messages, labels). */
  name: string;
  build: ModelBuilder;
  /** A structural baseline the builder also takes (e.g. MobileOne's own multi-branch form); default 'csla'. */
  baselineMode?: string;
  /** Whether the family builds a spec (default: none; `defineModel` and `loadModelFile` set it). */
  covers?(spec: ModelSpec): boolean;
  /** A readable name of a spec's model (default: the family's name). */
  label?(spec: ModelSpec): string;
  /** Whether a parameter decays (default: kernels and the classifier weight, ndim > 1). */
  decays?(name: string, p: Tensor): boolean;
  /** Names of the arms by run mode where not `armName`'s default. */
  armNames?: Readonly<Record<string, string>>;
  /** `defineModel`: the architecture names it registers (default: the family's name). */
  archs?: readonly string[];
  /** `defineModel`: an architecture's parameters and MACs (target, 1000 classes, 224x224) for listings. */
  stats?(arch: string): { params: number; macs: number };
}

const BLOCK_SCALE_KEY = /(^|\.)branches\.\d+\.scale\.weight$/;

/** The scale keys and shapes a model's CslaBlocks take (any form, each block's own names), in model order. */
export function blockScaleShapes(model: Module): Map<string, number[]> {
  return blockScaleShapesOf(cslaBlocks(model));
}

/**
 * Whether a checkpoint key names a scale of a model whose blocks name their scales `scaleKeys`: the default
 * `branches.<i>.scale.weight`, or any key ending in one of the blocks' own (naming-map) scale keys.
 */
export function scaleKeyTest(scaleKeys: Iterable<string>): (key: string) => boolean {
  const own = ownScaleKeyTest([...scaleKeys].filter((k) => !BLOCK_SCALE_KEY.test(k)));
  return (key) => BLOCK_SCALE_KEY.test(key) || own(key);
}

/** Whether a checkpoint key ends in one of the given block-relative scale keys (a naming map's, e.g. `scale_1x1.weight`). */
export function ownScaleKeyTest(scaleKeys: Iterable<string>): (key: string) => boolean {
  const own = [...new Set(scaleKeys)];
  return (key) => own.some((k) => key === k || key.endsWith(`.${k}`));
}

/** A scale scheme over one model's blocks, by name (what the scale-file layer checks against). */
export function blockScaleScheme(model: Module, family: string): ScaleScheme {
  const blocks = cslaBlocks(model);
  const shapes = blockScaleShapesOf(blocks);
  if (shapes.size === 0) throw new Error(`${family}: ${model.constructor.name} has no CslaBlock, so it has no scales`);
  const isScaleKey = scaleKeyTest(blocks.flatMap(([, b]) => b.scaleKeys));
  return {
    family,
    covers: () => true,
    archs: () => [],
    expected: () => shapes,
    isScaleKey,
    sites: () => {
      throw new Error(`${family}: sites come from the model's blocks (repOptSites)`);
    },
  };
}

/** The spec and mode a family built each model with (deploy copies a model without changing it). */
const built = new WeakMap<Module, { spec: ModelSpec; mode: string }>();

/** The model family of a network builder (see the file comment). */
export function cslaFamily(d: CslaFamilyDefinition): ModelFamily {
  const baselineMode = d.baselineMode ?? 'csla';
  const modes: readonly string[] = ['target', 'hs', 'csla', ...((CSLA_MODES as readonly string[]).includes(baselineMode) ? [] : [baselineMode])];
  const create = (spec: ModelSpec, mode: string): Module => {
    if (!modes.includes(mode)) throw new Error(`${d.name} has no mode '${mode}' (modes: ${modes.join(', ')})`);
    const model: unknown = d.build(mode, { inChannels: spec.inChannels, numClasses: spec.numClasses, arch: spec.arch });
    if (!(model instanceof Module)) throw new Error(`${d.name}: the builder returned ${model === null ? 'null' : typeof model} for mode '${mode}', not a Module`);
    if ((CSLA_MODES as readonly string[]).includes(mode) && cslaBlocks(model).length === 0) {
      model.dispose();
      throw new Error(`${d.name}: the model built in mode '${mode}' has no CslaBlock (pass the mode on to its blocks: new CslaBlock(spec, { mode }))`);
    }
    built.set(model, { spec, mode });
    return model;
  };
  const origin = (model: Module): { spec: ModelSpec; mode: string } => {
    const o = built.get(model);
    if (!o) throw new Error(`${d.name}: this ${model.constructor.name} was not built by the family (build it with family.create)`);
    return o;
  };
  const family: ModelFamily = {
    name: d.name,
    modes,
    targetMode: 'target',
    hsMode: 'hs',
    baselineMode,
    covers: (spec) => d.covers?.(spec) ?? false,
    label: (spec) => d.label?.(spec) ?? d.name,
    create,
    inspectStateDict(sd, given = {}): StateDictInfo {
      const shapes = [...sd.values()].map((t) => t.shape);
      const firstConv = shapes.find((s) => s.length === 4);
      const lastLinear = shapes.filter((s) => s.length === 2).at(-1);
      if (!firstConv || !lastLinear) throw new Error(`not a ${d.name} state dict (no conv kernel or no classifier weight)`);
      const info = { ...given, inChannels: firstConv[1], numClasses: lastLinear[0] };
      const want = [...sd].map(([k, t]) => `${k}:${t.shape.join('x')}`).sort().join();
      for (const mode of [...modes, 'deploy']) {
        const model = mode === 'deploy' ? family.createDeployed({ ...info }) : create({ ...info }, mode);
        try {
          const sd2 = model.stateDict();
          const have = [...sd2].map(([k, t]) => `${k}:${t.shape.join('x')}`).sort().join();
          if (have === want) return { mode, inChannels: info.inChannels, numClasses: info.numClasses };
        } finally {
          model.dispose();
        }
      }
      throw new Error(`not a ${d.label?.(info) ?? d.name} state dict: its keys and shapes match none of its modes (${[...modes, 'deploy'].join(', ')}) with ${info.inChannels} input channels and ${info.numClasses} classes`);
    },
    loadScales(model, file) {
      const scheme = blockScaleScheme(model, d.name);
      return checkScales(readScaleEntries(file, scheme), d.name, { label: `${file}: scales`, scheme });
    },
    extractScales: (model) => extractScales(model),
    saveScales: (file, scales, model, label) => saveScaleFile(file, scales, label, { scheme: blockScaleScheme(model, d.name) }),
    handler: (model, scales, opts = {}) => repOptHandler(model, scales, opts),
    decays: d.decays ?? ((_name, p) => p.ndim > 1),
    deploy(model) {
      // reparameterizeModel fuses a user's network in place; deploy leaves the trained model as it is.
      const { spec, mode } = origin(model);
      const copy = create(spec, mode);
      try {
        const sd = model.stateDict();
        copy.loadStateDict(sd);
        return reparameterizeModel(copy.eval());
      } catch (e) {
        copy.dispose();
        throw e;
      }
    },
    createDeployed(spec) {
      return reparameterizeModel(create(spec, 'target').eval());
    },
    armNames: d.armNames,
  };
  return family;
}

/**
 * Registers a network builder as a family and its architectures (default: one, of the family's name), so that
 * `runTraining({ model: { arch: name } })`, `familyOf` and `createModel(name, { mode })` take it.
 */
export function defineModel(d: CslaFamilyDefinition): ModelFamily {
  const archs = d.archs ?? [d.name];
  const base = cslaFamily({ ...d, covers: d.covers ?? ((spec) => spec.arch !== undefined && archs.includes(spec.arch) && spec.file === undefined && spec.blocks === undefined && spec.widths === undefined) });
  // Scale files by architecture name (`loadScaleFile(file, arch)`, `repopt scales FILE --arch A`): the
  // keys, shapes and sites of the architecture's target model, built for the question and freed.
  const withTarget = <T>(arch: string, o: CreateModelOptions, f: (m: Module) => T): T => {
    const m = base.create({ arch, inChannels: o.inChannels ?? 3, numClasses: o.numClasses ?? 1000 }, 'target');
    try {
      return f(m);
    } finally {
      m.dispose();
    }
  };
  let keyTest: ((key: string) => boolean) | null = null;
  const scales: ScaleScheme = {
    family: d.name,
    covers: (arch) => archs.includes(arch),
    archs: () => [...archs],
    expected: (arch, o = {}) => withTarget(arch, o, blockScaleShapes),
    isScaleKey: (key) => (keyTest ??= withTarget(archs[0], {}, (m) => scaleKeyTest(cslaBlocks(m).flatMap(([, b]) => b.scaleKeys))))(key),
    sites: (arch, s, o = {}) => withTarget(arch, o, (m) => repOptSites(m, s, o)),
  };
  const family: ModelFamily = {
    ...base,
    scales,
    archs: archs.map((name) => ({
      name,
      family: d.name,
      modes: [...base.modes],
      create: (o = {}) => base.create({ arch: name, inChannels: o.inChannels ?? 3, numClasses: o.numClasses ?? 1000 }, o.mode ?? 'target'),
      ...d.stats?.(name),
    })),
  };
  registerFamily(family);
  return family;
}

const files = new Map<string, ModelFamily>();

/** The absolute path a model file is known by. */
export const modelFilePath = (file: string): string => path.resolve(file);

/** Whether a model file has been loaded (`loadModelFile`). */
export const isModelFileLoaded = (file: string): boolean => files.has(modelFilePath(file));

/** The family of a model file loaded with `loadModelFile` (an OptionError when it was not loaded). */
export function modelFileFamily(file: string): ModelFamily {
  const f = files.get(modelFilePath(file));
  if (!f) throw new OptionError('model', `model file ${file} is not loaded: await loadModelFile('${file}') first`);
  return f;
}

/**
 * Imports a network file (`--model FILE`): its default export builds the network,
 * `(mode, { inChannels, numClasses }) => Module`; optional exports `name` (the label) and `baselineMode`.
 * Registers it as a family covering `{ file }` specs; loading the same file again returns the same family.
 */
export async function loadModelFile(file: string): Promise<ModelFamily> {
  const abs = modelFilePath(file);
  const known = files.get(abs);
  if (known) return known;
  if (!fs.existsSync(abs)) throw new OptionError('model', `${file}: no such model file`);
  if (fs.statSync(abs).isDirectory()) throw new OptionError('model', `${file} is a folder; give the network's .js file`);
  let mod: { default?: unknown; name?: unknown; baselineMode?: unknown };
  try {
    mod = (await import(pathToFileURL(abs).href)) as typeof mod;
  } catch (e) {
    throw new OptionError('model', `${file}: cannot import it (${(e as Error).message})`);
  }
  if (typeof mod.default !== 'function') {
    throw new OptionError('model', `${file}: its default export must be a function (mode, { inChannels, numClasses }) => Module; it is ${typeof mod.default}`);
  }
  if (mod.baselineMode !== undefined && typeof mod.baselineMode !== 'string') throw new OptionError('model', `${file}: export baselineMode must be a string`);
  const label = typeof mod.name === 'string' && mod.name ? mod.name : path.basename(abs).replace(/\.[cm]?js$/, '');
  const taken = listFamilies().some((f) => f.name === label);
  const family = cslaFamily({
    name: taken ? abs : label,
    build: mod.default as ModelBuilder,
    baselineMode: mod.baselineMode as string | undefined,
    covers: (spec) => spec.file !== undefined && modelFilePath(spec.file) === abs,
    label: () => label,
  });
  registerFamily(family);
  files.set(abs, family);
  return family;
}
