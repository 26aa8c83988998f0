/**
 * Every model family of the zoo, registered with its architectures and scale scheme (src/models/family.ts),
 * in listing order: RepOpt-VGG and RepOpt-GhostNet (release-families.ts), then RepOpt-MobileOne, which
 * registers itself through the generic CSLA family (one file: mobileone.ts).
 */
export * from './release-families.js';
import './mobileone.js';
