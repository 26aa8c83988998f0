/** RepOpt-GhostNet through the scale-file layer (scales.ts): load by architecture name, errors with hints. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as torch from '../src/torch/index.js';
import '../src/models/families.js'; // registers the families with their architectures and scale schemes
import { loadScaleFile, scaleScheme } from '../src/models/scales.js';
import '../src/models/ghostnet-handler.js';
import { GhostNet, ghostnetSites } from '../src/models/ghostnet.js';
import { scaleFile } from './helpers/paths.js';

torch.setNumThreads(1);
const FILE = scaleFile('RepOptGhostNet_0_5x_scales.pth');

test('the release 0.5x file loads by architecture name; sites match the target model', () => {
  const scales = loadScaleFile(FILE, 'RepOpt-GhostNet-0.5x');
  assert.equal(scales.size, 64);
  assert.equal([...scales.keys()][0], 'blocks.0.0.ghost1.fusion_scale.weight');
  const sites = scaleScheme('RepOpt-GhostNet-0.5x').sites('RepOpt-GhostNet-0.5x', scales);
  const model = new GhostNet({ width: 0.5, numClasses: 10 });
  assert.deepEqual(sites.map((s) => s.param), ghostnetSites(scales, { model }).map((s) => s.param));
  const one = scaleScheme('RepOpt-GhostNet-0.5x').sites('RepOpt-GhostNet-0.5x', scales, { identityInit: 'one' });
  assert.deepEqual(one[0].identityInit, [1]);
  for (const t of scales.values()) t.dispose();
  model.dispose();
});

test('the 0.5x file against 1.0x: error names the key, the shapes and the architecture it fits', () => {
  assert.throws(
    () => loadScaleFile(FILE, 'RepOpt-GhostNet-1.0x'),
    (e: Error) => /blocks\.0\.0\.ghost1\.fusion_scale\.weight/.test(e.message) && /expected \[8\]/.test(e.message) && /fit RepOpt-GhostNet-0\.5x/.test(e.message),
  );
});
