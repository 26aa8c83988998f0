/**
 * A checkpoint as the model it was saved from: the architecture (given, or the run's config.json beside
 * the checkpoint), the mode, input channels and classes from the state dict's keys. What `repopt eval`
 * reads, and the start of every deployment study (src/deploy/study.ts).
 */
import fs from 'node:fs';
import path from 'node:path';
import type { Module } from '../nn/index.js';
import { familyOf, type ModelFamily, type ModelSpec } from '../models/family.js';
import { loadModelFile } from '../models/csla-family.js';
import '../models/families.js';
import { OptionError } from '../errors.js';
import { loadStateDictFile, notFitting } from './checkpoint.js';

/** The model of a checkpoint, when no config.json is beside it: an architecture, a custom RepOpt-VGG or a network file. */
export interface CheckpointModel {
  arch?: string;
  blocks?: number[];
  widths?: number[];
  strides?: number[];
  /** A network file (`--model FILE`, src/models/csla-family.ts). */
  file?: string;
}

export interface CheckpointSource {
  /** A repopt training checkpoint, `{"model": ...}`, a plain state dict (e.g. the release's), or a deployed state dict. */
  checkpoint: string;
  /** The model; without arch/blocks/widths/file, the run's config.json beside the checkpoint (strides alone override its strides). */
  model?: CheckpointModel;
}

/** The model of a checkpoint: given, or the run's config.json beside it. */
export function checkpointModel(src: CheckpointSource): CheckpointModel {
  const m = src.model ?? {};
  const given = [m.arch !== undefined, m.blocks !== undefined || m.widths !== undefined, m.file !== undefined].filter(Boolean).length;
  if (given > 1) throw new OptionError('model', 'give one model: an architecture, custom blocks and widths, or a network file');
  if (given === 1) {
    if (m.file === undefined && m.arch === undefined && !(m.blocks && m.widths)) throw new OptionError('model', 'a custom RepOpt-VGG needs both blocks and widths');
    return m;
  }
  const cfgFile = path.join(path.dirname(src.checkpoint), 'config.json');
  if (!fs.existsSync(cfgFile)) throw new OptionError('model', `no config.json beside ${src.checkpoint}: give the model (an architecture, custom blocks and widths [and strides], or a network file)`);
  const saved = JSON.parse(fs.readFileSync(cfgFile, 'utf8')) as { model?: ModelSpec };
  if (!saved.model) throw new Error(`${cfgFile}: no model configuration`);
  const { arch, blocks, widths, strides, file } = saved.model;
  return { arch, blocks, widths, strides: m.strides ?? strides, file };
}

/** Imports the network file of a checkpoint's model, if it has one (before the synchronous loaders below). */
export async function prepareCheckpointModel(src: CheckpointSource): Promise<void> {
  if (!fs.existsSync(src.checkpoint)) return; // the loader says so
  const m = checkpointModel(src);
  if (m.file !== undefined) await loadModelFile(m.file);
}

export interface CheckpointModelOptions {
  /** The mode the state dict was saved in (default: read from its keys; `hs` and `csla` look alike). */
  mode?: string;
  /** Input channels and classes the model must have (default: the state dict's); a mismatch is an error. */
  inChannels?: number;
  numClasses?: number;
}

/**
 * A checkpoint as the model it was saved from (trained form in its mode, or the deploy form), weights
 * loaded strictly, in eval mode. The architecture as in {@link loadForDeploy}.
 */
export function loadCheckpointModel(src: CheckpointSource, opts: CheckpointModelOptions = {}): { model: Module; family: ModelFamily; mode: string; config: ModelSpec } {
  const file = src.checkpoint;
  if (!fs.existsSync(file)) throw new Error(`${file}: no such checkpoint`);
  const spec = checkpointModel(src);
  const sd = loadStateDictFile(file);
  try {
    const family = familyOf({ ...spec, inChannels: 3, numClasses: 1 });
    const info = family.inspectStateDict(sd, spec);
    for (const k of ['inChannels', 'numClasses'] as const) {
      const want = opts[k];
      if (want !== undefined && want !== info[k]) throw new Error(`${file}: the model has ${info[k]} ${k === 'numClasses' ? 'classes' : 'input channels'}, the data ${want}`);
    }
    const mode = opts.mode ?? info.mode;
    const config: ModelSpec = { ...spec, inChannels: info.inChannels, numClasses: info.numClasses };
    const model = mode === 'deploy' ? family.createDeployed(config) : family.create(config, mode);
    try {
      model.loadStateDict(sd);
    } catch (e) {
      model.dispose();
      throw notFitting(file, `${family.label(config)} (${mode === 'deploy' ? 'deploy form' : mode})`, e);
    }
    return { model: model.eval(), family, mode, config };
  } finally {
    for (const t of sd.values()) t.dispose();
  }
}

