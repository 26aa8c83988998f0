/**
 * PyTorch's `nn.SyncBatchNorm.convert_sync_batchnorm` for repopt's models: every
 * BatchNorm2d of a model normalises its training batches with statistics over all
 * ranks of a process group. The modules stay BatchNorm2d (the same state-dict keys,
 * as PyTorch's SyncBatchNorm has), and evaluation is unchanged. As PyTorch's
 * SyncBatchNorm, it has no effect without a process group of more than one rank.
 */
import { BatchNorm2d, type BatchStatsReducer, type Module } from '../nn/index.js';

/**
 * Makes every BatchNorm2d of `model` synchronise its statistics over `group` (null or one
 * rank: nothing to do). Returns how many layers were converted.
 */
export function convertSyncBatchNorm(model: Module, group: BatchStatsReducer | null): number {
  if (!group || group.worldSize < 2) return 0;
  let n = 0;
  for (const [, m] of model.namedModules()) {
    if (m instanceof BatchNorm2d) {
      m.syncStats = group;
      n++;
    }
  }
  return n;
}

/** Back to per-process statistics. */
export function revertSyncBatchNorm(model: Module): void {
  for (const [, m] of model.namedModules()) if (m instanceof BatchNorm2d) m.syncStats = null;
}
