/** Evaluation: top-1, top-5 and mean cross-entropy of a model over a loader (eval mode, no grad). */
import * as torch from '../torch/index.js';
import { F, type Tensor } from '../torch/index.js';
import type { Module } from '../nn/index.js';
import { InterruptedError, turnEventLoop, type StopSignal } from './interrupt.js';
import type { Batch } from '../data/batches.js';

export interface EvalResult {
  top1: number;
  top5: number;
  loss: number;
  count: number;
}

export interface BatchSource {
  epoch(e: number, start?: number): AsyncIterableIterator<{ x: Tensor; y: Tensor; index: number }>;
}

export interface EvaluateOptions {
  /** Checked after every batch (e.g. a StopScope): a signal there ends the evaluation with an InterruptedError. */
  stop?: { readonly signal: StopSignal | null };
  /** An empty loader gives count 0 (a rank's shard of a tiny set) instead of an error. */
  allowEmpty?: boolean;
}

export async function evaluate(model: Module, loader: BatchSource, o: EvaluateOptions = {}): Promise<EvalResult> {
  const wasTraining = model.training;
  model.eval();
  let top1 = 0;
  let top5 = 0;
  let lossSum = 0;
  let count = 0;
  try {
    for await (const { x, y } of loader.epoch(0)) {
      torch.noGrad(() =>
        torch.tidy(() => {
          const logits = model.forward(x);
          const n = y.shape[0];
          const k = Math.min(5, logits.shape[1]);
          const topk = logits.topk(k, 1).indices;
          const hits = topk.eq(y.unsqueeze(1));
          top1 += hits.narrow(1, 0, 1).sum().item();
          top5 += hits.sum().item();
          lossSum += F.crossEntropy(logits, y, { reduction: 'sum' }).item();
          count += n;
        }),
      );
      x.dispose();
      y.dispose();
      await turnEventLoop(); // signal handlers, timers and finalizers run between batches
      const signal = o.stop?.signal;
      if (signal) throw new InterruptedError(signal, `evaluation interrupted by ${signal}`);
    }
  } finally {
    model.train(wasTraining);
  }
  if (count === 0) {
    if (o.allowEmpty) return { top1: 0, top5: 0, loss: 0, count: 0 };
    throw new Error('evaluation set is empty');
  }
  return { top1: top1 / count, top5: top5 / count, loss: lossSum / count, count };
}

/** Top-1 of a model over batches held in memory (eval mode, no grad; the model's mode is restored). */
export function top1(model: Module, batches: Batch[]): number {
  const wasTraining = model.training;
  model.eval();
  let hits = 0;
  let n = 0;
  try {
    for (const { x, y } of batches) {
      torch.noGrad(() =>
        torch.tidy(() => {
          hits += model.forward(x).argmax(1).eq(y).sum().item();
          n += y.shape[0];
        }),
      );
    }
  } finally {
    model.train(wasTraining);
  }
  return n ? hits / n : 0;
}
