/**
 * A process group on libtorch's distributed engine (c10d): rendezvous through a
 * TCPStore served by rank 0, collectives through Gloo (CPU) or NCCL (a CUDA build
 * of the addon). Collectives run off the JS thread and return Promises; c10d's
 * errors (a peer that exited, a timeout) reject them as DistributedError.
 *
 *   const pg = await ProcessGroup.init({ rank, worldSize, masterAddr: '127.0.0.1', masterPort: 29500 });
 *   await pg.allreduce(grads, { average: true });
 *   await pg.broadcast(params, 0);
 *   pg.destroy();
 */
import { native, type GroupHandle, type ReduceOpName, type ReducerHandle } from '../torch/native.js';
import { wrapHandle, type Tensor } from '../torch/tensor.js';

/** A collective or the rendezvous failed: another rank exited, the master is unreachable, a timeout. */
export class DistributedError extends Error {
  override name = 'DistributedError';
}

export interface ProcessGroupOptions {
  rank: number;
  worldSize: number;
  masterAddr: string;
  masterPort: number;
  /** Rendezvous and every collective give up after this long (default 300 s). */
  timeoutSec?: number;
  backend?: 'gloo' | 'nccl';
  /** Gloo: the network interface to bind (default: GLOO_SOCKET_IFNAME, as PyTorch). */
  interface?: string;
}

/** DistributedDataParallel's default bucket size (bucket_cap_mb = 25). */
export const DEFAULT_BUCKET_BYTES = 25 * 1024 * 1024;
/** DistributedDataParallel's first bucket when overlapping with backward (1 MiB: communication starts early). */
export const DEFAULT_FIRST_BUCKET_BYTES = 1024 * 1024;

const LOOPBACK = /^(127\.\d+\.\d+\.\d+|localhost|::1)$/;

export class ProcessGroup {
  readonly rank: number;
  readonly worldSize: number;
  readonly backend: 'gloo' | 'nccl';
  #handle: GroupHandle | null;
  #failed: DistributedError | null = null;

  private constructor(handle: GroupHandle, rank: number, worldSize: number, backend: 'gloo' | 'nccl') {
    this.#handle = handle;
    this.rank = rank;
    this.worldSize = worldSize;
    this.backend = backend;
  }

  /** What this build of the addon can create. */
  static backends(): { gloo: boolean; nccl: boolean } {
    return native.distBackends();
  }

  /** Joins the group; resolves once every rank has joined (rank 0 serves the store on masterPort). */
  static async init(o: ProcessGroupOptions): Promise<ProcessGroup> {
    const backend = o.backend ?? 'gloo';
    const timeoutSec = o.timeoutSec ?? 300;
    if (!(timeoutSec > 0)) throw new RangeError(`process group timeout must be positive, got ${timeoutSec}`);
    const iface = o.interface ?? process.env.GLOO_SOCKET_IFNAME;
    // On one machine Gloo binds to the loopback; otherwise to the address this host's name resolves to.
    const hostname = !iface && LOOPBACK.test(o.masterAddr) ? '127.0.0.1' : undefined;
    try {
      const h = await native.distNewGroup({
        masterAddr: o.masterAddr === 'localhost' ? '127.0.0.1' : o.masterAddr,
        masterPort: o.masterPort,
        rank: o.rank,
        worldSize: o.worldSize,
        timeoutMs: Math.round(timeoutSec * 1000),
        backend,
        interface: iface,
        hostname,
      });
      return new ProcessGroup(h, o.rank, o.worldSize, backend);
    } catch (e) {
      throw new DistributedError(rendezvousMessage(e as Error, o, timeoutSec));
    }
  }

  get isMain(): boolean {
    return this.rank === 0;
  }

  #live(): GroupHandle {
    if (this.#failed) throw this.#failed;
    if (!this.#handle) throw new DistributedError('process group used after destroy()');
    return this.#handle;
  }

  #fail(e: unknown): DistributedError {
    this.#failed ??= new DistributedError(
      `rank ${this.rank}: ${(e as Error).message}\n(another rank probably exited or stopped responding; see its output)`,
    );
    return this.#failed;
  }

  async #run(p: () => Promise<void>): Promise<void> {
    try {
      await p();
    } catch (e) {
      throw this.#fail(e);
    }
  }

  /**
   * Reduces tensors over the ranks in place, in flat buckets of `bucketBytes`.
   * `average`: divide by the world size first, as DDP's reducer does.
   */
  allreduce(tensors: readonly Tensor[], o: { op?: ReduceOpName; average?: boolean; bucketBytes?: number } = {}): Promise<void> {
    const h = this.#live();
    if (tensors.length === 0) return Promise.resolve();
    const divisor = o.average ? this.worldSize : 1;
    return this.#run(() => native.distAllreduce(h, tensors.map((t) => t.handle), o.op ?? 'sum', divisor, o.bucketBytes ?? DEFAULT_BUCKET_BYTES));
  }

  /** Every rank ends with root's values. */
  broadcast(tensors: readonly Tensor[], root = 0, bucketBytes = DEFAULT_BUCKET_BYTES): Promise<void> {
    const h = this.#live();
    if (tensors.length === 0) return Promise.resolve();
    return this.#run(() => native.distBroadcast(h, tensors.map((t) => t.handle), root, bucketBytes));
  }

  /**
   * The sum over the ranks of a small floating-point tensor, as a new tensor, computed now on
   * this thread (blocking it for at most the group's timeout) and differentiable: backward
   * sums the incoming gradient over the ranks (the adjoint of a sum over ranks), inside
   * autograd's backward. Every rank must call it in the same order with the same shape
   * (SyncBatchNorm's statistics). A failure in backward surfaces from `backward()`:
   * pass that error through `explain`.
   */
  allreduceSumGrad(t: Tensor): Tensor {
    const h = this.#live();
    try {
      return wrapHandle(native.distAllreduceSumGrad(h, t.handle));
    } catch (e) {
      throw native.distFailed(h) ? this.#fail(e) : e;
    }
  }

  /** An error thrown where this group's collectives run synchronously (autograd's backward): a DistributedError when one of them failed, else the error itself. */
  explain(e: unknown): unknown {
    if (this.#failed) return this.#failed;
    return this.#handle && native.distFailed(this.#handle) ? this.#fail(e) : e;
  }

  /**
   * Gradient averaging overlapped with backward, as DistributedDataParallel's reducer: hooks on the
   * parameters' gradient accumulators launch each bucket's allreduce (asynchronously) as soon as its
   * gradients are final during backward; `finishReducer` waits for them after backward. Parameters are
   * bucketed in reverse order (the first bucket `firstBucketBytes`), launched in bucket order on every rank.
   */
  attachReducer(params: readonly Tensor[], o: { bucketBytes?: number; firstBucketBytes?: number; average?: boolean } = {}): ReducerHandle {
    const h = this.#live();
    return native.distReducerNew(h, params.map((p) => p.handle), o.bucketBytes ?? DEFAULT_BUCKET_BYTES, o.firstBucketBytes ?? DEFAULT_FIRST_BUCKET_BYTES, o.average === false ? 1 : this.worldSize);
  }

  /** After backward: the gradients become the averages (every bucket was launched during backward). */
  finishReducer(r: ReducerHandle): Promise<void> {
    this.#live();
    return this.#run(() => native.distReducerFinish(r));
  }

  barrier(): Promise<void> {
    const h = this.#live();
    return this.#run(() => native.distBarrier(h));
  }

  /** Releases the group and its store (call after the last collective on every rank). */
  destroy(): void {
    if (this.#handle) native.distDestroy(this.#handle);
    this.#handle = null;
  }
}

function rendezvousMessage(e: Error, o: ProcessGroupOptions, timeoutSec: number): string {
  const where = `${o.masterAddr}:${o.masterPort}`;
  const m = e.message;
  if (o.rank === 0 && /address already in use|EADDRINUSE|errno: 98/i.test(m)) {
    return `rank 0 cannot serve the rendezvous on port ${o.masterPort}: the port is in use (choose another --master-port / MASTER_PORT)\n(${m})`;
  }
  if (/timed? ?out|timeout/i.test(m)) {
    return o.rank === 0
      ? `rank 0: not every rank joined the rendezvous at ${where} within ${timeoutSec} s (${o.worldSize} expected)\n(${m})`
      : `rank ${o.rank}: could not join the rendezvous at ${where} within ${timeoutSec} s: is the master (rank 0) running and reachable?\n(${m})`;
  }
  return `rank ${o.rank}: rendezvous at ${where} failed: ${m}`;
}
