/**
 * Folding batch norm into the conv before it, and the small kernels fusion builds from (float64): the
 * arithmetic every deploy form shares (CslaBlock, RepOpt-VGG, RepOpt-GhostNet, MobileOne).
 *
 * Batch norm in eval mode is y = gamma * (x - mean) / sqrt(var + eps) + beta, so a conv W followed by it is
 * the conv W * gamma/std (per output channel) with bias beta - mean * gamma/std.
 */
import * as torch from '../torch/index.js';
import type { Tensor } from '../torch/index.js';
import type { BatchNorm2d } from '../nn/index.js';

/** Per-channel factor gamma/std and bias beta - mean*gamma/std of an eval-mode BN (float64). */
export function bnAffine(bn: BatchNorm2d): { mul: Tensor; add: Tensor } {
  if (!bn.runningMean || !bn.runningVar) throw new Error('fuse: batch norm without running statistics cannot be folded');
  const mean = bn.runningMean.double();
  const std = bn.runningVar.double().add(bn.eps).sqrt();
  const gamma = bn.weight ? bn.weight.double() : torch.onesLike(mean);
  const beta = bn.bias ? bn.bias.double() : torch.zerosLike(mean);
  const mul = gamma.div(std);
  return { mul, add: beta.sub(mean.mul(mul)) };
}

/** Folds an eval-mode BN that follows a conv with kernel `kernel` (float64 result). */
export function foldBN(kernel: Tensor, bn: BatchNorm2d): { weight: Tensor; bias: Tensor } {
  return torch.tidy(() => {
    const { mul, add } = bnAffine(bn);
    return { weight: kernel.double().mul(mul.view([-1, 1, 1, 1])), bias: add };
  });
}

/** A 1x1 kernel [O, I, 1, 1] as a 3x3 kernel with it at the centre. */
export function padTo3x3(k1: Tensor): Tensor {
  return torch.pad(k1, [1, 1, 1, 1]);
}

/** The identity map on C channels as a 3x3 kernel [C, C, 3, 3] (1 at [c, c, 1, 1]), float64. */
export function identityKernel(channels: number): Tensor {
  return torch.tidy(() => padTo3x3(torch.eye(channels, { dtype: 'float64' }).view([channels, channels, 1, 1])));
}

