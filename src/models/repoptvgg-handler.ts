/**
 * RepOptimizer for RepOpt-VGG: the searched scales of an `hs` model become one
 * CSLA block per target kernel (Ding et al., ICLR 2023, arXiv 2205.15242, sec. 3). Each block
 * `stageX.Y` of the target model stands for
 *   s (.) conv3x3(x) + t (.) conv1x1(x) [+ v (.) x]
 * with s = `stageX.Y.scale_conv.weight`, t = `stageX.Y.scale_1x1.weight` (constants)
 * and, where in == out and stride 1, a trainable identity v (constant scale 1)
 * initialised at the searched `scale_identity` (the release) or 1 (the paper).
 *
 * Nothing here is VGG-specific beyond the layout: every block is the generic CslaBlock of `vggSpec` with
 * the release's names (`vggNames`), so the scale keys and shapes, the sites (Grad Mults, Rule of
 * Initialization) come from the generic engine (src/repopt/block.ts: `blockKeys`, `blockSites`,
 * `blockScaleShapesOf`), for a built model or for a layout alone (the `repopt scales` CLI, named archs).
 *
 *   const scales = loadScaleFile('RepOpt-VGG-B1-scales.pth', 'RepOpt-VGG-B1');
 *   const model = createModel('RepOpt-VGG-B1');                     // target mode
 *   const handler = repOptVggHandler(model, scales);
 *   handler.reinitialize(model);
 *   opt.setGradMults(handler.gradMults('sgd'));
 */
import { RepOptHandler, type ReparamSite } from '../repopt/handler.js';
import { blockKeys, blockScaleShapesOf, blockSites, type BlockKeys } from '../repopt/block.js';
import type { CreateModelOptions } from './registry.js';
import {
  REPOPT_VGG_CONFIGS,
  REPOPT_VGG_PREFIX,
  RepOptVGG,
  repOptVggConfig,
  vggBlockLayout,
  vggNames,
  vggSpec,
  type VGGBlockInfo,
} from './repoptvgg.js';
import { ownScaleKeyTest } from './csla-family.js';
import { checkScales, type ScaleMap, type ScaleScheme, type SiteOptions } from './scales.js';

/** The generic block descriptions (spec, scale keys, kernel key) of a layout, by block name, in model order. */
export function vggBlockKeys(layout: VGGBlockInfo[]): [string, BlockKeys][] {
  return layout.map((b) => [b.name, blockKeys(vggSpec(b), vggNames(b))]);
}

/** Scale keys and shapes of a block layout, in model order. */
export function vggScaleShapes(layout: VGGBlockInfo[]): Map<string, number[]> {
  return blockScaleShapesOf(vggBlockKeys(layout));
}

const isVggScaleKey = ownScaleKeyTest(['scale_conv.weight', 'scale_1x1.weight', 'scale_identity.weight']);

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
  const sites = blockSites(vggBlockKeys(layout), scales, opts);
  // The identity's initial weight 1 (the paper) as one number, as the site format allows.
  if (opts.identityInit === 'one') for (const s of sites) if (s.identityInit?.length) s.identityInit = s.identityInit.map(() => 1);
  for (const s of sites) if (!s.identityInit?.length) delete s.identityInit;
  return sites;
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
  isScaleKey: isVggScaleKey,
  sites: (arch, scales, opts = {}) => repOptVggSites(layoutOf(arch, opts), scales, opts),
};
