/**
 * RepOpt-MobileOne: MobileOne (Vasu et al., "MobileOne: An Improved One millisecond Mobile Backbone",
 * CVPR 2023) trained with a RepOptimizer. One file, one config table: the whole family is an
 * arrangement of generic CSLA blocks (src/repopt/block.ts) and ordinary layers, so scales, Grad Mults,
 * the Rule of Initialization, fusion, ONNX and INT8 come from the generic engine (csla-family.ts).
 *
 * Network (the official layout): `stage0` = a dense 3x3 block in -> min(64, 64*w0), stride 2; `stage1..4`
 * = pairs of a depthwise 3x3 block (groups = channels, stride 2 for the stage's first pair) and a pointwise
 * 1x1 block (-> the stage's width); blocks per stage 2, 8, 10, 1; global average pool; `linear`. Every
 * block is followed by ReLU (and, in S4, by squeeze-excitation in the last half of stage 3 and all of
 * stage 4). Branches of a block (k conv branches, as the paper's over-parameterization factor):
 *   depthwise 3x3: k 3x3 convs, a 1x1 conv, identity (stride 1);  pointwise 1x1: k 1x1 convs, identity (in == out).
 *
 * Modes: `target` (one conv + BN per block: what RepOptimizers train), `hs` (the branches with trainable
 * scales, one BN after the sum), `csla` (constant scales), and `mobileone`: MobileOne's own training
 * form, a BN per branch (structural re-parameterization), with the official keys per block:
 * `rbr_conv.K.conv.weight`, `rbr_conv.K.bn.*`, `rbr_scale.conv.weight`, `rbr_scale.bn.*`, `rbr_skip.*`.
 * Where ours differ from the official code: SE modules sit in the stage (`stageS.se.I.*`, official
 * `stageS.I.se.*`), and a fused block is a Conv2d at the block's name (`stageS.I.weight`, official
 * `stageS.I.reparam_conv.weight`).
 */
import * as torch from '../torch/index.js';
import { F, type DType, type Tensor } from '../torch/index.js';
import { BatchNorm2d, Conv2d, Linear, Module, type GraphExportable, type GraphOps, type GraphValue } from '../nn/index.js';
import { CslaBlock, type CslaMode } from '../repopt/block.js';
import type { CslaSpec } from '../repopt/csla.js';
import { bnAffine } from '../repopt/fold.js';
import type { Reparameterizable } from '../repopt/reparam.js';
import { defineModel } from './csla-family.js';

/** S0-S4 as the paper: stage width multipliers, conv branches k, squeeze-excitation. */
export const MOBILEONE_CONFIGS = {
  S0: { widths: [0.75, 1.0, 1.0, 2.0], k: 4, se: false },
  S1: { widths: [1.5, 1.5, 2.0, 2.5], k: 1, se: false },
  S2: { widths: [1.5, 2.0, 2.5, 4.0], k: 1, se: false },
  S3: { widths: [2.0, 2.5, 3.0, 4.0], k: 1, se: false },
  S4: { widths: [3.0, 3.5, 3.5, 4.0], k: 1, se: true },
} as const;
export type MobileOneVariant = keyof typeof MOBILEONE_CONFIGS;
export const MOBILEONE_BLOCKS = [2, 8, 10, 1] as const;
const BASE_WIDTHS = [64, 128, 256, 512];

export type MobileOneMode = CslaMode | 'mobileone';
export const MOBILEONE_MODES: readonly MobileOneMode[] = ['target', 'hs', 'csla', 'mobileone'];

export interface MobileOneConfig {
  widths: readonly number[];
  k: number;
  se: boolean;
  /** Blocks (depthwise + pointwise pairs) per stage; default 2, 8, 10, 1. */
  blocks?: readonly number[];
  inChannels: number;
  numClasses: number;
  mode: MobileOneMode;
  dtype?: DType;
}

/** One block of the layout: where it is and what it is. */
interface BlockInfo {
  cin: number;
  cout: number;
  kernel: 1 | 3;
  groups: number;
  stride: number;
  /** Conv branches of the block's own kernel. */
  k: number;
  se: boolean;
}

/** The CSLA description of a block: k convs of its kernel, a 1x1 conv when the kernel is 3x3, identity where it fits. */
export function mobileOneSpec(b: BlockInfo): CslaSpec {
  const identity = b.cin === b.cout && b.stride === 1;
  return {
    inChannels: b.cin,
    outChannels: b.cout,
    kernel: b.kernel,
    groups: b.groups,
    stride: b.stride,
    branches: [
      ...Array.from({ length: b.k }, () => ({ kind: 'conv' as const, kernel: b.kernel, scale: 1 })),
      ...(b.kernel > 1 ? [{ kind: 'conv' as const, kernel: 1, scale: 1 }] : []),
      ...(identity ? [{ kind: 'identity' as const }] : []),
    ],
  };
}

/** Named children without a forward of their own (PyTorch's ModuleList / a plain nn.Module holder). */
class Children extends Module {
  add<M extends Module>(name: string, m: M): M {
    return this.registerModule(name, m);
  }
  forward(): Tensor {
    throw new Error('a container of modules has no forward of its own');
  }
}

/**
 * MobileOne's own training block (structural re-parameterization): a BN on every branch,
 * sum = rbr_skip(x) + rbr_scale(x) + sum_K rbr_conv.K(x). Fuses to one conv with bias.
 */
export class MobileOneBlock extends Module implements Reparameterizable {
  readonly rbrConv: { conv: Conv2d; bn: BatchNorm2d }[];
  readonly rbrScale: { conv: Conv2d; bn: BatchNorm2d } | null;
  readonly rbrSkip: BatchNorm2d | null;
  constructor(readonly info: BlockInfo, dtype: DType = 'float32') {
    super();
    const b = info;
    const convBn = (kernel: number) => {
      const m = new Children();
      const conv = m.add('conv', new Conv2d(b.cin, b.cout, kernel, { stride: b.stride, padding: (kernel - 1) / 2, groups: b.groups, bias: false, dtype }));
      const bn = m.add('bn', new BatchNorm2d(b.cout, { dtype }));
      return { m, conv, bn };
    };
    this.rbrSkip = b.cin === b.cout && b.stride === 1 ? this.registerModule('rbr_skip', new BatchNorm2d(b.cin, { dtype })) : null;
    const list = this.registerModule('rbr_conv', new Children());
    this.rbrConv = Array.from({ length: b.k }, (_, i) => {
      const c = convBn(b.kernel);
      list.add(String(i), c.m);
      return { conv: c.conv, bn: c.bn };
    });
    if (b.kernel > 1) {
      const c = convBn(1);
      this.registerModule('rbr_scale', c.m);
      this.rbrScale = { conv: c.conv, bn: c.bn };
    } else {
      this.rbrScale = null;
    }
  }
  forward(x: Tensor): Tensor {
    let y: Tensor | null = this.rbrSkip ? this.rbrSkip.forward(x) : null;
    const add = (t: Tensor) => (y = y ? y.add(t) : t);
    if (this.rbrScale) add(this.rbrScale.bn.forward(this.rbrScale.conv.forward(x)));
    for (const c of this.rbrConv) add(c.bn.forward(c.conv.forward(x)));
    return y!;
  }
  /** One conv with bias: every branch's BN folded, the 1x1 and the skip written at the centre tap (float64). */
  reparameterize(): Conv2d {
    const b = this.info;
    const dtype = this.parameters()[0].dtype as DType;
    const out = new Conv2d(b.cin, b.cout, b.kernel, { stride: b.stride, padding: (b.kernel - 1) / 2, groups: b.groups, bias: true, dtype });
    torch.noGrad(() =>
      torch.tidy(() => {
        const pad = (b.kernel - 1) / 2;
        let w = torch.zeros([b.cout, b.cin / b.groups, b.kernel, b.kernel], { dtype: 'float64' });
        let bias = torch.zeros([b.cout], { dtype: 'float64' });
        const fold = (kernel: Tensor, bn: BatchNorm2d) => {
          const { mul, add } = bnAffine(bn);
          const k = kernel.double().mul(mul.view([-1, 1, 1, 1]));
          const kp = k.shape[2] === b.kernel ? k : torch.pad(k, [pad, pad, pad, pad]);
          w = w.add(kp);
          bias = bias.add(add);
        };
        for (const c of this.rbrConv) fold(c.conv.weight, c.bn);
        if (this.rbrScale) fold(this.rbrScale.conv.weight, this.rbrScale.bn);
        if (this.rbrSkip) {
          // The identity as a kernel: 1 at the centre where output channel c meets its own input channel.
          const perGroup = b.cin / b.groups;
          const id = new Float64Array(b.cout * perGroup);
          for (let c = 0; c < b.cout; c++) id[c * perGroup + (c % perGroup)] = 1;
          fold(torch.pad(torch.fromTypedArray(id, [b.cout, perGroup, 1, 1], 'float64'), [pad, pad, pad, pad]), this.rbrSkip);
        }
        out.weight.copy_(w);
        out.bias!.copy_(bias);
      }),
    );
    return out.eval();
  }
}

/** Squeeze-excitation as the official MobileOne SEBlock: `reduce` (C -> C/16) and `expand` 1x1 convs with bias. */
export class MobileOneSE extends Module implements GraphExportable {
  readonly reduce: Conv2d;
  readonly expand: Conv2d;
  constructor(channels: number, dtype: DType = 'float32') {
    super();
    const r = Math.max(1, Math.trunc(channels * 0.0625));
    this.reduce = this.registerModule('reduce', new Conv2d(channels, r, 1, { bias: true, dtype }));
    this.expand = this.registerModule('expand', new Conv2d(r, channels, 1, { bias: true, dtype }));
  }
  forward(x: Tensor): Tensor {
    return x.mul(this.expand.forward(F.relu(this.reduce.forward(F.adaptiveAvgPool2d(x, 1)))).sigmoid());
  }
  exportGraph(g: GraphOps, x: GraphValue): GraphValue {
    const s = g.sigmoid(g.module(this.expand, g.relu(g.module(this.reduce, g.globalAvgPool(x), 'reduce')), 'expand'));
    return g.mul(x, s);
  }
}

/** A stage: blocks `0`, `1`, ... (depthwise, pointwise, ...), each followed by [SE ->] ReLU; SE modules under `se.I`. */
export class MobileOneStage extends Module implements GraphExportable {
  readonly blocks: Module[];
  readonly se: (MobileOneSE | null)[];
  constructor(blocks: Module[], se: (MobileOneSE | null)[]) {
    super();
    this.blocks = blocks.map((b, i) => this.registerModule(String(i), b));
    const holder = se.some(Boolean) ? this.registerModule('se', new Children()) : null;
    this.se = se.map((s, i) => (s && holder ? holder.add(String(i), s) : null));
  }
  forward(x: Tensor): Tensor {
    let y = x;
    for (let i = 0; i < this.blocks.length; i++) {
      y = this.blocks[i].forward(y);
      const se = this.se[i];
      if (se) y = se.forward(y);
      y = F.relu(y);
    }
    return y;
  }
  exportGraph(g: GraphOps, x: GraphValue): GraphValue {
    let y = x;
    this.blocks.forEach((b, i) => {
      y = g.module(b, y, String(i));
      const se = this.se[i];
      if (se) y = g.module(se, y, `se.${i}`);
      y = g.relu(y, `${i}.relu`);
    });
    return y;
  }
}

/** The block layout of a configuration, stage by stage (stage 0 first: the stem). */
export function mobileOneLayout(c: Pick<MobileOneConfig, 'widths' | 'k' | 'se' | 'blocks' | 'inChannels'>): BlockInfo[][] {
  const blocks = c.blocks ?? MOBILEONE_BLOCKS;
  if (c.widths.length !== 4 || blocks.length !== 4) throw new Error('MobileOne: widths and blocks need 4 values (stages 1-4)');
  let planes = Math.min(64, Math.trunc(64 * c.widths[0]));
  // The stem has one conv branch (the official default) and the 1x1 branch.
  const stages: BlockInfo[][] = [[{ cin: c.inChannels, cout: planes, kernel: 3, groups: 1, stride: 2, k: 1, se: false }]];
  for (let s = 0; s < 4; s++) {
    const width = Math.trunc(BASE_WIDTHS[s] * c.widths[s]);
    const n = blocks[s];
    const seBlocks = !c.se ? 0 : s === 2 ? Math.trunc(n / 2) : s === 3 ? n : 0;
    const stage: BlockInfo[] = [];
    for (let i = 0; i < n; i++) {
      const se = i >= n - seBlocks;
      stage.push({ cin: planes, cout: planes, kernel: 3, groups: planes, stride: i === 0 ? 2 : 1, k: c.k, se });
      stage.push({ cin: planes, cout: width, kernel: 1, groups: 1, stride: 1, k: c.k, se });
      planes = width;
    }
    stages.push(stage);
  }
  return stages;
}

/** RepOpt-MobileOne in one of its modes (see the file comment). */
export class MobileOne extends Module implements GraphExportable {
  readonly stages: MobileOneStage[];
  readonly linear: Linear;
  constructor(readonly config: MobileOneConfig) {
    super();
    const dtype = config.dtype ?? 'float32';
    const { mode } = config;
    if (!MOBILEONE_MODES.includes(mode)) throw new Error(`MobileOne: unknown mode '${mode}' (modes: ${MOBILEONE_MODES.join(', ')})`);
    const layout = mobileOneLayout(config);
    const block = (b: BlockInfo): Module => (mode === 'mobileone' ? new MobileOneBlock(b, dtype) : new CslaBlock(mobileOneSpec(b), { mode, dtype }));
    this.stages = layout.map((stage, s) =>
      this.registerModule(`stage${s}`, new MobileOneStage(stage.map(block), stage.map((b) => (b.se ? new MobileOneSE(b.cout, dtype) : null)))),
    );
    const last = layout[4].at(-1)!.cout;
    this.linear = this.registerModule('linear', new Linear(last, config.numClasses, { dtype }));
  }
  forward(x: Tensor): Tensor {
    let y = x;
    for (const s of this.stages) y = s.forward(y);
    return this.linear.forward(F.adaptiveAvgPool2d(y, 1).flatten(1));
  }
  exportGraph(g: GraphOps, x: GraphValue): GraphValue {
    let y = x;
    this.stages.forEach((s, i) => (y = g.module(s, y, `stage${i}`)));
    return g.module(this.linear, g.flatten(g.globalAvgPool(y, 'gap')), 'linear');
  }
}

/** Parameters and multiply-accumulates of the deployed network (one conv with bias per block, SE, linear). */
export function mobileOneStats(variant: MobileOneVariant, opts: { numClasses?: number; inChannels?: number; resolution?: number } = {}): { params: number; macs: number } {
  const cfg = MOBILEONE_CONFIGS[variant];
  const numClasses = opts.numClasses ?? 1000;
  let size = opts.resolution ?? 224;
  let params = 0;
  let macs = 0;
  const layout = mobileOneLayout({ ...cfg, inChannels: opts.inChannels ?? 3 });
  for (const stage of layout) {
    for (const b of stage) {
      size = Math.ceil(size / b.stride);
      const w = b.cout * (b.cin / b.groups) * b.kernel * b.kernel;
      params += w + b.cout;
      macs += w * size * size;
      if (b.se) {
        const r = Math.max(1, Math.trunc(b.cout * 0.0625));
        params += 2 * r * b.cout + r + b.cout;
        macs += 2 * r * b.cout;
      }
    }
  }
  const last = layout[4].at(-1)!.cout;
  return { params: params + last * numClasses + numClasses, macs: macs + last * numClasses };
}

export const MOBILEONE_PREFIX = 'RepOpt-MobileOne-';

const variantOf = (arch: string | undefined): MobileOneVariant | undefined => {
  const v = arch?.startsWith(MOBILEONE_PREFIX) ? arch.slice(MOBILEONE_PREFIX.length) : undefined;
  return v !== undefined && v in MOBILEONE_CONFIGS ? (v as MobileOneVariant) : undefined;
};

export const repOptMobileOneFamily = defineModel({
  name: 'RepOpt-MobileOne',
  archs: Object.keys(MOBILEONE_CONFIGS).map((v) => MOBILEONE_PREFIX + v),
  build: (mode, o) => {
    const variant = variantOf(o.arch);
    if (!variant) throw new Error(`'${o.arch}' is not a RepOpt-MobileOne architecture (${Object.keys(MOBILEONE_CONFIGS).map((v) => MOBILEONE_PREFIX + v).join(', ')})`);
    return new MobileOne({ ...MOBILEONE_CONFIGS[variant], mode: mode as MobileOneMode, inChannels: o.inChannels, numClasses: o.numClasses });
  },
  baselineMode: 'mobileone',
  label: (spec) => spec.arch ?? 'RepOpt-MobileOne',
  armNames: { mobileone: 'MobileOne', csla: 'RepOpt-MobileOne (csla twin)' },
  stats: (arch) => mobileOneStats(variantOf(arch)!),
});
