/** A split held in memory as batches (calibration sets, test sets of quantization studies). */
import * as torch from '../torch/index.js';
import type { Tensor } from '../torch/index.js';
import type { Dataset } from './dataset.js';
import { DataLoader } from './loader.js';
import { defaultTransforms } from './transforms.js';

export interface Batch {
  x: Tensor;
  y: Tensor;
}

/** Up to `limit` images of a split as batches in memory (no augmentation; shuffled with `seed` if asked). */
export async function collectBatches(ds: Dataset, limit: number, batchSize: number, shuffle: boolean, seed: number): Promise<Batch[]> {
  const loader = new DataLoader(ds, { batchSize, shuffle, seed, augment: false, transforms: defaultTransforms(ds, 'test', false), workers: 0 });
  const out: Batch[] = [];
  let n = 0;
  try {
    // Stop once `limit` images are in: the rest of the epoch would only be decoded to be thrown away.
    if (limit > 0) {
      for await (const { x, y } of loader.epoch(0)) {
        const take = Math.min(x.shape[0], limit - n);
        if (take < x.shape[0]) {
          out.push({ x: torch.keep(x.narrow(0, 0, take).contiguous()), y: torch.keep(y.narrow(0, 0, take).contiguous()) });
          x.dispose();
          y.dispose();
        } else out.push({ x, y });
        n += take;
        if (n >= limit) break;
      }
    }
  } finally {
    await loader.close();
  }
  return out;
}

export function disposeBatches(bs: Batch[]): void {
  for (const b of bs) {
    b.x.dispose();
    b.y.dispose();
  }
}

