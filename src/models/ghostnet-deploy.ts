/**
 * RepOpt-GhostNet's deploy form: the plain inference network of a trained model in any mode (target, hs,
 * csla, rep), every BN folded into the conv before it (in float64, cast back to the model's dtype).
 *
 * Ghost module (`...ghostK`): `primary_conv.0` 1x1 conv with bias [-> ReLU for ghost1], then
 * `cheap_operation` one 3x3 depthwise conv with bias [-> ReLU], from the trained module's
 *   target:   final_bn(dw(x1))                          K = W,                       folded with final_bn
 *   hs, csla: final_bn(s * dw(x1) + f * x1)             K = s W + f at the centre,   folded with final_bn
 *   rep:      bn_c(dw(x1)) + fusion_bn(x1)              K = fold(W, bn_c) + fold(centre, fusion_bn)
 * Bottleneck: `conv_dw` (k x k depthwise, stride 2, bias: bn_dw folded), `se` as trained, `shortcut.0`
 * (depthwise k x k, bias) and `shortcut.1` (1x1, bias) when the shortcut is not the identity.
 * Net: `conv_stem` (bias: bn1 folded), ReLU, blocks, `blocks.9.0.conv` (bias, ReLU), global pooling,
 * `conv_head`, ReLU, `classifier`: the trained names with the BN keys gone and biases added.
 */
import * as torch from '../torch/index.js';
import { F, type DType, type Tensor } from '../torch/index.js';
import { BatchNorm2d, Conv2d, Linear, Module, ReLU, Sequential } from '../nn/index.js';
import { foldBN } from '../repopt/fold.js';
import type { GraphOps as GraphBuilder, GraphExportable, GraphValue } from '../nn/graph-types.js';
import { ConvBnAct, GHOSTNET_CFG, GhostBottleneck, GhostModule, SqueezeExcite, makeDivisible, type GhostNet } from './ghostnet.js';
import type { ScaleLayer } from './repoptvgg.js';

const HEAD_CHANNELS = 1280;

/** A deployed Ghost module: 1x1 conv + bias [-> ReLU], 3x3 depthwise conv + bias [-> ReLU]. */
export class DeployGhostModule extends Module implements GraphExportable {
  readonly primary_conv: Sequential;
  readonly cheap_operation: Conv2d;
  constructor(inp: number, readonly channels: number, readonly relu: boolean, dtype: DType = 'float32') {
    super();
    const c = channels;
    const conv = new Conv2d(inp, c, 1, { bias: true, dtype });
    this.primary_conv = this.registerModule('primary_conv', relu ? new Sequential(conv, new ReLU()) : new Sequential(conv));
    this.cheap_operation = this.registerModule('cheap_operation', new Conv2d(c, c, 3, { padding: 1, groups: c, bias: true, dtype }));
  }
  forward(x: Tensor): Tensor {
    const y = this.cheap_operation.forward(this.primary_conv.forward(x));
    return this.relu ? F.relu(y) : y;
  }
  exportGraph(g: GraphBuilder, x: GraphValue): GraphValue {
    const y = g.module(this.cheap_operation, g.module(this.primary_conv, x, 'primary_conv'), 'cheap_operation');
    return this.relu ? g.relu(y, '') : y;
  }
}

class DeployGhostBottleneck extends Module implements GraphExportable {
  readonly ghost1: DeployGhostModule;
  readonly conv_dw: Conv2d | null = null;
  readonly se: SqueezeExcite | null = null;
  readonly ghost2: DeployGhostModule;
  readonly shortcut: Sequential;
  constructor(inp: number, hidden: number, out: number, k: number, stride: number, se: number, dtype: DType) {
    super();
    this.ghost1 = this.registerModule('ghost1', new DeployGhostModule(inp, hidden, true, dtype));
    if (stride > 1) this.conv_dw = this.registerModule('conv_dw', new Conv2d(hidden, hidden, k, { stride, padding: (k - 1) / 2, groups: hidden, bias: true, dtype }));
    if (se > 0) this.se = this.registerModule('se', new SqueezeExcite(hidden, se, { dtype }));
    this.ghost2 = this.registerModule('ghost2', new DeployGhostModule(hidden, out, false, dtype));
    this.shortcut = this.registerModule(
      'shortcut',
      inp === out && stride === 1
        ? new Sequential()
        : new Sequential(
            new Conv2d(inp, inp, k, { stride, padding: (k - 1) / 2, groups: inp, bias: true, dtype }),
            new Conv2d(inp, out, 1, { bias: true, dtype }),
          ),
    );
  }
  forward(x: Tensor): Tensor {
    let y = this.ghost1.forward(x);
    if (this.conv_dw) y = this.conv_dw.forward(y);
    if (this.se) y = this.se.forward(y);
    return this.ghost2.forward(y).add(this.shortcut.forward(x));
  }
  exportGraph(g: GraphBuilder, x: GraphValue): GraphValue {
    let y = g.module(this.ghost1, x, 'ghost1');
    if (this.conv_dw) y = g.module(this.conv_dw, y, 'conv_dw');
    if (this.se) y = g.module(this.se, y, 'se');
    return g.add(g.module(this.ghost2, y, 'ghost2'), g.module(this.shortcut, x, 'shortcut'), '');
  }
}

class DeployConvAct extends Module implements GraphExportable {
  readonly conv: Conv2d;
  constructor(inp: number, out: number, dtype: DType) {
    super();
    this.conv = this.registerModule('conv', new Conv2d(inp, out, 1, { bias: true, dtype }));
  }
  forward(x: Tensor): Tensor {
    return F.relu(this.conv.forward(x));
  }
  exportGraph(g: GraphBuilder, x: GraphValue): GraphValue {
    return g.relu(g.module(this.conv, x, 'conv'), '');
  }
}

export interface DeployGhostNetOptions {
  width: number;
  numClasses?: number;
  inChannels?: number;
  dtype?: DType;
}

/** The deployed RepOpt-GhostNet (see the file comment); `deployGhostNet(model)` fills it from a trained one. */
export class DeployGhostNet extends Module implements GraphExportable {
  readonly conv_stem: Conv2d;
  readonly blocks: Sequential;
  readonly conv_head: Conv2d;
  readonly classifier: Linear;
  readonly width: number;
  readonly numClasses: number;
  constructor(o: DeployGhostNetOptions) {
    super();
    const w = (this.width = o.width);
    if (!(w > 0)) throw new Error(`DeployGhostNet: width must be positive, got ${w}`);
    this.numClasses = o.numClasses ?? 1000;
    const dtype = o.dtype ?? 'float32';
    let cin = makeDivisible(16 * w, 4);
    this.conv_stem = this.registerModule('conv_stem', new Conv2d(o.inChannels ?? 3, cin, 3, { stride: 2, padding: 1, bias: true, dtype }));
    const stages: Module[] = [];
    let lastHidden = 0;
    for (const group of GHOSTNET_CFG) {
      const blocks: Module[] = [];
      for (const [k, t, c, se, stride] of group) {
        const out = makeDivisible(c * w, 4);
        blocks.push(new DeployGhostBottleneck(cin, makeDivisible(t * w, 4), out, k, stride, se, dtype));
        cin = out;
        lastHidden = t;
      }
      stages.push(new Sequential(...blocks));
    }
    const last = makeDivisible(lastHidden * w * 2, 4);
    stages.push(new Sequential(new DeployConvAct(cin, last, dtype)));
    this.blocks = this.registerModule('blocks', new Sequential(...stages));
    this.conv_head = this.registerModule('conv_head', new Conv2d(last, HEAD_CHANNELS, 1, { dtype }));
    this.classifier = this.registerModule('classifier', new Linear(HEAD_CHANNELS, this.numClasses, { dtype }));
  }
  forward(x: Tensor): Tensor {
    const y = this.blocks.forward(F.relu(this.conv_stem.forward(x)));
    return this.classifier.forward(F.relu(this.conv_head.forward(F.adaptiveAvgPool2d(y, 1))).flatten(1));
  }
  exportGraph(g: GraphBuilder, x: GraphValue): GraphValue {
    const y = g.module(this.blocks, g.relu(g.module(this.conv_stem, x, 'conv_stem'), 'act1'), 'blocks');
    const h = g.relu(g.module(this.conv_head, g.globalAvgPool(y, 'global_pool'), 'conv_head'), 'act2');
    return g.module(this.classifier, g.flatten(h, 'flatten'), 'classifier');
  }
}

type Folded = { weight: Tensor; bias: Tensor };

/** The identity of a C-channel depthwise 3x3 conv: [C, 1, 3, 3], 1 at the centre (float64). */
function depthwiseCentre(channels: number): Tensor {
  return torch.pad(torch.ones([channels, 1, 1, 1], { dtype: 'float64' }), [1, 1, 1, 1]);
}

/** The fused primary conv and cheap op of a trained Ghost module (float64). */
function fuseGhostModule(m: GhostModule): { primary: Folded; cheap: Folded } {
  const [conv1, bn1] = m.primary_conv.layers as [Conv2d, BatchNorm2d];
  const primary = foldBN(conv1.weight, bn1);
  const after = m.cheap_after;
  const w = m.cheap_conv.weight.double();
  const col = (t: Tensor) => t.double().view([-1, 1, 1, 1]);
  let cheap: Folded;
  if (m.mode === 'rep') {
    const a = foldBN(w, after as BatchNorm2d);
    const b = foldBN(depthwiseCentre(m.channels), m.fusion_bn!);
    cheap = { weight: a.weight.add(b.weight), bias: a.bias.add(b.bias) };
  } else if (m.mode === 'target') {
    cheap = foldBN(w, m.final_bn!);
  } else {
    const k = w.mul(col((after as ScaleLayer).weight)).add(depthwiseCentre(m.channels).mul(col(m.fusion_scale!.weight)));
    cheap = foldBN(k, m.final_bn!);
  }
  return { primary, cheap };
}

function put(sd: Map<string, Tensor>, prefix: string, f: Folded, dtype: DType): void {
  sd.set(`${prefix}.weight`, f.weight.to(dtype));
  sd.set(`${prefix}.bias`, f.bias.to(dtype));
}

function ghostModuleEntries(sd: Map<string, Tensor>, prefix: string, m: GhostModule, dtype: DType): void {
  const { primary, cheap } = fuseGhostModule(m);
  put(sd, `${prefix}primary_conv.0`, primary, dtype);
  put(sd, `${prefix}cheap_operation`, cheap, dtype);
}

/** Loads `sd` into `out` (strict) inside the caller's scope; disposes `out` on failure. */
function fill<M extends Module>(out: M, build: (sd: Map<string, Tensor>) => void): M {
  try {
    torch.noGrad(() =>
      torch.tidy(() => {
        const sd = new Map<string, Tensor>();
        build(sd);
        out.loadStateDict(sd);
      }),
    );
  } catch (e) {
    out.dispose();
    throw e;
  }
  return out.eval();
}

/** The deploy form of one trained Ghost module (a new module, eval mode; `m` unchanged). */
export function deployGhostModule(m: GhostModule): DeployGhostModule {
  const conv1 = m.primary_conv.layers[0] as Conv2d;
  const dtype = conv1.weight.dtype as DType;
  const out = new DeployGhostModule(conv1.inChannels, m.channels, m.relu, dtype);
  return fill(out, (sd) => ghostModuleEntries(sd, '', m, dtype));
}

/**
 * The deployed network of a trained RepOpt-GhostNet (any mode): a new module in eval mode computing, in
 * eval mode, the trained model's function (up to float rounding); the trained model is unchanged.
 */
export function deployGhostNet(model: GhostNet): DeployGhostNet {
  const dtype = model.classifier.weight.dtype as DType;
  const out = new DeployGhostNet({ width: model.width, numClasses: model.numClasses, inChannels: model.conv_stem.inChannels, dtype });
  return fill(out, (sd) => {
    put(sd, 'conv_stem', foldBN(model.conv_stem.weight, model.bn1), dtype);
    model.blocks.layers.forEach((stage, s) =>
      (stage as Sequential).layers.forEach((b, i) => {
        const p = `blocks.${s}.${i}.`;
        if (b instanceof ConvBnAct) {
          put(sd, `${p}conv`, foldBN(b.conv.weight, b.bn1), dtype);
          return;
        }
        if (!(b instanceof GhostBottleneck)) throw new Error(`deployGhostNet: unexpected block ${b.constructor.name} at ${p}`);
        ghostModuleEntries(sd, `${p}ghost1.`, b.ghost1, dtype);
        ghostModuleEntries(sd, `${p}ghost2.`, b.ghost2, dtype);
        if (b.conv_dw) put(sd, `${p}conv_dw`, foldBN(b.conv_dw.weight, b.bn_dw!), dtype);
        if (b.se) for (const [k, t] of b.se.namedParameters()) sd.set(`${p}se.${k}`, t);
        const sc = b.shortcut.layers as Module[];
        if (sc.length) {
          put(sd, `${p}shortcut.0`, foldBN((sc[0] as Conv2d).weight, sc[1] as BatchNorm2d), dtype);
          put(sd, `${p}shortcut.1`, foldBN((sc[2] as Conv2d).weight, sc[3] as BatchNorm2d), dtype);
        }
      }),
    );
    for (const [k, t] of model.conv_head.namedParameters()) sd.set(`conv_head.${k}`, t);
    for (const [k, t] of model.classifier.namedParameters()) sd.set(`classifier.${k}`, t);
  });
}
