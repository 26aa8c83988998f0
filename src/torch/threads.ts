/** Intra-op threads of libtorch (default: all cores, set when the addon loads). */
import { native } from './native.js';

export function setNumThreads(n: number): void {
  if (!Number.isInteger(n) || n < 1) throw new RangeError(`setNumThreads: expected a positive integer, got ${n}`);
  native.setNumThreads(n);
}
export function getNumThreads(): number {
  return native.getNumThreads();
}
export function parallelInfo(): string {
  return native.parallelInfo();
}
