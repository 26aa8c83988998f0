/**
 * Learning-rate schedules stepped per iteration, as the release: linear warmup
 * from 0 over `warmupIters`, then cosine decay to `minLr` (or constant).
 */
export type ScheduleKind = 'cosine' | 'constant';

export interface Schedule {
  kind: ScheduleKind;
  baseLr: number;
  totalIters: number;
  warmupIters: number;
  minLr?: number;
}

/** The learning rate of iteration `iter` (0-based: the rate used by the iter-th optimizer step). */
export function lrAt(s: Schedule, iter: number): number {
  const minLr = s.minLr ?? 0;
  if (s.warmupIters > 0 && iter < s.warmupIters) return (s.baseLr * (iter + 1)) / s.warmupIters;
  if (s.kind === 'constant') return s.baseLr;
  const span = Math.max(1, s.totalIters - s.warmupIters);
  const progress = Math.min(1, (iter - s.warmupIters) / span);
  return minLr + 0.5 * (s.baseLr - minLr) * (1 + Math.cos(Math.PI * progress));
}

/** The release's linear scaling rule: lr is given per 256 images. */
export function scaledLr(lr: number, batchSize: number, worldSize = 1): number {
  return (lr * batchSize * worldSize) / 256;
}
