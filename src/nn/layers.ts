/** The standard layers, with PyTorch's parameter names, shapes, defaults and inits. */
import * as torch from '../torch/index.js';
import { F, type Tensor } from '../torch/index.js';
import { Module } from './module.js';
import { defaultLayerInit_ } from './init.js';
import { syncBatchNorm, type BatchStatsReducer } from './sync-batch-norm.js';

type Pair = number | [number, number];

export interface Conv2dOptions extends F.Conv2dOptions {
  bias?: boolean;
  dtype?: torch.DType;
}

export class Conv2d extends Module {
  readonly weight: Tensor;
  readonly bias: Tensor | null;
  constructor(
    readonly inChannels: number,
    readonly outChannels: number,
    readonly kernelSize: Pair,
    readonly options: Conv2dOptions = {},
  ) {
    super();
    const groups = options.groups ?? 1;
    if (inChannels % groups || outChannels % groups) {
      throw new Error(`Conv2d: in (${inChannels}) and out (${outChannels}) channels must be divisible by groups (${groups})`);
    }
    const [kh, kw] = typeof kernelSize === 'number' ? [kernelSize, kernelSize] : kernelSize;
    const dtype = options.dtype ?? 'float32';
    this.weight = this.registerParameter('weight', torch.empty([outChannels, inChannels / groups, kh, kw], { dtype }));
    this.bias = this.registerParameter('bias', options.bias === false ? null : torch.empty([outChannels], { dtype }));
    this.resetParameters();
  }
  resetParameters(): void {
    defaultLayerInit_(this.weight, this.bias);
  }
  forward(x: Tensor): Tensor {
    const o = this.options;
    const opts = { stride: o.stride, padding: o.padding, dilation: o.dilation, groups: o.groups };
    if (im2colMaxPixels > 0 && (o.groups ?? 1) === 1 && x.shape.length === 4 && o.dilation === undefined) {
      const [kh, kw] = this.weight.shape.slice(2);
      const [sh, sw] = pairOf(o.stride, 1);
      const [ph, pw] = pairOf(o.padding, 0);
      const ho = Math.floor((x.shape[2] + 2 * ph - kh) / sh) + 1;
      const wo = Math.floor((x.shape[3] + 2 * pw - kw) / sw) + 1;
      if (ho * wo <= im2colMaxPixels) return F.conv2dIm2col(x, this.weight, this.bias, opts);
    }
    return F.conv2d(x, this.weight, this.bias, opts);
  }
}

const pairOf = (p: Pair | undefined, d: number): [number, number] => (p === undefined ? [d, d] : typeof p === 'number' ? [p, p] : p);

let im2colMaxPixels = 0;

/**
 * Opt-in speed setting (default 0: off): `Conv2d` layers whose output has at most `pixels` pixels
 * (Ho x Wo) compute as im2col + one matrix product (`F.conv2dIm2col`) instead of libtorch's oneDNN
 * kernels, whose backward-weight is slow there (192->1280 channels at 2x2 output: 18 GFLOP/s against
 * ~170 for the matrix product; bench/README.md "Roofline"). Not bit-identical to libtorch's conv
 * (another summation order), so off by default: with it a run no longer reproduces PyTorch's numbers
 * to the last digit. Also read from REPOPT_CONV_IM2COL_MAX_PIXELS at load. Rarely worth it now:
 * in training, `F.conv2d` already computes such a layer's weight gradient with the addon's kernel,
 * the very sums oneDNN computes, ~3x faster (native/kernels.cc).
 */
export function setConvIm2colMaxPixels(pixels: number): void {
  if (!Number.isInteger(pixels) || pixels < 0) throw new RangeError(`setConvIm2colMaxPixels: expected a non-negative integer, got ${pixels}`);
  im2colMaxPixels = pixels;
}

export function getConvIm2colMaxPixels(): number {
  return im2colMaxPixels;
}

if (process.env.REPOPT_CONV_IM2COL_MAX_PIXELS) setConvIm2colMaxPixels(Number(process.env.REPOPT_CONV_IM2COL_MAX_PIXELS));

export interface BatchNormOptions {
  eps?: number;
  momentum?: number;
  affine?: boolean;
  trackRunningStats?: boolean;
  dtype?: torch.DType;
}

/** BatchNorm2d with PyTorch's defaults (eps 1e-5, momentum 0.1, unbiased running variance). */
export class BatchNorm2d extends Module {
  readonly weight: Tensor | null;
  readonly bias: Tensor | null;
  readonly runningMean: Tensor | null;
  readonly runningVar: Tensor | null;
  readonly numBatchesTracked: Tensor | null;
  readonly eps: number;
  readonly momentum: number;
  /**
   * Set (by convertSyncBatchNorm): training batches are normalised with statistics over every
   * rank of this reducer, as PyTorch's SyncBatchNorm; evaluation is unchanged.
   */
  syncStats: BatchStatsReducer | null = null;
  constructor(readonly numFeatures: number, options: BatchNormOptions = {}) {
    super();
    this.eps = options.eps ?? 1e-5;
    this.momentum = options.momentum ?? 0.1;
    const dtype = options.dtype ?? 'float32';
    const affine = options.affine ?? true;
    this.weight = this.registerParameter('weight', affine ? torch.ones([numFeatures], { dtype }) : null);
    this.bias = this.registerParameter('bias', affine ? torch.zeros([numFeatures], { dtype }) : null);
    const track = options.trackRunningStats ?? true;
    this.runningMean = this.registerBuffer('running_mean', track ? torch.zeros([numFeatures], { dtype }) : null);
    this.runningVar = this.registerBuffer('running_var', track ? torch.ones([numFeatures], { dtype }) : null);
    this.numBatchesTracked = this.registerBuffer('num_batches_tracked', track ? torch.zeros([], { dtype: 'int64' }) : null);
  }
  forward(x: Tensor): Tensor {
    return this.normalize(x, false);
  }
  /** relu(forward(x)), as one fused kernel in training (F.batchNormRelu); the same values. */
  forwardRelu(x: Tensor): Tensor {
    return this.normalize(x, true);
  }
  private normalize(x: Tensor, withRelu: boolean): Tensor {
    if (x.ndim !== 4) throw new Error(`BatchNorm2d: expected 4-d input [N, C, H, W], got shape [${x.shape.join(', ')}]`);
    const useBatchStats = this.training || !this.runningMean;
    if (this.training && this.numBatchesTracked) torch.noGrad(() => this.numBatchesTracked!.add_(1));
    if (this.training && this.syncStats) {
      const y = syncBatchNorm(x, this.runningMean, this.runningVar, this.syncStats, { weight: this.weight, bias: this.bias, momentum: this.momentum, eps: this.eps });
      if (!withRelu) return y;
      const r = F.relu(y);
      y.dispose();
      return r;
    }
    const opts = { weight: this.weight, bias: this.bias, training: useBatchStats, momentum: this.momentum, eps: this.eps };
    return withRelu ? F.batchNormRelu(x, this.runningMean, this.runningVar, opts) : F.batchNorm(x, this.runningMean, this.runningVar, opts);
  }
}

export class Linear extends Module {
  readonly weight: Tensor;
  readonly bias: Tensor | null;
  constructor(readonly inFeatures: number, readonly outFeatures: number, options: { bias?: boolean; dtype?: torch.DType } = {}) {
    super();
    const dtype = options.dtype ?? 'float32';
    this.weight = this.registerParameter('weight', torch.empty([outFeatures, inFeatures], { dtype }));
    this.bias = this.registerParameter('bias', options.bias === false ? null : torch.empty([outFeatures], { dtype }));
    defaultLayerInit_(this.weight, this.bias);
  }
  forward(x: Tensor): Tensor {
    return F.linear(x, this.weight, this.bias);
  }
}

export class Identity extends Module {
  forward(x: Tensor): Tensor {
    return x;
  }
}

export class ReLU extends Module {
  forward(x: Tensor): Tensor {
    return F.relu(x);
  }
}

export class Flatten extends Module {
  constructor(readonly startDim = 1, readonly endDim = -1) {
    super();
  }
  forward(x: Tensor): Tensor {
    return x.flatten(this.startDim, this.endDim);
  }
}

export class AdaptiveAvgPool2d extends Module {
  constructor(readonly outputSize: Pair) {
    super();
  }
  forward(x: Tensor): Tensor {
    return F.adaptiveAvgPool2d(x, this.outputSize);
  }
}

export class Dropout extends Module {
  constructor(readonly p = 0.5) {
    super();
  }
  forward(x: Tensor): Tensor {
    return F.dropout(x, this.p, this.training);
  }
}

/** Children named "0", "1", ... as PyTorch's nn.Sequential. */
export class Sequential extends Module {
  readonly layers: Module[];
  constructor(...layers: Module[]) {
    super();
    this.layers = layers.map((m, i) => this.registerModule(String(i), m));
  }
  forward(x: Tensor): Tensor {
    let y = x;
    for (let i = 0; i < this.layers.length; i++) {
      const m = this.layers[i];
      // BatchNorm2d then ReLU: one fused op (BatchNorm2d.forwardRelu), the same values
      if (m.constructor === BatchNorm2d && this.layers[i + 1]?.constructor === ReLU) {
        y = (m as BatchNorm2d).forwardRelu(y);
        i++;
      } else {
        y = m.forward(y);
      }
    }
    return y;
  }
}
