/**
 * The switch for the addon's fused CPU kernels (native/kernels.cc): training-mode BatchNorm [+ ReLU]
 * and the SGD step. They compute libtorch's own float operations in libtorch's order, so results
 * are the same bit for bit with them on or off; off is for measuring them and for ruling them out.
 */
let fusedOn = process.env.REPOPT_FUSED_KERNELS !== '0';

/** Turns the fused kernels on (the default) or off (ATen's ops, composed). Also REPOPT_FUSED_KERNELS=0 at load. */
export function setFusedKernels(on: boolean): void {
  fusedOn = on;
}

export function getFusedKernels(): boolean {
  return fusedOn;
}
