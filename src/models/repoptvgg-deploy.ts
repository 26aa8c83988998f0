/**
 * Deployment: every trained RepOpt-VGG block becomes one 3x3 conv with bias, followed by ReLU.
 *
 * - `target` (RepOptimizer):  conv3x3 -> BN            fold BN into the conv.
 * - `repvgg` (baseline):      BN(conv3x3) + BN(conv1x1) [+ BN(identity)]
 *                             fold each BN into its branch, pad the 1x1 kernel to the 3x3 centre, write the
 *                             identity as a 3x3 kernel with 1 at [c, c, 1, 1], and add kernels and biases.
 * - `hs` / `csla`:            s*conv3x3 + t*conv1x1 [+ id*x] -> BN   merge the scaled branches, then fold BN
 *                             (the generic CslaBlock.fusedKernel, src/repopt/block.ts).
 *
 * Batch norm in eval mode is y = gamma * (x - mean) / sqrt(var + eps) + beta, so a conv W followed by it is
 * the conv W * gamma/std (per output channel) with bias beta - mean * gamma/std. Fusion is done in float64
 * and the result cast to the model's dtype, so the deployed net matches the trained one in eval mode up to
 * float32 rounding of the convolutions.
 *
 * The deployed network (`DeployVGG`), state-dict keys:
 *   stage0.conv.weight [C0, Cin, 3, 3]     stage0.conv.bias [C0]         (the stem, stride strides[0])
 *   stageS.I.conv.weight [C, C', 3, 3]     stageS.I.conv.bias [C]        (S = 1..4, I = block in stage)
 *   stageS.I.post_se.{down,up}.{weight,bias}                           (only with post-SE)
 *   linear.weight [classes, C], linear.bias [classes]
 * Each block is conv3x3 (padding 1, its stride) + bias -> ReLU [-> SE]; the head is global average
 * pooling and `linear`, as in the trained model.
 */
import * as torch from '../torch/index.js';
import { F, type Tensor } from '../torch/index.js';
import { Conv2d, Linear, Module, Sequential } from '../nn/index.js';
import type { GraphOps as GraphBuilder, GraphExportable, GraphValue } from '../nn/graph-types.js';
import {
  RepOptVGG,
  RepVGGBlock,
  QARepVGGBlock,
  SEBlock,
  VGGCslaBlock,
  type VGGBlock,
  type VGGBlockInfo,
} from './repoptvgg.js';
import { bnAffine, foldBN, identityKernel, padTo3x3 } from '../repopt/fold.js';

export { foldBN, identityKernel, padTo3x3 };

/** One deployed block: conv3x3 with bias -> ReLU [-> post-SE]. */
export class DeployBlock extends Module implements GraphExportable {
  readonly conv: Conv2d;
  readonly postSE: SEBlock | null;
  constructor(readonly info: VGGBlockInfo, opts: { postSE?: boolean; dtype?: torch.DType } = {}) {
    super();
    const dtype = opts.dtype ?? 'float32';
    this.conv = this.registerModule('conv', new Conv2d(info.inChannels, info.outChannels, 3, { stride: info.stride, padding: 1, bias: true, dtype }));
    this.postSE = opts.postSE ? this.registerModule('post_se', new SEBlock(info.outChannels, Math.trunc(info.outChannels / 4), dtype)) : null;
  }
  forward(x: Tensor): Tensor {
    const r = F.relu(this.conv.forward(x));
    return this.postSE ? this.postSE.forward(r) : r;
  }
  /** The block's output value is named after the block (its activation-quantization site). */
  exportGraph(g: GraphBuilder, x: GraphValue): GraphValue {
    const se = this.postSE;
    const r = g.relu(g.module(this.conv, x, 'conv'), se ? 'relu' : '');
    if (!se) return r;
    const s = g.relu(g.conv(se.down, g.globalAvgPool(r, 'post_se.pool'), 'post_se.down'), 'post_se.relu');
    return g.mul(r, g.sigmoid(g.conv(se.up, s, 'post_se.up'), 'post_se.gate'), '');
  }
}

export interface DeployVGGOptions {
  layout: VGGBlockInfo[];
  numClasses: number;
  postSE?: boolean;
  dtype?: torch.DType;
}

/** The plain inference network: deployed blocks in stages `stage0..stage4`, global average pool, `linear`. */
export class DeployVGG extends Module implements GraphExportable {
  readonly layout: VGGBlockInfo[];
  readonly numClasses: number;
  readonly blocks: DeployBlock[];
  readonly stage0: DeployBlock;
  readonly stages: Sequential[];
  readonly linear: Linear;
  constructor(o: DeployVGGOptions) {
    super();
    if (!o.layout.length || o.layout[0].name !== 'stage0') throw new Error('DeployVGG: the layout must start with the stem block stage0');
    this.layout = o.layout.map((b) => ({ ...b }));
    this.numClasses = o.numClasses;
    this.blocks = this.layout.map((info) => new DeployBlock(info, { postSE: o.postSE, dtype: o.dtype }));
    this.stage0 = this.registerModule('stage0', this.blocks[0]);
    this.stages = [1, 2, 3, 4].map((s) =>
      this.registerModule(`stage${s}`, new Sequential(...this.blocks.filter((b) => b.info.name.startsWith(`stage${s}.`)))),
    );
    const last = this.layout[this.layout.length - 1].outChannels;
    this.linear = this.registerModule('linear', new Linear(last, o.numClasses, { dtype: o.dtype }));
  }
  /** Pooled features [N, C] before the classifier. */
  features(x: Tensor): Tensor {
    let y = this.stage0.forward(x);
    for (const s of this.stages) y = s.forward(y);
    return F.adaptiveAvgPool2d(y, 1).flatten(1);
  }
  forward(x: Tensor): Tensor {
    return this.linear.forward(this.features(x));
  }
  exportGraph(g: GraphBuilder, x: GraphValue): GraphValue {
    let y = g.module(this.stage0, x, 'stage0');
    this.stages.forEach((s, i) => (y = g.module(s, y, `stage${i + 1}`)));
    return g.module(this.linear, g.flatten(g.globalAvgPool(y, 'pool.global'), 'pool'), 'linear');
  }
}

/** The fused 3x3 kernel and bias of one trained block (float64), in eval-mode semantics. */
export function fuseBlock(block: VGGBlock): { weight: Tensor; bias: Tensor } {
  return torch.noGrad(() =>
    torch.tidy(() => {
      // target / hs / csla: the generic CSLA block's fused kernel (scaled branches summed), then BN folded.
      if (block instanceof VGGCslaBlock) return foldBN(block.fusedKernel(), block.bn);
      if (block instanceof RepVGGBlock) {
        const a = foldBN(block.conv3x3.weight, block.bn3x3);
        const b = foldBN(padTo3x3(block.conv1x1.weight), block.bn1x1);
        let weight = a.weight.add(b.weight);
        let bias = a.bias.add(b.bias);
        if (block.bnIdentity) {
          const c = foldBN(identityKernel(block.info.outChannels), block.bnIdentity);
          weight = weight.add(c.weight);
          bias = bias.add(c.bias);
        }
        return { weight, bias };
      }
      if (block instanceof QARepVGGBlock) {
        // rbr_dense with its BN folded, the bare 1x1 at the centre, the identity; then the BN after the sum:
        // bn(W x + b) = (W * mul) x + (b * mul + add)
        const dense = foldBN(block.conv3x3.weight, block.bnDense);
        let k = dense.weight.add(padTo3x3(block.conv1x1.weight.double()));
        if (block.info.identity) k = k.add(identityKernel(block.info.outChannels));
        const { mul, add } = bnAffine(block.bn);
        return { weight: k.mul(mul.view([-1, 1, 1, 1])), bias: dense.bias.mul(mul).add(add) };
      }
      throw new Error(`fuse: unknown block type ${(block as object).constructor.name}`);
    }),
  );
}

/** The deployed form of one trained block (any mode): a new DeployBlock in eval mode, with the block's dtype. */
export function deployBlock(block: VGGBlock): DeployBlock {
  const dtype = block.parameters()[0].dtype as torch.DType;
  const out = new DeployBlock(block.info, { postSE: block.postSE !== null, dtype });
  try {
    torch.noGrad(() =>
      torch.tidy(() => {
        const { weight, bias } = fuseBlock(block);
        const sd = new Map<string, Tensor>([['conv.weight', weight.to(dtype)], ['conv.bias', bias.to(dtype)]]);
        if (block.postSE) for (const [k, t] of block.postSE.stateDict()) sd.set(`post_se.${k}`, t);
        out.loadStateDict(sd);
      }),
    );
  } catch (e) {
    out.dispose();
    throw e;
  }
  return out.eval();
}

/**
 * The deployed network of a trained RepOpt-VGG (any mode). The trained model is not changed; the result
 * is a new module in eval mode, with the trained model's dtype.
 */
export function deployVGG(model: RepOptVGG): DeployVGG {
  const dtype = model.linear.weight.dtype;
  const postSE = model.blocks.some((b) => b.postSE !== null);
  const out = new DeployVGG({ layout: model.layout, numClasses: model.numClasses, postSE, dtype });
  try {
    const sd = new Map<string, Tensor>();
    torch.noGrad(() =>
      torch.tidy(() => {
        model.blocks.forEach((b, i) => {
          const { weight, bias } = fuseBlock(b);
          const p = out.blocks[i].info.name;
          sd.set(`${p}.conv.weight`, weight.to(dtype));
          sd.set(`${p}.conv.bias`, bias.to(dtype));
          if (b.postSE) for (const [k, t] of b.postSE.stateDict()) sd.set(`${p}.post_se.${k}`, t);
        });
        sd.set('linear.weight', model.linear.weight);
        if (model.linear.bias) sd.set('linear.bias', model.linear.bias);
        out.loadStateDict(sd);
      }),
    );
  } catch (e) {
    out.dispose();
    throw e;
  }
  return out.eval();
}

/** The mode a RepOpt-VGG state dict was trained in, from its keys; 'deploy' for a deployed one. */
export function modeOfStateDict(keys: Iterable<string>): 'target' | 'repvgg' | 'qarepvgg' | 'hs' | 'deploy' {
  const ks = new Set(keys);
  if (ks.has('stage0.conv_3x3.weight')) return 'repvgg';
  if (ks.has('stage0.rbr_dense.conv.weight')) return 'qarepvgg';
  if (ks.has('stage0.scale_conv.weight')) return 'hs';
  if (ks.has('stage0.conv.weight') && ks.has('stage0.bn.weight')) return 'target';
  if (ks.has('stage0.conv.weight') && ks.has('stage0.conv.bias')) return 'deploy';
  throw new Error('not a RepOpt-VGG state dict (no stage0.conv.weight, stage0.conv_3x3.weight or stage0.scale_conv.weight)');
}
