/**
 * Neural-network functions (PyTorch's `torch.nn.functional`) and the free
 * functions over several tensors (cat, stack, where, pad).
 */
import { defOp } from './ops.js';
import { native } from './native.js';
import { getFusedKernels } from './fused.js';
import { Tensor, wrapHandle, type Scalar } from './tensor.js';
import { tidy } from './scope.js';

const O = {
  conv2d: defOp('aten::conv2d'),
  im2col: defOp('aten::im2col'),
  batchNorm: defOp('aten::batch_norm'),
  linear: defOp('aten::linear'),
  relu: defOp('aten::relu'),
  relu_: defOp('aten::relu_'),
  sigmoid: defOp('aten::sigmoid'),
  hardsigmoid: defOp('aten::hardsigmoid'),
  hardswish: defOp('aten::hardswish'),
  adaptiveAvgPool2d: defOp('aten::adaptive_avg_pool2d'),
  maxPool2d: defOp('aten::max_pool2d'),
  avgPool2d: defOp('aten::avg_pool2d'),
  dropout: defOp('aten::dropout'),
  logSoftmax: defOp('aten::log_softmax.int'),
  softmax: defOp('aten::softmax.int'),
  crossEntropy: defOp('aten::cross_entropy_loss'),
  nllLoss: defOp('aten::nll_loss'),
  mseLoss: defOp('aten::mse_loss'),
  oneHot: defOp('aten::one_hot'),
  cat: defOp('aten::cat'),
  stack: defOp('aten::stack'),
  where: defOp('aten::where.self'),
  whereScalarOther: defOp('aten::where.ScalarOther'),
  whereScalarSelf: defOp('aten::where.ScalarSelf'),
  whereScalar: defOp('aten::where.Scalar'),
  pad: defOp('aten::pad'),
};

type Pair = number | [number, number];

export interface Conv2dOptions {
  stride?: Pair;
  padding?: Pair;
  dilation?: Pair;
  groups?: number;
}

/**
 * A 2-d convolution, as PyTorch's F.conv2d. In training (grad on, the weight requiring grad), a
 * bias-free, ungrouped, undilated convolution of float32 NCHW tensors with at most 4 output pixels
 * computes its weight gradient in the addon (native/kernels.cc: the same fused multiply-add chain as
 * libtorch's oneDNN, ~3x faster there); same values, same gradients. Off with setFusedKernels(false).
 */
export function conv2d(input: Tensor, weight: Tensor, bias: Tensor | null = null, opts: Conv2dOptions = {}): Tensor {
  if (oneDnnChannelsLastHazard(input, weight, opts)) return conv2dContiguous(input, weight, bias, opts);
  if (bias === null && (opts.groups ?? 1) === 1 && pair(opts.dilation, 1).every((d) => d === 1) && getFusedKernels()) {
    const h = native.convSmallOutput(input.handle, weight.handle, pair(opts.stride, 1), pair(opts.padding, 0), SMALL_OUTPUT_MAX_PIXELS);
    if (h !== null) return wrapHandle(h);
  }
  return wrapHandle(
    O.conv2d(input.handle, weight.handle, bias?.handle ?? null, opts.stride ?? 1, opts.padding ?? 0, opts.dilation ?? 1, opts.groups ?? 1),
  );
}

/**
 * libtorch 1.13's oneDNN corrupts the heap (glibc aborts "corrupted size vs. prev_size", or a
 * segfault, sometimes a hang) on the forward + backward of a channels-last 1x1 convolution with
 * stride 2 and fewer than 8 input channels on CPUs without AVX-512 (or with oneDNN capped at AVX2):
 * Debian's PyTorch alone does it, e.g. Conv2d(3, 16, 1, 2) on a 4x3x16x16 channels-last input or
 * weight. A sweep in child processes (bench/onednn_1x1_sweep.py, bench/README.md) found stride-2 1x1
 * convolutions with 1 to 7 input channels failing (7: one shape of four), and none with 8 to 32, nor
 * stride 1 or 3, nor 3x3 kernels.
 * Such a layer (here: any stride above 1 and under 16 input channels, a margin for other ISAs) whose
 * input or weight is not plainly NCHW runs on NCHW copies of both, which is the contiguous path's
 * own computation, and its output goes back to channels-last, as libtorch's would be.
 */
function oneDnnChannelsLastHazard(input: Tensor, weight: Tensor, opts: Conv2dOptions): boolean {
  // the stride first (no native call): most convolutions leave here, off the hot path
  if (pair(opts.stride, 1).every((s) => s === 1)) return false;
  const w = weight.shape;
  if (w.length !== 4 || w[2] !== 1 || w[3] !== 1 || w[1] >= 16 || input.ndim !== 4) return false;
  return !rowMajor(input) || !rowMajor(weight);
}

/** Strides exactly those of a plain (NCHW) contiguous tensor of its shape. */
function rowMajor(t: Tensor): boolean {
  const shape = t.shape, strides = t.strides();
  for (let d = shape.length - 1, expected = 1; d >= 0; d--) {
    // a size-1 dim's stride is free, except H and W: a 1x1 weight's channels-last strides show only there
    if (strides[d] !== expected && (shape[d] !== 1 || d >= 2)) return false;
    expected *= shape[d];
  }
  return true;
}

function conv2dContiguous(input: Tensor, weight: Tensor, bias: Tensor | null, opts: Conv2dOptions): Tensor {
  return tidy(() => {
    // through 2-d, the 1x1 weight gets plain strides (contiguous() keeps a 1x1 weight's channels-last ones)
    const [o, i] = weight.shape;
    const w = weight.contiguous().reshape([o, i]).reshape([o, i, 1, 1]);
    const x = input.contiguous();
    const y = wrapHandle(O.conv2d(x.handle, w.handle, bias?.handle ?? null, opts.stride ?? 1, opts.padding ?? 0, opts.dilation ?? 1, opts.groups ?? 1));
    return y.contiguous('channelsLast'); // as libtorch's own output would be laid out
  });
}

const pair = (p: Pair | undefined, d: number): [number, number] => (p === undefined ? [d, d] : typeof p === 'number' ? [p, p] : p);
/** Outputs up to this many pixels take native/kernels.cc's weight gradient (where oneDNN's is slow). */
const SMALL_OUTPUT_MAX_PIXELS = 4;

/**
 * The same convolution as `conv2d` (groups 1) computed as one matrix product: im2col unfolds the
 * input into [Cin*kh*kw, N*Ho*Wo] columns and W[Cout, Cin*kh*kw] multiplies them; autograd
 * differentiates through both, so the weight gradient is one GEMM grad[Cout, N*Ho*Wo] x columns^T.
 * Faster than libtorch's oneDNN kernels where the output is tiny and the weight large (e.g. 192->1280
 * channels at 2x2 output: oneDNN's backward-weight runs at ~18 GFLOP/s there). Not bit-identical to
 * `conv2d` (another summation order): within float32 rounding (relative ~1e-6).
 */
export function conv2dIm2col(input: Tensor, weight: Tensor, bias: Tensor | null = null, opts: Conv2dOptions = {}): Tensor {
  if ((opts.groups ?? 1) !== 1) throw new Error('conv2dIm2col: groups must be 1');
  const [n, , h, w] = input.shape;
  const [cout, cin, kh, kw] = weight.shape;
  const [sh, sw] = pair(opts.stride, 1);
  const [ph, pw] = pair(opts.padding, 0);
  const [dh, dw] = pair(opts.dilation, 1);
  const ho = Math.floor((h + 2 * ph - dh * (kh - 1) - 1) / sh) + 1;
  const wo = Math.floor((w + 2 * pw - dw * (kw - 1) - 1) / sw) + 1;
  const cols = wrapHandle(O.im2col(input.handle, [kh, kw], [dh, dw], [ph, pw], [sh, sw])); // N, K, L
  const colsT = cols.transpose(0, 1); // K, N, L
  const flat = colsT.reshape([cin * kh * kw, n * ho * wo]);
  const wm = weight.reshape([cout, cin * kh * kw]);
  const ym = wm.matmul(flat); // Cout, N*L
  const y4 = ym.view([cout, n, ho, wo]).permute([1, 0, 2, 3]);
  const out = bias ? y4.add(bias.view([1, cout, 1, 1])) : y4.contiguous();
  for (const t of [cols, colsT, flat, wm, ym, y4]) t.dispose();
  return out;
}

export interface BatchNormOptions {
  weight?: Tensor | null;
  bias?: Tensor | null;
  training?: boolean;
  momentum?: number;
  eps?: number;
}

/**
 * Batch normalisation as PyTorch's F.batch_norm: in training, normalises with
 * the batch statistics and updates running stats in place
 * (running = (1 - momentum) * running + momentum * batch, unbiased variance).
 * Training on a contiguous float32 NCHW tensor runs the addon's fused kernel (native/kernels.cc:
 * vectorised statistics; ATen's values, running statistics and gradients bit for bit);
 * everything else, and every call after `setFusedKernels(false)`, runs ATen's batch_norm.
 */
export function batchNorm(input: Tensor, runningMean: Tensor | null, runningVar: Tensor | null, opts: BatchNormOptions = {}): Tensor {
  if (opts.training) {
    verifyBatchSize(input);
    const fused = fusedBatchNormTrain(input, runningMean, runningVar, opts, false);
    if (fused) return fused;
  }
  return atenBatchNorm(input, runningMean, runningVar, opts);
}

function atenBatchNorm(input: Tensor, runningMean: Tensor | null, runningVar: Tensor | null, opts: BatchNormOptions): Tensor {
  return wrapHandle(
    O.batchNorm(
      input.handle,
      opts.weight?.handle ?? null,
      opts.bias?.handle ?? null,
      runningMean?.handle ?? null,
      runningVar?.handle ?? null,
      opts.training ?? false,
      opts.momentum ?? 0.1,
      opts.eps ?? 1e-5,
      true,
    ),
  );
}

/**
 * relu(batchNorm(...)): in training on a contiguous float32 tensor one fused kernel (the ReLU
 * applied while normalising, its mask while reducing in backward), otherwise the two ops.
 */
export function batchNormRelu(input: Tensor, runningMean: Tensor | null, runningVar: Tensor | null, opts: BatchNormOptions = {}): Tensor {
  if (opts.training) {
    verifyBatchSize(input);
    const fused = fusedBatchNormTrain(input, runningMean, runningVar, opts, true);
    if (fused) return fused;
  }
  const y = atenBatchNorm(input, runningMean, runningVar, opts);
  const r = relu(y);
  y.dispose();
  return r;
}

/** PyTorch's check (F.batch_norm): batch statistics of a single value per channel are no statistics. */
function verifyBatchSize(input: Tensor): void {
  const s = input.shape;
  if (s.length >= 2 && s.reduce((a, b) => a * b, 1) / s[1] === 1) {
    throw new Error(`Expected more than 1 value per channel when training, got input size [${s.join(', ')}]`);
  }
}

function fusedBatchNormTrain(input: Tensor, runningMean: Tensor | null, runningVar: Tensor | null, opts: BatchNormOptions, withRelu: boolean): Tensor | null {
  if (!getFusedKernels() || input.dtype !== 'float32' || !input.isContiguous()) return null;
  const h = native.batchNormTrain(
    input.handle,
    opts.weight?.handle ?? null,
    opts.bias?.handle ?? null,
    runningMean?.handle ?? null,
    runningVar?.handle ?? null,
    opts.momentum ?? 0.1,
    opts.eps ?? 1e-5,
    withRelu,
  );
  return h === null ? null : wrapHandle(h);
}

export function linear(input: Tensor, weight: Tensor, bias: Tensor | null = null): Tensor {
  return wrapHandle(O.linear(input.handle, weight.handle, bias?.handle ?? null));
}

export function relu(x: Tensor, inplace = false): Tensor {
  return inplace ? x.relu_() : wrapHandle(O.relu(x.handle));
}
export function sigmoid(x: Tensor): Tensor {
  return wrapHandle(O.sigmoid(x.handle));
}
/** relu6(x + 3) / 6, as PyTorch. */
export function hardsigmoid(x: Tensor): Tensor {
  return wrapHandle(O.hardsigmoid(x.handle));
}
export function hardswish(x: Tensor): Tensor {
  return wrapHandle(O.hardswish(x.handle));
}

export function adaptiveAvgPool2d(x: Tensor, outputSize: Pair): Tensor {
  return wrapHandle(O.adaptiveAvgPool2d(x.handle, outputSize));
}

export function maxPool2d(x: Tensor, kernelSize: Pair, opts: { stride?: Pair; padding?: Pair; dilation?: Pair; ceilMode?: boolean } = {}): Tensor {
  return wrapHandle(O.maxPool2d(x.handle, kernelSize, opts.stride ?? kernelSize, opts.padding ?? 0, opts.dilation ?? 1, opts.ceilMode ?? false));
}

export function avgPool2d(x: Tensor, kernelSize: Pair, opts: { stride?: Pair; padding?: Pair } = {}): Tensor {
  return wrapHandle(O.avgPool2d(x.handle, kernelSize, opts.stride ?? kernelSize, opts.padding ?? 0));
}

/** Inverted dropout (scales kept values by 1/(1-p)); identity when not training. */
export function dropout(x: Tensor, p = 0.5, training = true): Tensor {
  if (p < 0 || p > 1) throw new RangeError(`dropout probability must be in [0, 1], got ${p}`);
  return wrapHandle(O.dropout(x.handle, p, training));
}

export function logSoftmax(x: Tensor, dim: number): Tensor {
  return wrapHandle(O.logSoftmax(x.handle, dim, null));
}
export function softmax(x: Tensor, dim: number): Tensor {
  return wrapHandle(O.softmax(x.handle, dim, null));
}

export type Reduction = 'none' | 'mean' | 'sum';
const REDUCTION: Record<Reduction, number> = { none: 0, mean: 1, sum: 2 };

export interface CrossEntropyOptions {
  weight?: Tensor | null;
  reduction?: Reduction;
  ignoreIndex?: number;
  labelSmoothing?: number;
}

/**
 * Cross entropy of logits [N, C] against class indices [N] (int64) or class
 * probabilities [N, C] (soft targets, e.g. mixup), with optional label smoothing.
 */
export function crossEntropy(logits: Tensor, target: Tensor, opts: CrossEntropyOptions = {}): Tensor {
  return wrapHandle(
    O.crossEntropy(
      logits.handle,
      target.handle,
      opts.weight?.handle ?? null,
      REDUCTION[opts.reduction ?? 'mean'],
      opts.ignoreIndex ?? -100,
      opts.labelSmoothing ?? 0,
    ),
  );
}

export function nllLoss(logProbs: Tensor, target: Tensor, opts: { reduction?: Reduction; ignoreIndex?: number } = {}): Tensor {
  return wrapHandle(O.nllLoss(logProbs.handle, target.handle, null, REDUCTION[opts.reduction ?? 'mean'], opts.ignoreIndex ?? -100));
}

export function mseLoss(input: Tensor, target: Tensor, reduction: Reduction = 'mean'): Tensor {
  return wrapHandle(O.mseLoss(input.handle, target.handle, REDUCTION[reduction]));
}

/** One-hot int64 encoding of class indices. */
export function oneHot(indices: Tensor, numClasses = -1): Tensor {
  return wrapHandle(O.oneHot(indices.handle, numClasses));
}

export function cat(tensors: Tensor[], dim = 0): Tensor {
  return wrapHandle(O.cat(tensors.map((t) => t.handle), dim));
}
export function stack(tensors: Tensor[], dim = 0): Tensor {
  return wrapHandle(O.stack(tensors.map((t) => t.handle), dim));
}

/** Elementwise `condition ? a : b`, with broadcasting. */
export function where(condition: Tensor, a: Tensor | Scalar, b: Tensor | Scalar): Tensor {
  const c = condition.handle;
  if (a instanceof Tensor && b instanceof Tensor) return wrapHandle(O.where(c, a.handle, b.handle));
  if (a instanceof Tensor) return wrapHandle(O.whereScalarOther(c, a.handle, b));
  if (b instanceof Tensor) return wrapHandle(O.whereScalarSelf(c, a, b.handle));
  return wrapHandle(O.whereScalar(c, a, b));
}

/**
 * Pads the last dimensions, as F.pad: `pad` = [left, right, top, bottom, ...]
 * for the last, second-to-last, ... dimension; modes constant, reflect, replicate, circular.
 */
export function pad(x: Tensor, padding: number[], mode: 'constant' | 'reflect' | 'replicate' | 'circular' = 'constant', value = 0): Tensor {
  return wrapHandle(O.pad(x.handle, padding, mode, mode === 'constant' ? value : null));
}
