/// <reference lib="esnext.disposable" preserve="true" />
/**
 * DataLoader: shuffled, augmented, normalised batches as tensors, prepared by
 * worker threads ahead of the training step.
 *
 *   const loader = new DataLoader(ds, { batchSize: 128, seed: 1, transforms: defaultTransforms(ds, 'train') });
 *   for await (const { x, y, index } of loader.epoch(e)) { ...; x.dispose(); y.dispose(); }
 *   await loader.close();
 *
 * Reproducibility: the order of epoch e is a function of (seed, e) only, and the
 * augmentation of the sample at position p of epoch e a function of (seed, e, p)
 * only, so batches do not depend on timing, `workers` or `prefetch`, and
 * `epoch(e, start)` yields exactly batches start.. of an uninterrupted epoch e.
 *
 * Threads: the training step blocks the main thread (synchronous libtorch calls),
 * so samples are transformed in `workers` worker threads (default 1; 0 = inline on
 * the main thread), which keep up to `prefetch` batches in flight and transfer the
 * finished Float32Array / BigInt64Array buffers. The main thread only wraps them
 * with fromTypedArray. Workers hold no event-loop reference while idle, so a
 * forgotten close() does not keep the process alive; close() terminates them.
 *
 * The tensors yielded belong to the caller (dispose them, or let the GC do it).
 */
import { Worker } from 'node:worker_threads';
import * as torch from '../torch/index.js';
import type { Tensor } from '../torch/index.js';
import type { Dataset } from './dataset.js';
import { sharedBytes, sharedInt32 } from './memory.js';
import { BatchMaker, type BatchData, type BatchJob, type CoreInit } from './loader-core.js';
import { permutation, STREAM } from './rng.js';
import { outputShape, validateSpec, type TransformSpec } from './transforms.js';

export interface LoaderOptions {
  batchSize: number;
  /** Shuffle every epoch (default true); false = natural order. */
  shuffle?: boolean;
  /** Seed of shuffling and augmentation (default 0). */
  seed?: number;
  /** Random transforms on (default: true unless the dataset's split is 'test'); false = normalisation only. */
  augment?: boolean;
  /** Drop the last incomplete batch (default false). */
  dropLast?: boolean;
  transforms: TransformSpec;
  /** Worker threads (default 1); 0 = build batches inline on the main thread. */
  workers?: number;
  /** Batches in flight ahead of the consumer (default max(2, 2 * workers)). */
  prefetch?: number;
  /** Data-parallel: this loader reads rank's part of the epoch (see shardIndices). */
  shard?: Shard;
}

/**
 * One rank's part of every epoch, as PyTorch's DistributedSampler: the epoch's order
 * (seeded shuffle or natural), padded by wrap-around to a multiple of worldSize
 * (`pad`, for training: every rank gets the same number of samples), then samples
 * rank, rank + W, rank + 2W, ... Without `pad` (evaluation, as the release's
 * validation sampler) the ranks' parts cover the data exactly once.
 */
export interface Shard {
  rank: number;
  worldSize: number;
  pad: boolean;
}

export function shardIndices(order: Int32Array, s: Shard): Int32Array {
  const W = s.worldSize;
  if (!Number.isInteger(W) || W < 1 || !Number.isInteger(s.rank) || s.rank < 0 || s.rank >= W) {
    throw new Error(`shard: need 0 <= rank < worldSize, got rank ${s.rank} of ${W}`);
  }
  const n = order.length;
  const total = s.pad ? Math.ceil(n / W) * W : n;
  const out: number[] = [];
  for (let i = s.rank; i < total; i += W) out.push(order[i % n]);
  return Int32Array.from(out);
}

export interface Batch {
  x: Tensor; // float32 [N, C, H, W], normalised
  y: Tensor; // int64 [N]
  index: number; // batch index within the epoch
}

interface Slot {
  worker: Worker;
  pending: Map<number, { resolve: (d: BatchData) => void; reject: (e: Error) => void }>;
  dead: boolean;
}

export class DataLoader {
  readonly dataset: Dataset;
  readonly batchSize: number;
  readonly shuffle: boolean;
  readonly seed: number;
  readonly augment: boolean;
  readonly dropLast: boolean;
  readonly workers: number;
  readonly prefetch: number;
  readonly transforms: TransformSpec;
  readonly batchesPerEpoch: number;
  readonly shard: Shard | null;
  /** Samples per epoch this loader reads (its shard's size when sharded). */
  readonly samplesPerEpoch: number;
  /** Shape of one transformed sample [C, H, W]. */
  readonly sampleShape: [number, number, number];

  #inline: BatchMaker | null = null;
  #slots: Slot[] | null = null;
  #shared: { pixels: Uint8Array; labels: Int32Array } | null = null;
  #nextId = 0;
  #closed = false;
  #failure: Error | null = null;

  constructor(ds: Dataset, opts: LoaderOptions) {
    const { batchSize } = opts;
    if (!Number.isInteger(batchSize) || batchSize <= 0) throw new Error(`DataLoader: batchSize must be a positive integer, got ${batchSize}`);
    const workers = opts.workers ?? 1;
    if (!Number.isInteger(workers) || workers < 0) throw new Error(`DataLoader: workers must be a non-negative integer, got ${workers}`);
    const prefetch = opts.prefetch ?? Math.max(2, 2 * workers);
    if (!Number.isInteger(prefetch) || prefetch < 1) throw new Error(`DataLoader: prefetch must be a positive integer, got ${prefetch}`);
    const seed = opts.seed ?? 0;
    if (!Number.isSafeInteger(seed)) throw new Error(`DataLoader: seed must be a safe integer, got ${seed}`);
    validateSpec(opts.transforms, ds.channels, ds.height, ds.width);
    this.dataset = ds;
    this.batchSize = batchSize;
    this.shuffle = opts.shuffle ?? true;
    this.seed = seed;
    this.augment = opts.augment ?? ds.split !== 'test';
    this.dropLast = opts.dropLast ?? false;
    this.workers = workers;
    this.prefetch = prefetch;
    this.transforms = opts.transforms;
    this.shard = opts.shard ?? null;
    const n = ds.length;
    const W = this.shard?.worldSize ?? 1;
    this.samplesPerEpoch = !this.shard ? n : this.shard.pad ? Math.ceil(n / W) : Math.max(0, Math.ceil((n - this.shard.rank) / W));
    if (this.shard) shardIndices(new Int32Array(0), this.shard); // validates it
    this.batchesPerEpoch = this.dropLast ? Math.floor(this.samplesPerEpoch / batchSize) : Math.ceil(this.samplesPerEpoch / batchSize);
    this.sampleShape = outputShape(opts.transforms, ds.channels, ds.height, ds.width);
  }

  /** The dataset indices this loader reads in epoch e (its shard's, when sharded). */
  order(e: number): Int32Array {
    checkEpoch(e);
    const n = this.dataset.length;
    const all = this.shuffle ? permutation(n, [this.seed, STREAM.permutation, e]) : Int32Array.from({ length: n }, (_, i) => i);
    return this.shard ? shardIndices(all, this.shard) : all;
  }

  /** Number of samples in batch b. */
  batchLength(b: number): number {
    return Math.min(this.batchSize, this.samplesPerEpoch - b * this.batchSize);
  }

  /**
   * Batches of epoch e, starting at batch `start` (for exact resume):
   * x float32 [N, C, H, W] normalised, y int64 [N].
   */
  epoch(e: number, start = 0): AsyncIterableIterator<Batch> {
    checkEpoch(e);
    if (!Number.isInteger(start) || start < 0) throw new Error(`DataLoader.epoch: start must be a non-negative integer, got ${start}`);
    if (this.#closed) throw new Error('DataLoader.epoch: the loader is closed');
    return this.#run(e, start);
  }

  async *#run(e: number, start: number): AsyncGenerator<Batch, void, undefined> {
    const end = this.batchesPerEpoch;
    if (start >= end) return;
    const order = this.order(e);
    const B = this.batchSize;
    // Augmentation follows the sample's position in the whole (padded) epoch, so ranks draw
    // different random transforms.
    const W = this.shard?.worldSize ?? 1;
    const r = this.shard?.rank ?? 0;
    const job = (b: number): BatchJob => ({ epoch: e, pos0: b * B * W + r, posStride: W, indices: order.slice(b * B, b * B + this.batchLength(b)) });

    if (this.workers === 0) {
      for (let b = start; b < end; b++) {
        if (this.#closed) throw new Error('DataLoader: closed during an epoch');
        await torch.turnEventLoop(); // see below
        yield this.#wrap(this.#makeInline(job(b)), b);
      }
      return;
    }

    const pending = new Map<number, Promise<BatchData>>();
    let next = start;
    const fill = () => {
      while (next < end && pending.size < this.prefetch) {
        const p = this.#submit(job(next));
        p.catch(() => {}); // awaited below; never an unhandled rejection if abandoned
        pending.set(next, p);
        next++;
      }
    };
    for (let b = start; b < end; b++) {
      fill();
      const data = await pending.get(b)!;
      pending.delete(b);
      // One turn of the event loop per batch, as the trainer takes: a consumer's \`for await\` over
      // batches that are already made never lets it turn otherwise, so signal handlers, timers and
      // whatever Node defers to the loop (deferred finalizers) would wait for the whole epoch.
      await torch.turnEventLoop();
      fill(); // keep the workers busy while the consumer trains on this batch
      if (this.#closed) throw new Error('DataLoader: closed during an epoch');
      yield this.#wrap(data, b);
    }
  }

  #wrap(d: BatchData, index: number): Batch {
    const n = d.y.length;
    const [c, h, w] = this.sampleShape;
    const x = torch.fromTypedArray(d.x, [n, c, h, w], 'float32');
    const y = torch.fromTypedArray(d.y, [n], 'int64');
    return { x, y, index };
  }

  #coreInit(withData: boolean): CoreInit {
    const ds = this.dataset;
    const init: CoreInit = { channels: ds.channels, height: ds.height, width: ds.width, spec: this.transforms, augment: this.augment, seed: this.seed };
    if (withData && ds.storage) {
      init.pixels = ds.storage.pixels;
      init.labels = ds.storage.labels;
    }
    return init;
  }

  #makeInline(j: BatchJob): BatchData {
    if (!this.#inline) this.#inline = new BatchMaker(this.#coreInit(true));
    if (!this.dataset.storage) this.#gather(j);
    return this.#inline.make(j);
  }

  /** Copies the job's samples out of a dataset without storage. */
  #gather(j: BatchJob): void {
    const ds = this.dataset;
    const sz = ds.channels * ds.height * ds.width;
    const pixels = new Uint8Array(j.indices.length * sz);
    const labels = new Int32Array(j.indices.length);
    for (let k = 0; k < j.indices.length; k++) {
      const s = ds.get(j.indices[k]);
      if (s.pixels.length !== sz) throw new Error(`DataLoader: ${ds.name} sample ${j.indices[k]} has ${s.pixels.length} bytes, expected ${sz}`);
      pixels.set(s.pixels, k * sz);
      labels[k] = s.label;
    }
    j.pixels = pixels;
    j.labels = labels;
  }

  /** Dataset storage on SharedArrayBuffers (copied there once if it is not). */
  #sharedStorage(): { pixels: Uint8Array; labels: Int32Array } | null {
    const st = this.dataset.storage;
    if (!st) return null;
    if (this.#shared) return this.#shared;
    const isShared = (a: ArrayBufferView) => a.buffer instanceof SharedArrayBuffer;
    let { pixels, labels } = st;
    if (!isShared(pixels)) {
      const p = sharedBytes(st.pixels.length);
      p.set(st.pixels);
      pixels = p;
    }
    if (!isShared(labels)) {
      const l = sharedInt32(st.labels.length);
      l.set(st.labels);
      labels = l;
    }
    this.#shared = { pixels, labels };
    return this.#shared;
  }

  #startWorkers(): Slot[] {
    if (this.#slots) return this.#slots;
    const init = this.#coreInit(false);
    const shared = this.#sharedStorage();
    if (shared) {
      init.pixels = shared.pixels;
      init.labels = shared.labels;
    }
    const url = new URL('./loader-worker.js', import.meta.url);
    this.#slots = Array.from({ length: this.workers }, (_, i) => {
      const worker = startWorker(url, { workerData: init, name: `repopt-loader-${i}` });
      const slot: Slot = { worker, pending: new Map(), dead: false };
      worker.unref();
      worker.on('message', (m: { id: number; x?: Float32Array; y?: BigInt64Array; error?: string }) => {
        const p = slot.pending.get(m.id);
        if (!p) return;
        slot.pending.delete(m.id);
        if (slot.pending.size === 0) worker.unref();
        if (m.error !== undefined) p.reject(new Error(`DataLoader worker: ${m.error}`));
        else p.resolve({ x: m.x!, y: m.y! });
      });
      const fail = (err: Error) => {
        slot.dead = true;
        if (!this.#closed && !this.#failure) this.#failure = err;
        for (const p of slot.pending.values()) p.reject(err);
        slot.pending.clear();
      };
      worker.on('error', (err) => fail(new Error(`DataLoader worker ${i} failed: ${err.stack ?? err.message}`)));
      worker.on('exit', (code) => fail(new Error(this.#closed ? 'DataLoader: closed' : `DataLoader worker ${i} exited unexpectedly (code ${code})`)));
      return slot;
    });
    return this.#slots;
  }

  #submit(j: BatchJob): Promise<BatchData> {
    if (this.#closed) return Promise.reject(new Error('DataLoader: closed'));
    if (this.#failure) return Promise.reject(this.#failure);
    let slots: Slot[];
    try {
      slots = this.#startWorkers();
      if (!this.dataset.storage) this.#gather(j);
    } catch (e) {
      return Promise.reject(e as Error);
    }
    let best: Slot | null = null;
    for (const s of slots) if (!s.dead && (!best || s.pending.size < best.pending.size)) best = s;
    if (!best) return Promise.reject(this.#failure ?? new Error('DataLoader: no live worker'));
    const slot = best;
    const id = ++this.#nextId;
    return new Promise<BatchData>((resolve, reject) => {
      if (slot.pending.size === 0) slot.worker.ref();
      slot.pending.set(id, { resolve, reject });
      const transfer: ArrayBuffer[] = [j.indices.buffer as ArrayBuffer];
      if (j.pixels) transfer.push(j.pixels.buffer as ArrayBuffer);
      if (j.labels) transfer.push(j.labels.buffer as ArrayBuffer);
      slot.worker.postMessage({ id, ...j }, transfer);
    });
  }

  /** Terminates the workers; pending batches reject. Safe to call twice. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    const slots = this.#slots ?? [];
    this.#slots = null;
    this.#inline = null;
    await Promise.all(
      slots.map(async (s) => {
        for (const p of s.pending.values()) p.reject(new Error('DataLoader: closed'));
        s.pending.clear();
        await s.worker.terminate();
      }),
    );
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}

/**
 * A worker under the parent's Node flags (loaders, conditions, source maps), less those only for the
 * main script (-e, --input-type, ...) and those Node refuses in a worker: the per-process V8 flags
 * such as --expose-gc or --max-old-space-size (ERR_WORKER_INVALID_EXEC_ARGV), which already apply
 * to the whole process.
 */
function startWorker(url: URL, options: { workerData: CoreInit; name: string }): Worker {
  let execArgv = mainScriptFlagsRemoved(process.execArgv);
  for (;;) {
    try {
      return new Worker(url, { ...options, execArgv });
    } catch (e) {
      const refused = (e as { code?: string }).code === 'ERR_WORKER_INVALID_EXEC_ARGV' ? refusedFlags(String((e as Error).message), execArgv) : [];
      if (refused.length === 0) throw e;
      execArgv = execArgv.filter((f) => !refused.includes(f));
    }
  }
}

/** The flags of `execArgv` that Node's "invalid execArgv flags: A, B" message names. */
function refusedFlags(message: string, execArgv: string[]): string[] {
  const listed = message.slice(message.lastIndexOf(':') + 1).split(',').map((f) => f.trim());
  return execArgv.filter((f) => listed.some((l) => l !== '' && (f === l || f.startsWith(`${l}=`))));
}

function mainScriptFlagsRemoved(a: readonly string[]): string[] {
  const out: string[] = [];
  for (let i = 0; i < a.length; i++) {
    const f = a[i];
    if (f === '-e' || f === '--eval' || f === '-p' || f === '--print' || f === '--input-type') {
      i++; // and its value
      continue;
    }
    if (f.startsWith('--input-type=') || f.startsWith('--eval=') || f.startsWith('--print=')) continue;
    out.push(f);
  }
  return out;
}

function checkEpoch(e: number): void {
  if (!Number.isSafeInteger(e) || e < 0) throw new Error(`DataLoader: epoch must be a non-negative integer, got ${e}`);
}
