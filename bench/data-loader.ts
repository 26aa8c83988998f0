/**
 * Loader throughput on CIFAR-like data (3x32x32 RGB, RandomCrop(32, 4) + flip,
 * batch 128). Usage: [BATCH=128] [STEP_MS=20] node dist/bench/data-loader.js [dataset spec, default synthetic:50000]
 * (the demo's loader: `BATCH=64 node dist/bench/data-loader.js fashion-mnist`, RandomCrop(28, 2) + flip,
 * 1 worker by default in `repopt train`).
 *
 * Two measures per worker count:
 *  - free-running: images/s when the consumer does nothing but take the batches;
 *  - beside a training step: the main thread is kept busy for STEP ms per batch
 *    (like a synchronous libtorch step), and we report how long it then waits
 *    for the next batch (0 = augmentation fully hidden behind the step).
 */
import { openDataset } from '../src/data/dataset.js';
import { DataLoader } from '../src/data/loader.js';
import { defaultTransforms, type TransformSpec } from '../src/data/transforms.js';

const spec = process.argv[2] ?? 'synthetic:50000';
const STEP_MS = Number(process.env.STEP_MS ?? 20);
const BATCH = Number(process.env.BATCH ?? 128);
const ds = openDataset(spec, 'train');
console.log(`dataset ${spec}: ${ds.length} x ${ds.channels}x${ds.height}x${ds.width}, batch ${BATCH}; loadavg ${(await import('node:os')).loadavg().map((x) => x.toFixed(2)).join(' ')}`);

function busy(ms: number): void {
  const end = performance.now() + ms;
  while (performance.now() < end);
}

async function measure(label: string, transforms: TransformSpec, workers: number): Promise<void> {
  const L = new DataLoader(ds, { batchSize: BATCH, seed: 0, workers, transforms });
  // free-running, one full epoch after a short warm-up
  let k = 0;
  for await (const b of L.epoch(0)) {
    b.x.dispose();
    b.y.dispose();
    if (++k === 20) break;
  }
  let t0 = performance.now();
  let n = 0;
  for await (const b of L.epoch(1)) {
    n += b.y.shape[0];
    b.x.dispose();
    b.y.dispose();
  }
  const free = n / ((performance.now() - t0) / 1000);
  // beside a simulated training step: 100 batches
  let waited = 0;
  let batches = 0;
  t0 = performance.now();
  let tWait = performance.now();
  for await (const b of L.epoch(2)) {
    waited += performance.now() - tWait;
    batches++;
    busy(STEP_MS);
    b.x.dispose();
    b.y.dispose();
    if (batches === 100) break;
    tWait = performance.now();
  }
  await L.close();
  console.log(
    `${label.padEnd(44)} workers ${workers}: ${Math.round(free).toString().padStart(6)} images/s free-running; ` +
      `beside a ${STEP_MS} ms step: ${(waited / batches).toFixed(2)} ms wait per batch`,
  );
}

const cropFlip = defaultTransforms(ds, 'train');
const rc = cropFlip.randomCrop;
const name = rc ? `RandomCrop(${rc.size},${rc.padding ?? 0})${cropFlip.flip ? '+flip' : ''}` : 'default';
for (const w of [0, 1, 2]) await measure(name, cropFlip, w);
for (const w of [0, 1]) await measure('+RandAugment(2,9)+cutout(16)', { ...cropFlip, randAugment: { n: 2, m: 9 }, cutout: 16 }, w);
