/**
 * RepOpt-VGG (Ding et al., "Re-parameterizing Your Optimizers rather than
 * Architectures", ICLR 2023; behaviour and state-dict keys of the authors'
 * PyTorch release, DingXiaoH/RepOptimizers, MIT). A plain VGG-style net: a stem
 * block, four stages of 3x3 blocks (the first of each with stride 2), global
 * average pooling and one `linear` classifier. Written from the paper (arXiv 2205.15242) and the release's state-dict keys;
 * no code of the release is used.
 *
 * One config table (`REPOPT_VGG_CONFIGS`) drives every named variant; each is
 * registered as `RepOpt-VGG-<name>` with a one-line factory. `new RepOptVGG({
 * numBlocks, widthMultiplier })` builds custom ones.
 *
 * Block layout and state-dict keys per mode (stem `stage0.`, others `stageX.Y.`):
 * - `target`  conv3x3 -> BN -> ReLU [-> SE]:
 *             `conv.weight` (no bias), `bn.{weight,bias,running_mean,running_var,num_batches_tracked}`.
 * - `hs`      scale_conv(conv x) + scale_1x1(conv_1x1 x) [+ scale_identity(x)] -> BN -> ReLU [-> SE]:
 *             `conv.weight` (3x3), `scale_conv.weight`, `conv_1x1.weight`, `scale_1x1.weight`,
 *             `scale_identity.weight` (only where in == out and stride 1), `bn.*`. The scales are
 *             per-output-channel weights of shape [Cout] (the keys the scale files hold).
 *             The 3x3 conv is named `conv` (as in `target`), the 1x1 `conv_1x1`, as the release does.
 *             Scale init: s and t are 1 in the stem and in block 0 of a stage, sqrt(2 / i) in
 *             block i >= 1 of a stage; the identity scale is 1.
 * - `csla`    as `hs`, with `scale_conv` and `scale_1x1` frozen (still parameters, so the state dict
 *             and the parameter count are the same as `hs`, but `requiresGrad` is off: optimizers skip
 *             them); `scale_identity` stays trainable. For equivalence checks.
 *             `target`, `hs` and `csla` blocks are the generic CslaBlock (src/repopt/block.ts) of one spec
 *             (`vggSpec`: 3x3 + 1x1 [+ identity]) with the naming map `vggNames` and frozen scales kept as
 *             parameters; `VGGCslaBlock` adds the ReLU (fused with BN) and the optional post-SE.
 * - `repvgg`  the RepVGG baseline, bn_3x3(conv_3x3 x) + bn_1x1(conv_1x1 x) [+ bn_identity(x)] -> ReLU [-> SE]:
 *             `conv_3x3.weight`, `bn_3x3.*`, `conv_1x1.weight`, `bn_1x1.*`, `bn_identity.*`.
 * - `qarepvgg` the QARepVGG baseline (Chu et al., "Make RepVGG Greater Again", AAAI 2024; its block V2),
 *             bn(rbr_dense(x) + rbr_1x1(x) [+ x]) -> ReLU [-> SE]: `rbr_dense.conv.weight`, `rbr_dense.bn.*`,
 *             `rbr_1x1.weight` (a bare 1x1, no BN), `bn.*` (the BN after the sum), as the official release
 *             (cxxgtxy/QARepVGG) names them. Its branches fuse as RepVGG's, then the post-BN folds in.
 * Post-SE (option `postSE`, off in every released model): after the ReLU, `post_se.down` (1x1 conv C -> C/4,
 * with bias), ReLU, `post_se.up` (C/4 -> C, with bias), sigmoid, times the input; the squeeze is a
 * global average pool (the release pools with a kernel of the input width: equal for square inputs).
 * Head: global average pool, `linear.{weight,bias}`. Widths: stem min(64, int(64a)); stages
 * int(64a), int(128a), int(256a), int(512b).
 */
import * as torch from '../torch/index.js';
import { F, type Tensor } from '../torch/index.js';
import { BatchNorm2d, Conv2d, Linear, Module, Sequential } from '../nn/index.js';
import type { ArchInfo, CreateModelOptions } from './registry.js';
import type { Reparameterizable } from '../repopt/reparam.js';
// Cycle by design: fuse.ts knows the block classes; only the reparameterize() methods call into it.
import { deployBlock, deployVGG, type DeployBlock, type DeployVGG } from './repoptvgg-deploy.js';
import { ScaleLayer } from '../repopt/scale-layer.js';
import { CslaBlock, extractScales, type CslaBlockNames } from '../repopt/block.js';
import type { CslaSpec } from '../repopt/csla.js';

export { ScaleLayer };

export type RepOptVGGMode = 'target' | 'hs' | 'csla' | 'repvgg' | 'qarepvgg';
export const REPOPT_VGG_MODES: readonly RepOptVGGMode[] = ['target', 'hs', 'csla', 'repvgg', 'qarepvgg'];

export interface RepOptVGGConfig {
  /** Blocks in stages 1..4. */
  numBlocks: readonly [number, number, number, number] | readonly number[];
  /** Width multipliers [a, a, a, b] of stages 1..4 (base widths 64, 128, 256, 512). */
  widthMultiplier: readonly [number, number, number, number] | readonly number[];
}

export interface RepOptVGGOptions {
  mode?: RepOptVGGMode;
  numClasses?: number;
  /** Input channels (3; 1 for grey images). */
  inChannels?: number;
  /** Strides of stage0..stage4 (default 2,2,2,2,2; CIFAR-style nets use 1 somewhere). */
  strides?: readonly number[];
  /** Squeeze-excitation after each block's ReLU (`post_se`). */
  postSE?: boolean;
  dtype?: 'float32' | 'float64';
}

/** The released variants (the release's configurations; paper Table 3). */
export const REPOPT_VGG_CONFIGS = {
  A0: { numBlocks: [2, 4, 14, 1], widthMultiplier: [0.75, 0.75, 0.75, 2.5] },
  A1: { numBlocks: [2, 4, 14, 1], widthMultiplier: [1, 1, 1, 2.5] },
  A2: { numBlocks: [2, 4, 14, 1], widthMultiplier: [1.5, 1.5, 1.5, 2.75] },
  B0: { numBlocks: [4, 6, 16, 1], widthMultiplier: [1, 1, 1, 2.5] },
  B1: { numBlocks: [4, 6, 16, 1], widthMultiplier: [2, 2, 2, 4] },
  B2: { numBlocks: [4, 6, 16, 1], widthMultiplier: [2.5, 2.5, 2.5, 5] },
  B3: { numBlocks: [4, 6, 16, 1], widthMultiplier: [3, 3, 3, 5] },
  L1: { numBlocks: [8, 14, 24, 1], widthMultiplier: [2, 2, 2, 4] },
  L2: { numBlocks: [8, 14, 24, 1], widthMultiplier: [2.5, 2.5, 2.5, 5] },
} as const satisfies Record<string, RepOptVGGConfig>;

export type RepOptVGGName = keyof typeof REPOPT_VGG_CONFIGS;
export const REPOPT_VGG_PREFIX = 'RepOpt-VGG-';

/** One block of the net, independent of the mode. */
export interface VGGBlockInfo {
  /** Key prefix without the dot: `stage0`, `stage1.0`, ... */
  name: string;
  inChannels: number;
  outChannels: number;
  stride: number;
  /** Whether the CSLA / RepVGG block has an identity branch (in == out and stride 1). */
  identity: boolean;
  /** Initial value of scale_conv and scale_1x1 in `hs` / `csla` mode. */
  scaleInit: number;
}

/** The blocks of a configuration, in model order. Pure arithmetic: builds nothing. */
export function vggBlockLayout(cfg: RepOptVGGConfig, opts: Pick<RepOptVGGOptions, 'inChannels' | 'strides'> = {}): VGGBlockInfo[] {
  const { numBlocks: nb, widthMultiplier: wm } = cfg;
  if (nb.length !== 4 || nb.some((n) => !Number.isInteger(n) || n < 1)) {
    throw new Error(`RepOptVGG: numBlocks must be 4 positive integers, got [${nb.join(', ')}]`);
  }
  if (wm.length !== 4 || wm.some((w) => !(w > 0))) throw new Error(`RepOptVGG: widthMultiplier must be 4 positive numbers, got [${wm.join(', ')}]`);
  const strides = opts.strides ?? [2, 2, 2, 2, 2];
  if (strides.length !== 5 || strides.some((s) => !Number.isInteger(s) || s < 1)) {
    throw new Error(`RepOptVGG: strides must be 5 positive integers (stage0..stage4), got [${strides.join(', ')}]`);
  }
  const inChannels = opts.inChannels ?? 3;
  const stemWidth = Math.min(64, Math.trunc(64 * wm[0]));
  const blocks: VGGBlockInfo[] = [];
  const block = (name: string, cin: number, cout: number, stride: number, scaleInit: number) =>
    blocks.push({ name, inChannels: cin, outChannels: cout, stride, identity: cin === cout && stride === 1, scaleInit });
  block('stage0', inChannels, stemWidth, strides[0], 1);
  let cin = stemWidth;
  [64, 128, 256, 512].forEach((base, s) => {
    const cout = Math.trunc(base * wm[s]);
    for (let i = 0; i < nb[s]; i++) {
      block(`stage${s + 1}.${i}`, cin, cout, i === 0 ? strides[s + 1] : 1, i === 0 ? 1 : Math.sqrt(2 / i));
      cin = cout;
    }
  });
  return blocks;
}

/** Parameters of the target model and its multiply-accumulates for a square input (convs + classifier). */
export function vggTargetStats(cfg: RepOptVGGConfig, opts: { numClasses?: number; inChannels?: number; strides?: readonly number[]; resolution?: number } = {}): { params: number; macs: number } {
  const numClasses = opts.numClasses ?? 1000;
  let h = opts.resolution ?? 224;
  let params = 0;
  let macs = 0;
  let last = 0;
  for (const b of vggBlockLayout(cfg, opts)) {
    h = Math.floor((h + 2 - 3) / b.stride) + 1;
    params += b.outChannels * b.inChannels * 9 + 2 * b.outChannels;
    macs += b.outChannels * b.inChannels * 9 * h * h;
    last = b.outChannels;
  }
  return { params: params + last * numClasses + numClasses, macs: macs + last * numClasses };
}

// ------------------------------------------------------------------ layers

/** Squeeze-excitation with 1x1 convs `down` and `up` (with bias), as RepVGG's SE block. */
export class SEBlock extends Module {
  readonly down: Conv2d;
  readonly up: Conv2d;
  constructor(channels: number, internal: number, dtype: torch.DType = 'float32') {
    super();
    this.down = this.registerModule('down', new Conv2d(channels, internal, 1, { bias: true, dtype }));
    this.up = this.registerModule('up', new Conv2d(internal, channels, 1, { bias: true, dtype }));
  }
  forward(x: Tensor): Tensor {
    const w = this.up.forward(F.relu(this.down.forward(F.adaptiveAvgPool2d(x, 1)))).sigmoid();
    return x.mul(w);
  }
}

/** [SE of] a block-local activation `r` (released when SE replaces it). */
function seTail(postSE: SEBlock | null, r: Tensor): Tensor {
  if (!postSE) return r;
  const o = postSE.forward(r);
  r.dispose();
  return o;
}

const newPostSE = (info: VGGBlockInfo, dtype: torch.DType) => new SEBlock(info.outChannels, Math.trunc(info.outChannels / 4), dtype);

/** The structural baselines' block base (RepVGG, QARepVGG): ReLU [-> post-SE] after the block. */
abstract class VGGBlockBase extends Module implements Reparameterizable {
  postSE: SEBlock | null = null;
  constructor(readonly info: VGGBlockInfo) {
    super();
  }
  /** The deployed block: conv3x3 with bias -> ReLU [-> SE] (a new module; this one is unchanged). */
  reparameterize(): DeployBlock {
    return deployBlock(this as unknown as VGGBlock);
  }
  protected addPostSE(on: boolean, dtype: torch.DType): void {
    if (on) this.postSE = this.registerModule('post_se', newPostSE(this.info, dtype));
  }
  /** ReLU [-> SE] of a block-local pre-activation `y`, which is released (see `sum2`). */
  protected finish(y: Tensor): Tensor {
    const r = F.relu(y);
    y.dispose();
    return seTail(this.postSE, r);
  }
  /** [SE of] a block-local activation `r` (released when SE replaces it). */
  protected finishActivated(r: Tensor): Tensor {
    return seTail(this.postSE, r);
  }
}

/**
 * RepOpt-VGG's CSLA block as a spec: 3x3 + 1x1 with the block's initial scale (`scaleInit`) [+ a trainable
 * identity with constant scale 1 where in == out and stride 1]. Scales given replace the initial ones.
 */
export function vggSpec(info: VGGBlockInfo): CslaSpec {
  return {
    inChannels: info.inChannels,
    outChannels: info.outChannels,
    kernel: 3,
    stride: info.stride,
    branches: [
      { kind: 'conv', kernel: 3, scale: info.scaleInit },
      { kind: 'conv', kernel: 1, scale: info.scaleInit },
      ...(info.identity ? [{ kind: 'identity' as const, scale: 1, trainable: true }] : []),
    ],
  };
}

const VGG_BRANCH_NAMES = [{ conv: 'conv', scale: 'scale_conv' }, { conv: 'conv_1x1', scale: 'scale_1x1' }, { scale: 'scale_identity' }] as const;

/** The release's names of a block's parts: `conv` + `scale_conv`, `conv_1x1` + `scale_1x1`, `scale_identity`; target `conv`. */
export function vggNames(info: VGGBlockInfo): CslaBlockNames {
  return { conv: 'conv', branches: VGG_BRANCH_NAMES.slice(0, info.identity ? 3 : 2) };
}

/*
 * Block-local intermediates are released as soon as the next op has consumed
 * them, as Python does when their last reference goes: autograd keeps what it
 * saved for backward by its own reference, so only buffers nothing needs any
 * more are freed early (BN outputs before the branch sum, the sum before ReLU).
 * Inside torch.tidy they would otherwise live until the step ends: up to one
 * activation per branch per block more peak memory than PyTorch. Values and
 * gradients are unchanged.
 */
/** a + b, releasing a and b. */
function sum2(a: Tensor, b: Tensor): Tensor {
  const y = a.add(b);
  a.dispose();
  b.dispose();
  return y;
}

/**
 * A RepOpt-VGG block in a CSLA form (`target`, `hs`, `csla`): the generic CslaBlock of `vggSpec` with the
 * release's names (`vggNames`), then ReLU (fused with the BN: one native op) [-> post-SE]. Its deploy form
 * is a DeployBlock (conv3x3 with bias -> ReLU [-> SE]).
 */
export class VGGCslaBlock extends CslaBlock<DeployBlock> {
  declare readonly bn: BatchNorm2d;
  readonly postSE: SEBlock | null;
  constructor(readonly info: VGGBlockInfo, mode: 'target' | 'hs' | 'csla', opts: { postSE?: boolean; dtype?: torch.DType } = {}) {
    const dtype = opts.dtype ?? 'float32';
    super(vggSpec(info), { mode, dtype, names: vggNames(info), frozenScales: 'parameter' });
    this.postSE = opts.postSE ? this.registerModule('post_se', newPostSE(info, dtype)) : null;
  }
  override forward(x: Tensor): Tensor {
    const y = this.linear(x);
    const r = this.bn.forwardRelu(y);
    y.dispose();
    return seTail(this.postSE, r);
  }
  /** The deployed block: conv3x3 with bias -> ReLU [-> SE] (a new module; this one is unchanged). */
  override reparameterize(): DeployBlock {
    return deployBlock(this as VGGBlock);
  }
}

/** `target`: conv3x3 (no bias) -> BN -> ReLU [-> SE]. */
export class TargetBlock extends VGGCslaBlock {
  declare readonly conv: Conv2d;
  constructor(info: VGGBlockInfo, opts: { postSE?: boolean; dtype?: torch.DType } = {}) {
    super(info, 'target', opts);
  }
}

/** `hs` / `csla`: the CSLA block scale_conv(conv x) + scale_1x1(conv_1x1 x) [+ scale_identity(x)] -> BN -> ReLU [-> SE]. */
export class LinearAddBlock extends VGGCslaBlock {
  /** The 3x3 branch's conv (registered as `conv`, as the target's kernel). */
  declare readonly conv: Conv2d;
  constructor(info: VGGBlockInfo, opts: { csla?: boolean; postSE?: boolean; dtype?: torch.DType } = {}) {
    super(info, opts.csla ? 'csla' : 'hs', opts);
    // CslaBlock's `conv` is the target's conv; here the 3x3 branch's, under the same key.
    (this as { conv: Conv2d | null }).conv = this.branches[0].conv;
  }
  get scaleConv(): ScaleLayer {
    return this.branches[0].scale;
  }
  get conv1x1(): Conv2d {
    return this.branches[1].conv!;
  }
  get scale1x1(): ScaleLayer {
    return this.branches[1].scale;
  }
  get scaleIdentity(): ScaleLayer | null {
    return this.branches[2]?.scale ?? null;
  }
}

/** `repvgg`: bn_3x3(conv_3x3 x) + bn_1x1(conv_1x1 x) [+ bn_identity(x)] -> ReLU. */
export class RepVGGBlock extends VGGBlockBase {
  readonly conv3x3: Conv2d;
  readonly bn3x3: BatchNorm2d;
  readonly conv1x1: Conv2d;
  readonly bn1x1: BatchNorm2d;
  readonly bnIdentity: BatchNorm2d | null;
  constructor(info: VGGBlockInfo, opts: { postSE?: boolean; dtype?: torch.DType } = {}) {
    super(info);
    const dtype = opts.dtype ?? 'float32';
    const { inChannels: cin, outChannels: cout, stride } = info;
    this.conv3x3 = this.registerModule('conv_3x3', new Conv2d(cin, cout, 3, { stride, padding: 1, bias: false, dtype }));
    this.bn3x3 = this.registerModule('bn_3x3', new BatchNorm2d(cout, { dtype }));
    this.conv1x1 = this.registerModule('conv_1x1', new Conv2d(cin, cout, 1, { stride, padding: 0, bias: false, dtype }));
    this.bn1x1 = this.registerModule('bn_1x1', new BatchNorm2d(cout, { dtype }));
    this.bnIdentity = info.identity ? this.registerModule('bn_identity', new BatchNorm2d(cout, { dtype })) : null;
    this.addPostSE(opts.postSE ?? false, dtype);
  }
  forward(x: Tensor): Tensor {
    const c3 = this.conv3x3.forward(x);
    const c1 = this.conv1x1.forward(x);
    let y = sum2(this.bn3x3.forward(c3), this.bn1x1.forward(c1));
    c3.dispose();
    c1.dispose();
    if (this.bnIdentity) y = sum2(y, this.bnIdentity.forward(x));
    return this.finish(y);
  }
}

/** A conv and the BN after it, keyed `conv.*` and `bn.*` (QARepVGG's `rbr_dense`). */
export class ConvBN extends Module {
  constructor(readonly conv: Conv2d, readonly bn: BatchNorm2d) {
    super();
    this.registerModule('conv', conv);
    this.registerModule('bn', bn);
  }
  forward(x: Tensor): Tensor {
    const c = this.conv.forward(x);
    const y = this.bn.forward(c);
    c.dispose();
    return y;
  }
}

/** `qarepvgg`: bn(bn_dense(conv3x3 x) + conv1x1 x [+ x]) -> ReLU, the quantization-friendly RepVGG block. */
export class QARepVGGBlock extends VGGBlockBase {
  readonly dense: ConvBN;
  readonly conv3x3: Conv2d;
  readonly bnDense: BatchNorm2d;
  readonly conv1x1: Conv2d;
  readonly bn: BatchNorm2d;
  constructor(info: VGGBlockInfo, opts: { postSE?: boolean; dtype?: torch.DType } = {}) {
    super(info);
    const dtype = opts.dtype ?? 'float32';
    const { inChannels: cin, outChannels: cout, stride } = info;
    this.conv3x3 = new Conv2d(cin, cout, 3, { stride, padding: 1, bias: false, dtype });
    this.bnDense = new BatchNorm2d(cout, { dtype });
    this.dense = this.registerModule('rbr_dense', new ConvBN(this.conv3x3, this.bnDense));
    this.conv1x1 = this.registerModule('rbr_1x1', new Conv2d(cin, cout, 1, { stride, padding: 0, bias: false, dtype }));
    this.bn = this.registerModule('bn', new BatchNorm2d(cout, { dtype }));
    this.addPostSE(opts.postSE ?? false, dtype);
  }
  forward(x: Tensor): Tensor {
    let y = sum2(this.dense.forward(x), this.conv1x1.forward(x));
    if (this.info.identity) {
      const z = y.add(x);
      y.dispose();
      y = z;
    }
    const r = this.bn.forwardRelu(y);
    y.dispose();
    return this.finishActivated(r);
  }

  /**
   * QARepVGG's custom L2 (the official QARepVGGBlockV2.get_custom_L2), to use INSTEAD of weight decay on
   * `rbr_dense.conv.weight` and `rbr_1x1.weight`: with t3 = gamma / sqrt(var + eps) of `rbr_dense.bn`
   * (a constant), the off-centre 3x3 taps of K3 * t3 get plain L2 and the equivalent centre
   * K3[:, :, 1, 1] * t3 + K1 (+ the identity) gets L2 as a whole. Training adds wd / 2 times the sum.
   */
  customL2(): Tensor {
    const bn = this.bnDense;
    const t3 = torch.noGrad(() => bn.weight!.div(bn.runningVar!.add(bn.eps).sqrt()).view([-1, 1, 1, 1]));
    const k3 = this.conv3x3.weight;
    const scaled = k3.mul(t3);
    const circle = scaled.square().sum().sub(scaled.narrow(2, 1, 1).narrow(3, 1, 1).square().sum());
    let centre = k3.narrow(2, 1, 1).narrow(3, 1, 1).mul(t3).add(this.conv1x1.weight);
    if (this.info.identity) {
      const c = this.info.outChannels;
      centre = centre.add(torch.eye(c, { dtype: k3.dtype as torch.DType }).view([c, c, 1, 1]));
    }
    return centre.square().sum().add(circle);
  }
}

/** The kernels QARepVGG's custom L2 replaces weight decay on. */
export const isQARepVGGL2Kernel = (name: string): boolean => name.endsWith('.rbr_dense.conv.weight') || name.endsWith('.rbr_1x1.weight');

export type VGGBlock = TargetBlock | LinearAddBlock | RepVGGBlock | QARepVGGBlock;

// ------------------------------------------------------------------ the net

export class RepOptVGG extends Module implements Reparameterizable {
  readonly mode: RepOptVGGMode;
  readonly config: RepOptVGGConfig;
  readonly numClasses: number;
  /** Every block in model order (stem first). */
  readonly blocks: VGGBlock[];
  readonly layout: VGGBlockInfo[];
  readonly stage0: VGGBlock;
  readonly stages: Sequential[];
  readonly linear: Linear;

  constructor(cfg: RepOptVGGConfig & RepOptVGGOptions) {
    super();
    const mode = cfg.mode ?? 'target';
    if (!REPOPT_VGG_MODES.includes(mode)) throw new Error(`RepOptVGG: unknown mode '${mode}' (modes: ${REPOPT_VGG_MODES.join(', ')})`);
    this.mode = mode;
    this.config = { numBlocks: [...cfg.numBlocks], widthMultiplier: [...cfg.widthMultiplier] };
    this.numClasses = cfg.numClasses ?? 1000;
    const dtype = cfg.dtype ?? 'float32';
    this.layout = vggBlockLayout(cfg, cfg);
    const make = (info: VGGBlockInfo): VGGBlock => {
      const o = { postSE: cfg.postSE ?? false, dtype };
      if (mode === 'target') return new TargetBlock(info, o);
      if (mode === 'repvgg') return new RepVGGBlock(info, o);
      if (mode === 'qarepvgg') return new QARepVGGBlock(info, o);
      return new LinearAddBlock(info, { ...o, csla: mode === 'csla' });
    };
    this.blocks = this.layout.map(make);
    this.stage0 = this.registerModule('stage0', this.blocks[0]);
    this.stages = [1, 2, 3, 4].map((s) => {
      const members = this.blocks.filter((b) => b.info.name.startsWith(`stage${s}.`));
      return this.registerModule(`stage${s}`, new Sequential(...members));
    });
    const last = this.layout[this.layout.length - 1].outChannels;
    this.linear = this.registerModule('linear', new Linear(last, this.numClasses, { dtype }));
  }

  /**
   * Each block's output is released once the next block has consumed it (as Python drops it):
   * autograd keeps what backward needs by its own reference and frees it as backward passes, so
   * the step's peak memory falls during backward instead of holding every activation until the
   * step's torch.tidy ends. Values and gradients are unchanged.
   */
  forward(x: Tensor): Tensor {
    let y = this.stage0.forward(x);
    for (const s of this.stages) {
      for (const block of s.layers) {
        const next = block.forward(y);
        if (next !== y) y.dispose();
        y = next;
      }
    }
    const pooled = F.adaptiveAvgPool2d(y, 1);
    y.dispose();
    const flat = pooled.flatten(1);
    pooled.dispose();
    const logits = this.linear.forward(flat);
    flat.dispose();
    return logits;
  }

  /** The deployed network (`DeployVGG`, one conv3x3 + bias per block), in any mode; this model is unchanged. */
  reparameterize(): DeployVGG {
    return deployVGG(this);
  }
}

/** A named variant: `repOptVgg('B1', { mode: 'hs', numClasses: 100 })`. */
export function repOptVgg(name: RepOptVGGName, opts: RepOptVGGOptions = {}): RepOptVGG {
  return new RepOptVGG({ ...REPOPT_VGG_CONFIGS[name], ...opts });
}

/** The config of a registered arch name (`RepOpt-VGG-B1`), or undefined if it is not a RepOpt-VGG. */
export function repOptVggConfig(arch: string): RepOptVGGConfig | undefined {
  if (!arch.startsWith(REPOPT_VGG_PREFIX)) return undefined;
  return (REPOPT_VGG_CONFIGS as Record<string, RepOptVGGConfig>)[arch.slice(REPOPT_VGG_PREFIX.length)];
}

/**
 * The searched scales of an `hs` (or `csla`) model, by key, in model order
 * (per block: scale_conv, scale_1x1, scale_identity where it exists). Copies.
 */
export function extractVggScales(model: RepOptVGG): Map<string, Tensor> {
  if (model.mode !== 'hs' && model.mode !== 'csla') throw new Error(`extract scales: the model is in '${model.mode}' mode; scales live in 'hs' / 'csla' models`);
  return extractScales(model);
}

function asVggOptions(o: CreateModelOptions): RepOptVGGOptions {
  return { ...o, mode: o.mode as RepOptVGGMode | undefined };
}

/** The named architectures (`RepOpt-VGG-A0` ... `-L2`); the family registers them (families.ts). */
export const repOptVggArchs = (): ArchInfo[] =>
  Object.entries(REPOPT_VGG_CONFIGS).map(([name, cfg]) => ({
    name: REPOPT_VGG_PREFIX + name,
    family: 'RepOpt-VGG',
    modes: [...REPOPT_VGG_MODES],
    ...vggTargetStats(cfg),
    create: (o: CreateModelOptions = {}) => new RepOptVGG({ ...cfg, ...asVggOptions(o) }),
  }));
