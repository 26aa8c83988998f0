/**
 * RepOptimizer for RepOpt-VGG: the searched scales of an `hs` model become one
 * CSLA block per target kernel (Ding et al., ICLR 2023, arXiv 2205.15242, sec. 3). Each block
 * `stageX.Y` of the target model stands for
 *   s (.) conv3x3(x) + t (.) conv1x1(x) [+ v (.) x]
 * with s = `stageX.Y.scale_conv.weight`, t = `stageX.Y.scale_1x1.weight` (constants)
 * and, where in == out and stride 1, a trainable identity v (constant scale 1)
 * initialised at the searched `scale_identity` (the release) or 1 (the paper).
 * The Grad Mults and the Rule of Initialization come from the generic
 * RepOptHandler over these sites; no maths is repeated here.
 *
 *   const scales = loadScaleFile('RepOpt-VGG-B1-scales.pth', 'RepOpt-VGG-B1');
 *   const model = createModel('RepOpt-VGG-B1');                     // target mode
 *   const handler = repOptVggHandler(model, scales);
 *   handler.reinitialize(model);
 *   opt.setGradMults(handler.gradMults('sgd'));
 */
import type { Tensor } from '../torch/index.js';
import { RepOptHandler, type ReparamSite } from '../repopt/handler.js';
import type { CslaSpec } from '../repopt/csla.js';
import type { CreateModelOptions } from './registry.js';
import {
  REPOPT_VGG_CONFIGS,
  REPOPT_VGG_PREFIX,
  RepOptVGG,
  repOptVggConfig,
  vggBlockLayout,
  type VGGBlockInfo,
} from './repoptvgg.js';
import { checkScales, registerScaleScheme, type ScaleMap, type ScaleScheme, type SiteOptions } from './scales.js';

const SCALE_KEY = /(^|\.)scale_(conv|1x1|identity)\.weight$/;

/** Scale keys and shapes of a block layout, in model order. */
export function vggScaleShapes(layout: VGGBlockInfo[]): Map<string, number[]> {
  const out = new Map<string, number[]>();
  for (const b of layout) {
    out.set(`${b.name}.scale_conv.weight`, [b.outChannels]);
    out.set(`${b.name}.scale_1x1.weight`, [b.outChannels]);
    if (b.identity) out.set(`${b.name}.scale_identity.weight`, [b.outChannels]);
  }
  return out;
}

function layoutOf(arch: string, opts: CreateModelOptions = {}): VGGBlockInfo[] {
  const cfg = repOptVggConfig(arch);
  if (!cfg) throw new Error(`'${arch}' is not a RepOpt-VGG architecture`);
  return vggBlockLayout(cfg, opts);
}

/**
 * The CSLA sites of a RepOpt-VGG target model (or block layout) from scales keyed as in the scale
 * files; the scales are checked against the layout first (`checkScales`: keys, shapes, finite values).
 */
export function repOptVggSites(model: RepOptVGG | VGGBlockInfo[], scales: ScaleMap, opts: SiteOptions = {}): ReparamSite[] {
  const layout = model instanceof RepOptVGG ? model.layout : model;
  checkScales(scales, 'RepOpt-VGG', { label: 'RepOpt-VGG scales', scheme: layoutScheme(layout) });
  const scale = (b: VGGBlockInfo, kind: string): Tensor => scales.get(`${b.name}.scale_${kind}.weight`)!;
  const useSearched = (opts.identityInit ?? 'searched') === 'searched';
  return layout.map((b): ReparamSite => {
    const c = b.outChannels;
    const spec: CslaSpec = {
      inChannels: b.inChannels,
      outChannels: c,
      kernel: 3,
      stride: b.stride,
      branches: [
        { kind: 'conv', kernel: 3, scale: scale(b, 'conv') },
        { kind: 'conv', kernel: 1, scale: scale(b, '1x1') },
        ...(b.identity ? [{ kind: 'identity' as const, scale: 1, trainable: true }] : []),
      ],
    };
    const site: ReparamSite = { param: `${b.name}.conv.weight`, spec };
    if (b.identity) site.identityInit = [useSearched ? scale(b, 'identity').toArray() : 1];
    return site;
  });
}

/** A RepOptHandler (Grad Mults, Rule of Initialization) for a RepOpt-VGG target model. */
export function repOptVggHandler(model: RepOptVGG | VGGBlockInfo[], scales: ScaleMap, opts: SiteOptions = {}): RepOptHandler {
  if (model instanceof RepOptVGG && model.mode !== 'target') {
    throw new Error(`RepOpt-VGG handler: the model is in '${model.mode}' mode; the optimizer re-parameterises 'target' models`);
  }
  return new RepOptHandler(repOptVggSites(model, scales, opts));
}

/** A one-architecture scheme over a given layout (custom configs, other strides). */
export function layoutScheme(layout: VGGBlockInfo[]): ScaleScheme {
  return { ...vggScaleScheme, covers: () => true, archs: () => [], expected: () => vggScaleShapes(layout) };
}

export const vggScaleScheme: ScaleScheme = {
  family: 'RepOpt-VGG',
  covers: (arch) => repOptVggConfig(arch) !== undefined,
  archs: () => Object.keys(REPOPT_VGG_CONFIGS).map((n) => REPOPT_VGG_PREFIX + n),
  expected: (arch, opts) => vggScaleShapes(layoutOf(arch, opts)),
  isScaleKey: (key) => SCALE_KEY.test(key),
  sites: (arch, scales, opts = {}) => repOptVggSites(layoutOf(arch, opts), scales, opts),
};
registerScaleScheme(vggScaleScheme);
