/**
 * CSLA blocks and the two rules of RepOptimizer (Ding et al., ICLR 2023, sec. 3).
 *
 * A CSLA (Constant-Scale Linear Addition) block is a sum of branches, each a
 * trainable linear op times a constant per-output-channel scale:
 *   y = sum_b scale_b (.) conv(x, W_b)        (conv branches: any kernel that pads to the target)
 *     + sum_i scale_i (.) v_i (.) x           (identity branches, v_i a trainable per-channel weight)
 * It equals one conv with kernel W' = sum_b scale_b pad(W_b) + diag(scale_i v_i) at the centre.
 * Training the branches with a plain optimizer equals training W' with:
 *   - Rule of Initialization: W'(0) = that sum over the branches' initial values;
 *   - Rule of Iteration: the gradient of W' multiplied by the Grad Mult
 *       M = sum_b |scale_b|^p over the taps each branch covers (+ |scale_i|^p at identity taps),
 *     p = 2 for SGD, p = 1 for AdamW (Adam normalises one power away; the update also
 *     multiplies the first moment by M again).
 * RepOpt-VGG's block (3x3 + 1x1 + identity), RepOpt-GhostNet's depthwise block
 * (dw3x3 + identity) and ACNet's asymmetric branches (3x3 + 1x3 + 3x1) are instances.
 */
import * as torch from '../torch/index.js';
import type { DType, Tensor } from '../torch/index.js';
import { defaultLayerInit_ } from '../nn/init.js';
import type { OptimizerKind } from '../optim/kinds.js';

/** A constant per-output-channel scale: one number for all channels, or one per channel. */
export type ChannelScales = number | ArrayLike<number> | Tensor;

export interface ConvBranch {
  kind: 'conv';
  /** Kernel size [h, w] (odd, at most the target's), e.g. 3, 1, [1, 3]. */
  kernel: number | [number, number];
  scale: ChannelScales;
}

export interface IdentityBranch {
  kind: 'identity';
  /** Constant scale in front of the trainable per-channel weight (1 in RepOpt-VGG/GhostNet). */
  scale?: ChannelScales;
  /** Whether the per-channel identity weight is trained (default true); a frozen one adds no Grad Mult. */
  trainable?: boolean;
}

export type Branch = ConvBranch | IdentityBranch;

export interface CslaSpec {
  inChannels: number;
  outChannels: number;
  /** The target kernel (odd sizes). */
  kernel: number | [number, number];
  /** 1 for dense, inChannels for depthwise. */
  groups?: number;
  stride?: number;
  branches: Branch[];
}

/** The Grad Mult rule follows the optimizer: p = 2 for SGD, p = 1 for AdamW. */
export type GradRule = OptimizerKind;

export interface GradMultOptions {
  /** Element type of the mult (default float32). */
  dtype?: DType;
  /**
   * AdamW only: use the signed scales as the release does. Where branches of
   * opposite sign meet (a centre tap) the equivalence then breaks; the default
   * |s| keeps it. Kept for bit-compatibility with the release.
   */
  signed?: boolean;
}

interface NormalBranch {
  kind: 'conv' | 'identity';
  kh: number;
  kw: number;
  scale: Float64Array;
  trainable: boolean;
}

export interface NormalSpec {
  cin: number;
  cout: number;
  groups: number;
  kh: number;
  kw: number;
  stride: number;
  branches: NormalBranch[];
}

function pair(k: number | [number, number]): [number, number] {
  return typeof k === 'number' ? [k, k] : k;
}

function channelScales(s: ChannelScales | undefined, c: number, where: string): Float64Array {
  if (s === undefined) return new Float64Array(c).fill(1);
  if (typeof s === 'number') return new Float64Array(c).fill(s);
  const arr = s instanceof torch.Tensor ? Float64Array.from(s.toArray()) : Float64Array.from(s);
  if (arr.length !== c) throw new Error(`${where}: ${arr.length} scales for ${c} output channels`);
  for (const v of arr) if (!Number.isFinite(v)) throw new Error(`${where}: non-finite scale ${v}`);
  return arr;
}

/** Checks a block description and resolves its scales to one number per output channel. */
export function normalizeSpec(spec: CslaSpec): NormalSpec {
  const [kh, kw] = pair(spec.kernel);
  const groups = spec.groups ?? 1;
  const { inChannels: cin, outChannels: cout } = spec;
  if (kh % 2 === 0 || kw % 2 === 0) throw new Error(`CSLA target kernel must have odd sizes, got ${kh}x${kw}`);
  if (cin % groups || cout % groups) throw new Error(`CSLA: channels ${cin}->${cout} not divisible by groups ${groups}`);
  if (spec.branches.length === 0) throw new Error('CSLA block needs at least one branch');
  const branches = spec.branches.map((b, i): NormalBranch => {
    const where = `branch ${i} (${b.kind})`;
    if (b.kind === 'identity') {
      if (cin !== cout) throw new Error(`${where}: identity needs in == out channels (${cin} != ${cout})`);
      if ((spec.stride ?? 1) !== 1) throw new Error(`${where}: identity needs stride 1`);
      return { kind: 'identity', kh: 1, kw: 1, scale: channelScales(b.scale, cout, where), trainable: b.trainable ?? true };
    }
    const [bh, bw] = pair(b.kernel);
    if (bh % 2 === 0 || bw % 2 === 0 || bh > kh || bw > kw) {
      throw new Error(`${where}: kernel ${bh}x${bw} does not pad to the target ${kh}x${kw} (needs odd sizes, no larger)`);
    }
    return { kind: 'conv', kh: bh, kw: bw, scale: channelScales(b.scale, cout, where), trainable: true };
  });
  return { cin, cout, groups, kh, kw, stride: spec.stride ?? 1, branches };
}

/** A block description resolved once (already-normalised ones pass through). */
function normal(spec: CslaSpec | NormalSpec): NormalSpec {
  return 'cin' in spec ? spec : normalizeSpec(spec);
}

/** Shape of the target kernel, [Cout, Cin/groups, kh, kw]. */
export function kernelShape(spec: CslaSpec | NormalSpec): number[] {
  const n = normal(spec);
  return [n.cout, n.cin / n.groups, n.kh, n.kw];
}

/** A [Cout, Cin/groups] matrix with 1 where output channel c meets input channel c (the identity's taps). */
function identityPattern(n: NormalSpec, dtype: DType): Tensor {
  const per = n.cin / n.groups;
  const data = new Float64Array(n.cout * per);
  for (let c = 0; c < n.cout; c++) data[c * per + (c % per)] = 1;
  return torch.fromTypedArray(data, [n.cout, per], 'float64').to(dtype);
}

function column(values: Float64Array, dtype: DType): Tensor {
  return torch.fromTypedArray(values, [values.length, 1, 1, 1], 'float64').to(dtype);
}

/** Adds `value[c] * block` into the centred [bh, bw] window of the [Cout, Cin/g, kh, kw] kernel. */
function addCentred(target: Tensor, n: NormalSpec, bh: number, bw: number, addend: Tensor): void {
  const top = (n.kh - bh) / 2;
  const left = (n.kw - bw) / 2;
  target.narrow(2, top, bh).narrow(3, left, bw).add_(addend);
}

/**
 * The Grad Mult of a block: M = sum over branches of |scale|^p on the taps the
 * branch covers (p = 2 for SGD, 1 for AdamW). Frozen identities add nothing.
 */
export function gradMult(spec: CslaSpec | NormalSpec, rule: GradRule, opts: GradMultOptions = {}): Tensor {
  const n = normal(spec);
  const dtype = opts.dtype ?? 'float32';
  const signed = rule === 'adamw' && (opts.signed ?? false);
  const power = (s: number) => (rule === 'sgd' ? s * s : signed ? s : Math.abs(s));
  return torch.tidy(() => {
    const m = torch.zeros(kernelShape(n), { dtype });
    for (const b of n.branches) {
      if (!b.trainable) continue;
      const coef = column(b.scale.map(power), dtype);
      if (b.kind === 'conv') {
        addCentred(m, n, b.kh, b.kw, coef.expand([n.cout, n.cin / n.groups, b.kh, b.kw]));
      } else {
        addCentred(m, n, 1, 1, identityPattern(n, dtype).view([n.cout, n.cin / n.groups, 1, 1]).mul(coef));
      }
    }
    return m;
  });
}

/** Freshly initialised branch kernels with PyTorch's default conv init, in branch order (conv branches only). */
export function freshBranchKernels(spec: CslaSpec | NormalSpec, dtype: DType = 'float32'): Tensor[] {
  const n = normal(spec);
  return n.branches
    .filter((b) => b.kind === 'conv')
    .map((b) => {
      const w = torch.empty([n.cout, n.cin / n.groups, b.kh, b.kw], { dtype });
      defaultLayerInit_(w, null);
      return w;
    });
}

export interface FuseInputs {
  /** One kernel per conv branch, in branch order, shaped [Cout, Cin/groups, bh, bw]. */
  convKernels: Tensor[];
  /** One per-channel weight per identity branch, in branch order (default: ones). */
  identityWeights?: (Tensor | ArrayLike<number> | number)[];
}

/**
 * The single kernel equal to the block: W' = sum_b scale_b pad(W_b) + scale_i v_i at the identity taps.
 * With fresh branch kernels this is the Rule of Initialization.
 */
export function fuseKernel(spec: CslaSpec | NormalSpec, inputs: FuseInputs, dtype: DType = inputs.convKernels[0]?.dtype ?? 'float32'): Tensor {
  const n = normal(spec);
  const convs = n.branches.filter((b) => b.kind === 'conv');
  const ids = n.branches.filter((b) => b.kind === 'identity');
  if (inputs.convKernels.length !== convs.length) {
    throw new Error(`fuseKernel: ${inputs.convKernels.length} kernels for ${convs.length} conv branches`);
  }
  const idw = inputs.identityWeights ?? [];
  if (idw.length > ids.length) throw new Error(`fuseKernel: ${idw.length} identity weights for ${ids.length} identity branches`);
  return torch.tidy(() => {
    const w = torch.zeros(kernelShape(n), { dtype });
    convs.forEach((b, i) => {
      const k = inputs.convKernels[i];
      const want = [n.cout, n.cin / n.groups, b.kh, b.kw];
      if (k.shape.join() !== want.join()) {
        throw new Error(`fuseKernel: branch kernel ${i} has shape [${k.shape.join(', ')}], expected [${want.join(', ')}]`);
      }
      addCentred(w, n, b.kh, b.kw, k.to(dtype).mul(column(b.scale, dtype)));
    });
    ids.forEach((b, i) => {
      const v = idw[i];
      const per =
        v === undefined ? new Float64Array(n.cout).fill(1)
        : v instanceof torch.Tensor ? Float64Array.from(v.toArray())
        : channelScales(v as number | ArrayLike<number>, n.cout, `identity weight ${i}`);
      const coef = column(per.map((x, c) => x * b.scale[c]), dtype);
      addCentred(w, n, 1, 1, identityPattern(n, dtype).view([n.cout, n.cin / n.groups, 1, 1]).mul(coef));
    });
    return w;
  });
}

/** Rule of Initialization from fresh, default-initialised branch kernels (identity weights: given or 1). */
export function initKernel(spec: CslaSpec | NormalSpec, opts: { dtype?: DType; identityWeights?: FuseInputs['identityWeights'] } = {}): Tensor {
  const n = normal(spec);
  return torch.tidy(() => fuseKernel(n, { convKernels: freshBranchKernels(n, opts.dtype), identityWeights: opts.identityWeights }, opts.dtype));
}
