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
    return F.conv2d(x, this.weight, this.bias, { stride: o.stride, padding: o.padding, dilation: o.dilation, groups: o.groups });
  }
}

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
    if (x.ndim !== 4) throw new Error(`BatchNorm2d: expected 4-d input [N, C, H, W], got shape [${x.shape.join(', ')}]`);
    const useBatchStats = this.training || !this.runningMean;
    if (this.training && this.numBatchesTracked) torch.noGrad(() => this.numBatchesTracked!.add_(1));
    if (this.training && this.syncStats) {
      return syncBatchNorm(x, this.runningMean, this.runningVar, this.syncStats, { weight: this.weight, bias: this.bias, momentum: this.momentum, eps: this.eps });
    }
    return F.batchNorm(x, this.runningMean, this.runningVar, {
      weight: this.weight,
      bias: this.bias,
      training: useBatchStats,
      momentum: this.momentum,
      eps: this.eps,
    });
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
    for (const m of this.layers) y = m.forward(y);
    return y;
  }
}
