/**
 * RepOpt-VGG's deploy form and fusion, where earlier versions kept them: they live with the family
 * (src/models/repoptvgg-deploy.ts) and the shared BN folding in src/repopt/fold.ts.
 */
export * from '../models/repoptvgg-deploy.js';
