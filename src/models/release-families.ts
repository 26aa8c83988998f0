/**
 * The two release families of the zoo, as the pipeline sees them (src/models/family.ts):
 * RepOpt-VGG (named A0-L2 or custom blocks/widths/strides) and RepOpt-GhostNet (0.5x-2.0x), each
 * registered with its architectures and its scale scheme. Import families.ts (every family).
 */
import type { Tensor } from '../torch/index.js';
import type { Module } from '../nn/index.js';
import { reparameterizeModel } from '../repopt/reparam.js';
import { RepOptVGG, REPOPT_VGG_MODES, repOptVggArchs, repOptVggConfig, extractVggScales, type RepOptVGGMode } from './repoptvgg.js';
import { layoutScheme, repOptVggHandler, vggScaleScheme } from './repoptvgg-handler.js';
import {
  GhostNet, GHOSTNET_MODES, GHOSTNET_WIDTHS, extractGhostnetScales, ghostnetArchName, ghostnetArchs, ghostnetHandler, loadGhostnetScales, type GhostNetMode,
} from './ghostnet.js';
import { ghostnetScaleScheme } from './ghostnet-handler.js';
import { checkScales, readScaleEntries, saveScaleFile } from './scales.js';
import { registerFamily, type ModelFamily, type ModelSpec, type StateDictInfo } from './family.js';

/**
 * The release's weight-decay rule, the same for both families: kernels and the classifier weight decay,
 * and so does RepOpt-VGG's trainable identity scale (`scale_identity`); BN parameters, biases and the
 * other scales (`scale_conv`, `scale_1x1`, GhostNet's `fusion_scale` and cheap-op scale: all 1-d) do not.
 */
export function releaseDecays(name: string, p: Tensor): boolean {
  if (name.endsWith('scale_identity.weight')) return true;
  return p.ndim > 1;
}

function isMode<M extends string>(modes: readonly M[], mode: string): mode is M {
  return (modes as readonly string[]).includes(mode);
}

function shapeOf(sd: ReadonlyMap<string, Tensor>, key: string, family: string): number[] {
  const t = sd.get(key);
  if (!t) throw new Error(`no ${key} (not a ${family} state dict)`);
  return t.shape;
}

/** An empty deploy-form model of a spec: the deploy form of a fresh target model. */
function emptyDeployed(f: ModelFamily, spec: ModelSpec): Module {
  const model = f.create(spec, f.targetMode);
  try {
    return f.deploy(model);
  } finally {
    model.dispose();
  }
}

// ------------------------------------------------------------------ RepOpt-VGG

function asVgg(model: Module): RepOptVGG {
  if (!(model instanceof RepOptVGG)) throw new Error(`expected a RepOpt-VGG model, got ${model.constructor.name}`);
  return model;
}

const vggLabel = (m: RepOptVGG) => `this RepOpt-VGG (blocks ${m.config.numBlocks.join(',')}, widths ${m.config.widthMultiplier.join(',')})`;

export const repOptVggFamily: ModelFamily = {
  name: 'RepOpt-VGG',
  modes: REPOPT_VGG_MODES,
  targetMode: 'target',
  hsMode: 'hs',
  baselineMode: 'repvgg',
  covers: (spec) => spec.file === undefined && (spec.arch !== undefined ? repOptVggConfig(spec.arch) !== undefined && spec.blocks === undefined && spec.widths === undefined : spec.blocks !== undefined || spec.widths !== undefined),
  label: (spec) => spec.arch ?? `RepOpt-VGG(blocks ${spec.blocks?.join(',')}, widths ${spec.widths?.join(',')})`,
  create(spec, mode) {
    if (!isMode<RepOptVGGMode>(REPOPT_VGG_MODES, mode)) throw new Error(`RepOpt-VGG has no mode '${mode}' (modes: ${REPOPT_VGG_MODES.join(', ')})`);
    let cfg;
    if (spec.arch !== undefined) {
      cfg = repOptVggConfig(spec.arch);
      if (!cfg) throw new Error(`'${spec.arch}' is not a RepOpt-VGG architecture`);
    } else {
      if (!spec.blocks || !spec.widths) throw new Error('a custom RepOpt-VGG needs both blocks and widths (4 values each, stages 1-4)');
      cfg = { numBlocks: spec.blocks, widthMultiplier: spec.widths };
    }
    return new RepOptVGG({ ...cfg, mode, numClasses: spec.numClasses, inChannels: spec.inChannels, strides: spec.strides });
  },
  inspectStateDict(sd): StateDictInfo {
    const ks = new Set(sd.keys());
    let mode: string;
    if (ks.has('stage0.conv_3x3.weight')) mode = 'repvgg';
    else if (ks.has('stage0.rbr_dense.conv.weight')) mode = 'qarepvgg';
    else if (ks.has('stage0.scale_conv.weight')) mode = 'hs';
    else if (ks.has('stage0.conv.weight') && ks.has('stage0.bn.weight')) mode = 'target';
    else if (ks.has('stage0.conv.weight') && ks.has('stage0.conv.bias')) mode = 'deploy';
    else throw new Error('not a RepOpt-VGG state dict (no stage0.conv.weight, stage0.conv_3x3.weight or stage0.scale_conv.weight)');
    const stemKey = mode === 'repvgg' ? 'stage0.conv_3x3.weight' : mode === 'qarepvgg' ? 'stage0.rbr_dense.conv.weight' : 'stage0.conv.weight';
    const stem = shapeOf(sd, stemKey, 'RepOpt-VGG');
    return { mode, inChannels: stem[1], numClasses: shapeOf(sd, 'linear.weight', 'RepOpt-VGG')[0] };
  },
  loadScales(model, file) {
    const vgg = asVgg(model);
    const scheme = layoutScheme(vgg.layout);
    return checkScales(readScaleEntries(file, scheme), vggLabel(vgg), { label: `${file}: scales`, scheme });
  },
  extractScales: (model) => extractVggScales(asVgg(model)),
  saveScales(file, scales, model, label) {
    return saveScaleFile(file, scales, label, { scheme: layoutScheme(asVgg(model).layout) });
  },
  handler: (model, scales, opts = {}) => repOptVggHandler(asVgg(model), scales, opts),
  decays: releaseDecays,
  deploy: (model) => reparameterizeModel(asVgg(model)),
  createDeployed: (spec) => emptyDeployed(repOptVggFamily, spec),
  armNames: { target: 'RepOpt-VGG', plain: 'plain VGG', repvgg: 'RepVGG', qarepvgg: 'QARepVGG', csla: 'RepOpt-VGG (csla twin)' },
  archs: repOptVggArchs(),
  scales: vggScaleScheme,
};

// ------------------------------------------------------------------ RepOpt-GhostNet

function asGhostNet(model: Module): GhostNet {
  if (!(model instanceof GhostNet)) throw new Error(`expected a RepOpt-GhostNet model, got ${model.constructor.name}`);
  return model;
}

function ghostWidth(arch: string | undefined): number | undefined {
  return arch === undefined ? undefined : GHOSTNET_WIDTHS.find((w) => ghostnetArchName(w) === arch);
}

export const repOptGhostNetFamily: ModelFamily = {
  name: 'RepOpt-GhostNet',
  modes: GHOSTNET_MODES,
  targetMode: 'target',
  hsMode: 'hs',
  baselineMode: 'rep',
  covers: (spec) => ghostWidth(spec.arch) !== undefined && spec.file === undefined && spec.blocks === undefined && spec.widths === undefined && spec.strides === undefined,
  label: (spec) => spec.arch ?? 'RepOpt-GhostNet',
  create(spec, mode) {
    if (!isMode<GhostNetMode>(GHOSTNET_MODES, mode)) throw new Error(`RepOpt-GhostNet has no mode '${mode}' (modes: ${GHOSTNET_MODES.join(', ')})`);
    const width = ghostWidth(spec.arch);
    if (width === undefined) throw new Error(`'${spec.arch}' is not a RepOpt-GhostNet architecture (${GHOSTNET_WIDTHS.map(ghostnetArchName).join(', ')})`);
    if (spec.blocks || spec.widths || spec.strides) throw new Error('RepOpt-GhostNet takes no custom blocks, widths or strides');
    return new GhostNet({ width, mode, numClasses: spec.numClasses, inChannels: spec.inChannels });
  },
  inspectStateDict(sd): StateDictInfo {
    const ks = [...sd.keys()];
    const has = (suffix: string) => ks.some((k) => k.endsWith(suffix));
    if (!sd.has('conv_stem.weight')) throw new Error('not a RepOpt-GhostNet state dict (no conv_stem.weight)');
    const mode = sd.has('conv_stem.bias') ? 'deploy' : has('.fusion_bn.weight') ? 'rep' : has('.fusion_scale.weight') ? 'hs' : 'target';
    return { mode, inChannels: shapeOf(sd, 'conv_stem.weight', 'RepOpt-GhostNet')[1], numClasses: shapeOf(sd, 'classifier.weight', 'RepOpt-GhostNet')[0] };
  },
  loadScales: (model, file) => loadGhostnetScales(file, asGhostNet(model)),
  extractScales: (model) => extractGhostnetScales(asGhostNet(model)),
  saveScales: (file, scales, model) => saveScaleFile(file, scales, ghostnetArchName(asGhostNet(model).width), { scheme: ghostnetScaleScheme }),
  handler: (model, scales, opts = {}) => ghostnetHandler(scales, asGhostNet(model), opts),
  decays: releaseDecays,
  deploy: (model) => reparameterizeModel(asGhostNet(model)),
  createDeployed: (spec) => emptyDeployed(repOptGhostNetFamily, spec),
  armNames: { rep: 'RepGhostNet' },
  archs: ghostnetArchs(),
  scales: ghostnetScaleScheme,
};

registerFamily(repOptVggFamily);
registerFamily(repOptGhostNetFamily);

