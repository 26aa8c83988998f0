/** Intra-op threads of libtorch (default: all cores, set when the addon loads). */
import { native } from './native.js';

/** Sets libtorch's intra-op threads (OpenMP) and, where libtorch's BLAS is OpenBLAS, its thread pool too. */
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
/** OpenBLAS's thread count (libtorch's matrix products), -1 when libtorch does not use OpenBLAS. */
export function blasNumThreads(): number {
  return native.blasNumThreads();
}
