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
import { DEFAULT_BUCKET_BYTES, type ProcessGroup } from './process-group.js';

export class DataParallel {
  /** Seconds spent in gradient averaging and reductions (waiting for the slowest rank included). */
  commSeconds = 0;

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

  /** Replaces every parameter's gradient by its mean over the ranks. */
  async averageGradients(model: Module): Promise<void> {
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
