/**
 * RepOpt-GhostNet in the scale-file layer (scales.ts): `loadScaleFile(file, 'RepOpt-GhostNet-0.5x')`,
 * `checkScales`, `saveScaleFile` and the CLI know the family through this scheme (the family's `scales`, families.ts). The maths
 * (sites, Grad Mults, Rule of Initialization) is in ghostnet.ts / the generic RepOptHandler.
 */
import { GHOSTNET_WIDTHS, ghostnetArchName, ghostnetScaleShapes, ghostnetSites, isGhostnetScaleKey } from './ghostnet.js';
import type { ScaleScheme } from './scales.js';

function widthOf(arch: string): number | undefined {
  return GHOSTNET_WIDTHS.find((w) => ghostnetArchName(w) === arch);
}

function need(arch: string): number {
  const w = widthOf(arch);
  if (w === undefined) throw new Error(`'${arch}' is not a RepOpt-GhostNet architecture (known: ${GHOSTNET_WIDTHS.map(ghostnetArchName).join(', ')})`);
  return w;
}

export const ghostnetScaleScheme: ScaleScheme = {
  family: 'RepOpt-GhostNet',
  covers: (arch) => widthOf(arch) !== undefined,
  archs: () => GHOSTNET_WIDTHS.map(ghostnetArchName),
  expected: (arch) => ghostnetScaleShapes(need(arch)),
  isScaleKey: isGhostnetScaleKey,
  sites: (arch, scales, opts = {}) => ghostnetSites(scales, { width: need(arch), identityInit: opts.identityInit }),
};
