/**
 * The model zoo: importing this registers every family's architectures and
 * scale schemes (`createModel('RepOpt-VGG-B1', ...)`, `listArchs()`, `loadScaleFile`).
 */
export { createModel, getArch, listArchs, type ArchInfo, type CreateModelOptions } from './registry.js';
export { RepOptVGG, repOptVgg, extractVggScales, REPOPT_VGG_CONFIGS, type RepOptVGGMode, type RepOptVGGConfig } from './repoptvgg.js';
export { repOptVggHandler, repOptVggSites } from './repoptvgg-handler.js';
export * as ghostnet from './ghostnet.js';
export { DeployGhostNet, DeployGhostModule, deployGhostNet, deployGhostModule } from './ghostnet-deploy.js';
export { loadScaleFile, saveScaleFile, checkScales, type ScaleMap } from './scales.js';
export { armName, familyOf, familyOfStateDict, listFamilies, registerFamily, type ModelFamily, type ModelSpec, type StateDictInfo } from './family.js';
export { repOptVggFamily, repOptGhostNetFamily, releaseDecays } from './families.js';
export { cslaFamily, defineModel, loadModelFile, modelFileFamily, blockScaleShapes, blockScaleScheme, type ModelBuilder, type BuildOptions, type CslaFamilyDefinition } from './csla-family.js';
export { MobileOne, MobileOneBlock, MobileOneSE, MobileOneStage, MOBILEONE_CONFIGS, MOBILEONE_MODES, mobileOneLayout, mobileOneSpec, repOptMobileOneFamily, type MobileOneConfig, type MobileOneMode, type MobileOneVariant } from './mobileone.js';
