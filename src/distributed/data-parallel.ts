/**
 * What the trainer needs from a process group to train as PyTorch's
 * DistributedDataParallel (with the release's broadcast_buffers=False):
 * rank 0's parameters and buffers broadcast once at the start, gradients
 * averaged over the ranks after backward (divided by the world size, then
 * summed, as DDP's reducer does) and before the optimizer (so Grad Mults,
 * clipping and weight decay see the average), BatchNorm statistics left per
 * process, and sums of numbers (metrics, stop flags) reduced over ranks.
 */
import * as torch from '../torch/index.js';
import type { Tensor } from '../torch/index.js';
import type { Module, StateDict } from '../nn/index.js';
import { native, type ReducerHandle } from '../torch/native.js';
import { DEFAULT_BUCKET_BYTES, DEFAULT_FIRST_BUCKET_BYTES, type ProcessGroup } from './process-group.js';

export class DataParallel {
  /** Seconds spent in gradient averaging and reductions (waiting for the slowest rank included). */
  commSeconds = 0;
  #reducer: { handle: ReducerHandle; names: string[]; launchSeconds: number } | null = null;

  constructor(
    readonly group: ProcessGroup,
    readonly bucketBytes = DEFAULT_BUCKET_BYTES,
  ) {}

  get rank(): number {
    return this.group.rank;
  }
  get worldSize(): number {
    return this.group.worldSize;
  }
  /** Rank 0 logs, shows progress and writes files. */
  get isMain(): boolean {
    return this.group.isMain;
  }

  /** Every rank takes rank 0's parameters and buffers (DDP's start-up sync). */
  async broadcastModule(model: Module): Promise<void> {
    const states = [...model.namedParameters(), ...model.namedBuffers()].map(([, t]) => t);
    await this.group.broadcast(states, 0, this.bucketBytes);
  }

  /** Every rank takes rank 0's copy of a state dict (e.g. EMA weights). */
  async broadcastState(sd: StateDict): Promise<void> {
    await this.group.broadcast([...sd.values()], 0, this.bucketBytes);
  }

  /**
   * From now on, average the gradients of `model` during backward (DistributedDataParallel's overlap):
   * each bucket's allreduce starts as soon as backward has produced its gradients; averageGradients()
   * then waits for them. Undo with stopOverlap().
   */
  overlapGradients(model: Module): void {
    this.stopOverlap();
    const named = model.namedParameters().filter(([, p]) => p.requiresGrad);
    const handle = this.group.attachReducer(named.map(([, p]) => p), { bucketBytes: this.bucketBytes, firstBucketBytes: Math.min(DEFAULT_FIRST_BUCKET_BYTES, this.bucketBytes) });
    this.#reducer = { handle, names: named.map(([n]) => n), launchSeconds: 0 };
  }

  stopOverlap(): void {
    if (this.#reducer) native.distReducerDetach(this.#reducer.handle);
    this.#reducer = null;
  }

  /** With overlap: the buckets (parameter names, in launch order) and how many are in flight in the backward under way (or just finished); else null. */
  get overlapState(): { buckets: string[][]; launched: number } | null {
    const r = this.#reducer;
    if (!r) return null;
    const info = native.distReducerInfo(r.handle);
    return { buckets: info.buckets.map((b) => b.map((i) => r.names[i])), launched: info.launched };
  }

  /** Replaces every parameter's gradient by its mean over the ranks (after backward). */
  async averageGradients(model: Module): Promise<void> {
    if (this.#reducer) return this.#finishOverlapped(this.#reducer);
    const grads: Tensor[] = [];
    for (const p of model.parameters()) {
      if (!p.requiresGrad) continue;
      const g = p.grad;
      // DDP reduces every parameter; one without a gradient on this rank counts as zero.
      if (g === null) throw new Error('data-parallel training: a trainable parameter got no gradient (unused in forward); every parameter must be used');
      grads.push(g);
    }
    const t0 = performance.now();
    try {
      await this.group.allreduce(grads, { average: true, bucketBytes: this.bucketBytes });
    } finally {
      this.commSeconds += (performance.now() - t0) / 1000;
      for (const g of grads) g.dispose(); // handles only: the gradients stay on the parameters
    }
  }

  async #finishOverlapped(r: { handle: ReducerHandle; names: string[]; launchSeconds: number }): Promise<void> {
    const info = native.distReducerInfo(r.handle);
    // The time backward spent launching buckets counts as communication, as the wait below.
    this.commSeconds += info.launchSeconds - r.launchSeconds;
    r.launchSeconds = info.launchSeconds;
    const t0 = performance.now();
    try {
      if (info.missing.length) {
        await native.distReducerFinish(r.handle).catch(() => undefined); // drains the launched buckets, resets
        const names = info.missing.slice(0, 5).map((i) => r.names[i]).join(', ');
        throw new Error(`data-parallel training: trainable parameter(s) got no gradient (unused in forward): ${names}; every parameter must be used`);
      }
      await this.group.finishReducer(r.handle);
    } finally {
      this.commSeconds += (performance.now() - t0) / 1000;
    }
  }

  /** Element-wise sums over the ranks (float64). */
  async sum(values: readonly number[]): Promise<number[]> {
    const t = torch.tensor([...values], { dtype: 'float64' });
    const t0 = performance.now();
    try {
      await this.group.allreduce([t], { op: 'sum' });
      return t.toArray() as number[];
    } finally {
      this.commSeconds += (performance.now() - t0) / 1000;
      t.dispose();
    }
  }

  barrier(): Promise<void> {
    return this.group.barrier();
  }
}
