import * as torch from '../torch/index.js';

/** `--threads N`: libtorch's intra-op threads (unset: libtorch's default). */
export function applyThreads(threads: number | undefined): void {
  if (threads !== undefined) torch.setNumThreads(threads);
}
