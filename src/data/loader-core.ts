/**
 * The batch assembly shared by the loader's main thread (workers: 0) and its
 * worker threads: indices in, normalised float32 pixels and int64 labels out.
 * Randomness of the sample at position p of epoch e: Rng([seed, augment stream, e, p]).
 */
import { Rng, STREAM } from './rng.js';
import { Transformer, type TransformSpec } from './transforms.js';

export interface CoreInit {
  channels: number;
  height: number;
  width: number;
  spec: TransformSpec;
  augment: boolean;
  seed: number;
  /** All samples [N, C, H, W] (shared); when absent, jobs carry their pixels. */
  pixels?: Uint8Array;
  labels?: Int32Array;
}

export interface BatchJob {
  epoch: number;
  /** Position in the epoch of the first sample. */
  pos0: number;
  /** Positions of consecutive samples differ by this (a rank's shard of W ranks: W); default 1. */
  posStride?: number;
  /** Dataset indices of the samples. */
  indices: Int32Array;
  /** Gathered pixels [n, C, H, W] and labels, for datasets without shared storage. */
  pixels?: Uint8Array;
  labels?: Int32Array;
}

export interface BatchData {
  x: Float32Array;
  y: BigInt64Array;
}

export class BatchMaker {
  readonly init: CoreInit;
  readonly transformer: Transformer;
  readonly sampleSize: number;

  constructor(init: CoreInit) {
    this.init = init;
    this.transformer = new Transformer(init.spec, init.channels, init.height, init.width, init.augment);
    this.sampleSize = init.channels * init.height * init.width;
  }

  make(job: BatchJob): BatchData {
    const n = job.indices.length;
    const t = this.transformer;
    const outSize = t.outSize;
    const x = new Float32Array(n * outSize);
    const y = new BigInt64Array(n);
    const gathered = job.pixels !== undefined;
    const src = gathered ? job.pixels! : this.init.pixels;
    const labels = gathered ? job.labels : this.init.labels;
    if (!src || !labels) throw new Error('BatchMaker: no pixels for the job');
    const { seed, augment } = this.init;
    const sz = this.sampleSize;
    const noRng = NO_RNG;
    const stride = job.posStride ?? 1;
    for (let k = 0; k < n; k++) {
      const idx = job.indices[k];
      const at = gathered ? k : idx;
      const rng = augment ? new Rng([seed, STREAM.augment, job.epoch, job.pos0 + k * stride]) : noRng;
      t.apply(src, at * sz, rng, x, k * outSize);
      y[k] = BigInt(labels[at]);
    }
    return { x, y };
  }
}

const NO_RNG = new Rng(0);
