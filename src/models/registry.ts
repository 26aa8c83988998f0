/**
 * The model registry: `createModel('RepOpt-VGG-B1', { mode: 'target', numClasses: 100 })`.
 * Architectures are registered through their family (`ModelFamily.archs`, `registerFamily` in family.ts);
 * `registerArch` is what `registerFamily` calls.
 */
import type { Module } from '../nn/index.js';

export interface CreateModelOptions {
  /** Family-specific mode: RepOpt-VGG 'target' | 'hs' | 'csla' | 'repvgg'; GhostNet 'target' | 'hs' | 'csla' | 'rep'. */
  mode?: string;
  numClasses?: number;
  inChannels?: number;
  /** RepOpt-VGG: the five stage strides (default 2,2,2,2,2). */
  strides?: number[];
  /** RepOpt-VGG: squeeze-excitation after each block. */
  postSE?: boolean;
  dtype?: 'float32' | 'float64';
}

export interface ArchInfo {
  name: string;
  family: string;
  modes: string[];
  create(opts?: CreateModelOptions): Module;
  /** Parameters of the target model with 1000 classes, and multiply-accumulates at 224x224 (for listings). */
  params?: number;
  macs?: number;
}

const archs = new Map<string, ArchInfo>();

export function registerArch(info: ArchInfo): void {
  if (archs.has(info.name)) throw new Error(`architecture '${info.name}' registered twice`);
  archs.set(info.name, info);
}

export function getArch(name: string): ArchInfo {
  const a = archs.get(name);
  if (!a) throw new Error(`unknown architecture '${name}'; known: ${[...archs.keys()].join(', ')}`);
  return a;
}

export function createModel(name: string, opts: CreateModelOptions = {}): Module {
  const a = getArch(name);
  if (opts.mode && !a.modes.includes(opts.mode)) {
    throw new Error(`architecture '${name}' has no mode '${opts.mode}' (modes: ${a.modes.join(', ')})`);
  }
  return a.create(opts);
}

export function listArchs(): ArchInfo[] {
  return [...archs.values()];
}
