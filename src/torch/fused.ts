/**
 * The switch for the addon's fused CPU kernels (native/kernels.cc): training-mode BatchNorm [+ ReLU],
 * the SGD step, and the weight gradient of tiny-output convolutions. They compute libtorch's own
 * float operations in libtorch's order, so results are the same bit for bit with them on or off;
 * off is for measuring them and for ruling them out.
 */
import { native } from './native.js';

let fusedOn = process.env.REPOPT_FUSED_KERNELS !== '0';

/** Turns the fused kernels on (the default) or off (ATen's ops, composed). Also REPOPT_FUSED_KERNELS=0 at load. */
export function setFusedKernels(on: boolean): void {
  fusedOn = on;
}

export function getFusedKernels(): boolean {
  return fusedOn;
}

/**
 * The tiny-output convolutions seen so far (each shape and thread count a problem): how many
 * compute their weight gradient in the addon's kernel (checked equal to libtorch's, bit for bit,
 * on their first backward) and how many stay with libtorch's, where oneDNN sums in another order.
 */
export type KernelIsa = 'avx512' | 'avx2' | 'default';
export interface FusedKernelModel {
  lanes: number;
  fma: boolean;
  isa: KernelIsa;
  hostIsa: KernelIsa;
}

export function convSmallOutputProblems(): { chain: number; libtorch: number } {
  return native.convSmallOutputProblems();
}

/**
 * The libtorch CPU kernels the BatchNorm and SGD kernels reproduce in this process (floats per
 * vector and whether libtorch fuses multiply-adds: 16 / true for its AVX-512 build, 8 / true for
 * AVX2, 8 / false for its baseline), or null where they stand down and ATen runs (a libtorch other
 * than 1.13). `isa` is the instruction set our kernels run ('avx512', 'avx2' or 'default': libtorch's
 * capability, ATEN_CPU_CAPABILITY included, capped by the CPU's), `hostIsa` the best this CPU has.
 */
export function fusedKernelModel(): FusedKernelModel | null {
  return native.fusedKernelModel();
}
