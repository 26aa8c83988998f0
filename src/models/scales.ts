/**
 * Scale files: the constants a Hyper-Search leaves behind (Ding et al., ICLR 2023, arXiv 2205.15242, sec. 3.3).
 *
 * Reads the release's files as they are (a flat state dict of scale tensors,
 * plain dict or OrderedDict, any key order) and full hyper-search checkpoints
 * (`{"model": state_dict}`, optionally with a DataParallel `module.` prefix):
 * only keys a family calls scale keys are read; convs, BN and the classifier
 * are ignored. Loading is by name against the keys and shapes the architecture
 * expects: a missing or mis-shaped key, or scale keys the architecture does not
 * have, is an Error naming the key, its expected shape and, where one fits, the
 * architecture the file belongs to.
 *
 * Our own scale files are PyTorch checkpoints (a flat OrderedDict of the scale
 * tensors, same keys, model order) plus a readable JSON summary beside them
 * (`x.pth` -> `x.json`).
 *
 * Families plug in through their `ModelFamily.scales` (family.ts; RepOpt-VGG's in repoptvgg-handler.ts,
 * registered with its family in families.ts): an architecture's scheme is its family's.
 */
import * as fs from 'node:fs';
import * as torch from '../torch/index.js';
import type { Tensor } from '../torch/index.js';
import { extractStateDict, loadPth, savePth } from '../io/pth.js';
import { PyOrderedDict } from '../io/pickle.js';
import type { ReparamSite } from '../repopt/handler.js';
import type { CreateModelOptions } from './registry.js';
import { listScaleSchemes, scaleSchemeOf } from './family.js';

/** Scale tensors by state-dict key. */
export type ScaleMap = Map<string, Tensor>;

export interface SiteOptions {
  /**
   * Initial value of trainable identity branches in the Rule of Initialization:
   * 'searched' (default, the release: the searched identity scale) or 'one'
   * (the paper's equation).
   */
  identityInit?: 'searched' | 'one';
}

/** What a model family knows about its scales. */
export interface ScaleScheme {
  family: string;
  /** Whether the scheme covers an architecture name. */
  covers(arch: string): boolean;
  /** Architectures to try when a file does not fit (for the error message). */
  archs(): string[];
  /** Scale keys and shapes the architecture's `hs` model holds, in model order. */
  expected(arch: string, opts?: CreateModelOptions): Map<string, number[]>;
  /** Whether a state-dict key names a scale (everything else in a checkpoint is ignored). */
  isScaleKey(key: string): boolean;
  /** The target model's re-parameterised kernels as CSLA sites, from checked scales. */
  sites(arch: string, scales: ScaleMap, opts?: CreateModelOptions & SiteOptions): ReparamSite[];
}

/** The scale scheme of a named architecture (its family's; an error lists the architectures that have one). */
export function scaleScheme(arch: string): ScaleScheme {
  const s = scaleSchemeOf(arch);
  if (!s || !s.covers(arch)) {
    const known = listScaleSchemes().flatMap((x) => x.archs());
    throw new Error(`no scale scheme for architecture '${arch}'${known.length ? ` (known: ${known.join(', ')})` : ''}`);
  }
  return s;
}

const shapeText = (s: readonly number[]) => `[${s.join(', ')}]`;

/** The scale entries of a state dict (keys the scheme calls scale keys; a common `module.` prefix dropped). */
function scaleEntries(sd: Map<string, Tensor>, scheme: ScaleScheme): ScaleMap {
  const keys = [...sd.keys()];
  const strip = keys.length > 0 && keys.every((k) => k.startsWith('module.'));
  const out: ScaleMap = new Map();
  for (const [k, t] of sd) {
    const key = strip ? k.slice('module.'.length) : k;
    if (scheme.isScaleKey(key)) out.set(key, t);
  }
  return out;
}

const asFloat32 = (scales: ScaleMap): ScaleMap => new Map([...scales].map(([k, t]) => [k, t.dtype === 'float32' ? t : t.to('float32')]));

function fits(scales: ScaleMap, expected: Map<string, number[]>): boolean {
  if (scales.size !== expected.size) return false;
  for (const [k, shape] of expected) {
    const t = scales.get(k);
    if (!t || shapeText(t.shape) !== shapeText(shape)) return false;
  }
  return true;
}

/**
 * Checks scales against what an architecture expects and returns them in model
 * order (the same tensors). Errors name the key and the expected shape.
 */
export function checkScales(scales: ScaleMap, arch: string, opts: CreateModelOptions & { label?: string; scheme?: ScaleScheme } = {}): ScaleMap {
  const scheme = opts.scheme ?? scaleScheme(arch);
  const expected = scheme.expected(arch, opts);
  const label = opts.label ?? 'scales';
  const hint = (): string => {
    const other = scheme.archs().find((a) => a !== arch && fits(scales, scheme.expected(a, opts)));
    return other ? ` (they fit ${other}: wrong architecture for the file?)` : '';
  };
  const problems: string[] = [];
  for (const [k, shape] of expected) {
    const t = scales.get(k);
    if (!t) problems.push(`missing scale '${k}' (expected shape ${shapeText(shape)})`);
    else if (shapeText(t.shape) !== shapeText(shape)) problems.push(`scale '${k}' has shape ${shapeText(t.shape)}, expected ${shapeText(shape)}`);
  }
  const extra = [...scales.keys()].filter((k) => !expected.has(k));
  if (extra.length) problems.push(`scale keys ${arch} does not have: ${extra.slice(0, 5).join(', ')}${extra.length > 5 ? `, ... (${extra.length} in all)` : ''}`);
  if (problems.length) {
    const more = problems.length > 3 ? `; ... (${problems.length} problems)` : '';
    throw new Error(`${label} do not match ${arch}: ${problems.slice(0, 3).join('; ')}${more}${hint()}`);
  }
  for (const [k, t] of scales) {
    const bad = t.toArray().find((v) => !Number.isFinite(v));
    if (bad !== undefined) throw new Error(`${label}: scale '${k}' holds a non-finite value (${bad})`);
  }
  return new Map([...expected.keys()].map((k) => [k, scales.get(k)!]));
}

/**
 * The scale tensors of a scale file or hyper-search checkpoint as they are
 * (for custom layouts, checked afterwards against the model), float32.
 */
export function readScaleEntries(file: string, scheme: ScaleScheme): ScaleMap {
  return torch.tidy(() => {
    const scales = scaleEntries(extractStateDict(loadPth(file), file), scheme);
    if (scales.size === 0) throw new Error(`${file}: holds no ${scheme.family} scale tensors`);
    return asFloat32(scales);
  });
}

/**
 * Loads a scale file or a hyper-search checkpoint for an architecture, by name.
 * Returns float32 scale tensors in model order; everything else in the file is freed.
 */
export function loadScaleFile(file: string, arch: string, opts: CreateModelOptions = {}): ScaleMap {
  const scheme = scaleScheme(arch);
  return torch.tidy(() => {
    const sd = extractStateDict(loadPth(file), file);
    const scales = scaleEntries(sd, scheme);
    if (scales.size === 0) {
      const like = [...scheme.expected(arch, opts).keys()][0];
      throw new Error(`${file}: holds no ${scheme.family} scale tensors (keys such as '${like}'); is it a scale file of another model family?`);
    }
    const checked = checkScales(scales, arch, { ...opts, scheme, label: `${file}: scales` });
    return asFloat32(checked);
  });
}

export interface ScaleSummary {
  format: 'repopt-scales';
  arch: string;
  tensors: number;
  floats: number;
  sum: number;
  scales: { key: string; shape: number[]; min: number; mean: number; max: number }[];
}

export function summarizeScales(scales: ScaleMap, arch: string): ScaleSummary {
  let floats = 0;
  let sum = 0;
  const rows = [...scales].map(([key, t]) => {
    const v = t.toArray();
    const s = v.reduce((a, b) => a + b, 0);
    floats += v.length;
    sum += s;
    return { key, shape: t.shape, min: Math.min(...v), mean: s / v.length, max: Math.max(...v) };
  });
  return { format: 'repopt-scales', arch, tensors: scales.size, floats, sum, scales: rows };
}

/** The JSON summary's path beside a scale file: `x.pth` -> `x.json`. */
export function summaryPath(file: string): string {
  return file.replace(/\.(pth|pt)$/i, '') + '.json';
}

/**
 * Writes scales as a PyTorch checkpoint (flat OrderedDict of the scale tensors,
 * keys as given, checked against the architecture first) and a JSON summary beside it.
 */
export function saveScaleFile(file: string, scales: ScaleMap, arch: string, opts: CreateModelOptions & { scheme?: ScaleScheme } = {}): { file: string; summary: string } {
  const checked = checkScales(scales, arch, { ...opts, label: 'scales to save' });
  const od = new PyOrderedDict();
  for (const [k, t] of checked) od.set(k, t);
  savePth(file, od);
  const summary = summaryPath(file);
  fs.writeFileSync(summary, JSON.stringify(summarizeScales(checked, arch), null, 2) + '\n');
  return { file, summary };
}
