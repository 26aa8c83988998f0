/**
 * RepOpt-GhostNet: RepGhostNet's architecture (Chen et al. 2022, built on GhostNet, Han et al. 2020)
 * whose re-parameterised op, the 3x3 depthwise "cheap operation" of every Ghost module, is trained
 * with RepOptimizer instead of carrying a fusion branch.
 *
 * Architecture (RepGhostNet; widths rounded with make-divisible-by-4, PyTorch-style state-dict names)
 *   conv_stem 3x3/2 (3 -> md(16w)), bn1, act1 ReLU
 *   blocks.0 .. blocks.8: RepGhost bottlenecks, grouped as in the stage table below
 *   blocks.9.0: ConvBnAct 1x1 (`conv`, `bn1`, ReLU) -> md(2 * 480 * w)
 *   global average pool, conv_head 1x1 -> 1280 (with bias), act2 ReLU, dropout 0.2, classifier Linear
 * Stage table (k = depthwise kernel of the stride-2 conv and of the shortcut, t = hidden width
 * before scaling, c = output width before scaling, SE ratio, stride), grouped by `blocks.S`:
 *   S=0: [3, 8, 16, 0, 1]                                   (paper stage 1)
 *   S=1: [3, 24, 24, 0, 2]      S=2: [3, 36, 24, 0, 1]        (stage 2)
 *   S=3: [5, 36, 40, .25, 2]    S=4: [5, 60, 40, .25, 1]      (stage 3)
 *   S=5: [3, 120, 80, 0, 2]     S=6: [3,100,80,0,1] [3,120,80,0,1] [3,120,80,0,1]
 *                                    [3,240,112,.25,1] [3,336,112,.25,1]  (stage 4)
 *   S=7: [5, 336, 160, .25, 2]  S=8: [5,480,160,0,1] [5,480,160,.25,1] [5,480,160,0,1] [5,480,160,.25,1] (stage 5)
 * hidden = md(t*w), out = md(c*w); md(v) = max(4, floor(v + 2) / 4 * 4), +4 if that is below 0.9v.
 * For 0.5x this gives exactly the channel counts of the release's scale file
 * (ghost1/ghost2: 4/8, 12/12, 20/12, 20/20, 32/20, 60/40, 52,60,60/40, 120/56, 168/56, 168/80, 240/80).
 *
 * Bottleneck `blocks.S.I`: ghost1 (in -> hidden, ReLU); if stride 2: conv_dw (k x k depthwise,
 * stride 2) + bn_dw; if SE: se (avg pool, conv_reduce 1x1 to md(hidden/4) with bias, ReLU,
 * conv_expand with bias, x * hardsigmoid); ghost2 (hidden -> out, no ReLU); plus shortcut:
 * identity where in == out and stride 1, else `shortcut.0` depthwise k x k stride s, `.1` BN,
 * `.2` 1x1 conv, `.3` BN.
 *
 * Ghost module `...ghostK` (RepGhost's form: the cheap op maps the primary output to the same width
 * and is ADDED to it, no concatenation). Keys and forward are the release's (RepOptimizers,
 * repoptghostnet_model.py), so its `torch.save(model.state_dict())` files load strictly, in every mode:
 * `primary_conv.0` 1x1 conv, `.1` BN, `.2` ReLU (ghost1) or identity (ghost2), giving x1; then by mode
 *   - `target`: `final_bn(cheap_operation.0(x1))`, cheap_operation.0 the 3x3 depthwise conv (no bias),
 *     `cheap_operation.1` an identity (no keys). The plain model trained with RepOptimizer.
 *   - `hs` (Hyper-Search): `final_bn(cheap_operation.1(cheap_operation.0(x1)) + fusion_scale(x1))`, with
 *     `cheap_operation.1` and `fusion_scale` per-channel trainable scale layers (`.weight` [C], no bias).
 *   - `csla`: the keys and forward of hs, `cheap_operation.1.weight` frozen (held as a buffer: same key,
 *     not trained), `fusion_scale` still trainable; the CSLA block trained plainly, for equivalence checks.
 *   - `rep` (RepGhostNet baseline): `cheap_operation(x1) + fusion_bn(x1)`, `cheap_operation.1` a BN,
 *     `fusion_bn` a BN (not a Sequential), no `final_bn`.
 *   then ReLU for ghost1. Registration (and key) order: primary_conv, fusion branch, final_bn, cheap_operation.
 * The CSLA block is therefore `s (.) dwconv3x3(x1) + f (.) x1` (s: cheap_operation.1.weight constant,
 * f: the trainable identity), followed by `final_bn`; the target's kernel is W' = s W + diag(f) at the
 * centre (Grad Mult s^p everywhere, +1 at every centre; Init W *= s, W[c,0,1,1] += f_c).
 * In target/hs/csla form this part (cheap op, fusion branch, final BN) is the generic CslaBlock of
 * `ghostCslaSpec` (src/repopt/block.ts), registered onto the Ghost module (option `owner`) under the
 * naming map `GHOST_NAMES` (dotted names nest, BN `final_bn`, the release's registration order), so the
 * state dicts are unchanged key for key, in order, and the generic block functions see it as `...ghostK`.
 * Hyper-Search scale init (the release's): cheap_operation.1 = sqrt(2 / (n + 1)), fusion_scale = 1, where
 * ghost1 is module n = 2m - 1 and ghost2 n = 2m of the m-th bottleneck in a row that keeps width and
 * resolution (m resets to 1 at a stride-2 or width-changing bottleneck).
 * Weights use PyTorch's default layer inits (RepGhostNet adds none).
 */
import * as torch from '../torch/index.js';
import { F, type DType, type Tensor } from '../torch/index.js';
import { BatchNorm2d, Conv2d, Identity, Linear, Module, ReLU, Sequential, type StateDict } from '../nn/index.js';
import { loadPth, extractStateDict, type PyValue } from '../io/pth.js';
import { fuseKernel, type CslaSpec } from '../repopt/csla.js';
import { RepOptHandler, type ReparamSite } from '../repopt/handler.js';
import { CslaBlock, type CslaBlockNames, type CslaHost } from '../repopt/block.js';
import type { ArchInfo } from './registry.js';
import type { GraphOps as GraphBuilder, GraphExportable, GraphValue } from '../nn/graph-types.js';
import type { Reparameterizable } from '../repopt/reparam.js';
// A cycle by design, as RepOpt-VGG's: the deploy forms read these classes; only reparameterize() calls them.
import { deployGhostModule, deployGhostNet, type DeployGhostModule, type DeployGhostNet } from './ghostnet-deploy.js';
import { ScaleLayer } from './repoptvgg.js';

export type GhostNetMode = 'target' | 'hs' | 'csla' | 'rep';
export const GHOSTNET_MODES: readonly GhostNetMode[] = ['target', 'hs', 'csla', 'rep'];
export const GHOSTNET_WIDTHS = [0.5, 0.58, 0.8, 1.0, 1.11, 1.3, 1.5, 2.0] as const;

/** [kernel, hidden (expansion) width, output width, SE ratio, stride], before the width multiplier. */
type BlockCfg = readonly [number, number, number, number, number];

/** RepGhostNet's table, one inner list per `blocks.S`. */
export const GHOSTNET_CFG: readonly (readonly BlockCfg[])[] = [
  [[3, 8, 16, 0, 1]],
  [[3, 24, 24, 0, 2]],
  [[3, 36, 24, 0, 1]],
  [[5, 36, 40, 0.25, 2]],
  [[5, 60, 40, 0.25, 1]],
  [[3, 120, 80, 0, 2]],
  [
    [3, 100, 80, 0, 1],
    [3, 120, 80, 0, 1],
    [3, 120, 80, 0, 1],
    [3, 240, 112, 0.25, 1],
    [3, 336, 112, 0.25, 1],
  ],
  [[5, 336, 160, 0.25, 2]],
  [
    [5, 480, 160, 0, 1],
    [5, 480, 160, 0.25, 1],
    [5, 480, 160, 0, 1],
    [5, 480, 160, 0.25, 1],
  ],
];

const HEAD_CHANNELS = 1280;
const DROPOUT = 0.2;

/** Round to a multiple of `divisor` (at least `minValue`), never more than 10% down (TF/MobileNet rule). */
export function makeDivisible(v: number, divisor = 4, minValue = divisor): number {
  let n = Math.max(minValue, Math.floor((v + divisor / 2) / divisor) * divisor);
  if (n < 0.9 * v) n += divisor;
  return n;
}

interface LayerOpts {
  dtype: DType;
}

/**
 * The release's names of a Ghost module's CSLA block (keys under the module): the 3x3 depthwise kernel at
 * `cheap_operation.0`, its scale at `cheap_operation.1`, the identity's weight at `fusion_scale`, the BN
 * `final_bn`; registered after `primary_conv` in the release's order (fusion branch, final BN, cheap op).
 */
export const GHOST_NAMES: CslaBlockNames = {
  branches: [{ conv: 'cheap_operation.0', scale: 'cheap_operation.1' }, { scale: 'fusion_scale' }],
  conv: 'cheap_operation.0',
  bn: 'final_bn',
  order: ['fusion_scale', 'final_bn', 'cheap_operation'],
};

/**
 * A Ghost module in a training form (see the file comment). In target/hs/csla form its cheap operation,
 * fusion branch and final BN are the generic CslaBlock of {@link ghostCslaSpec} (`cslaBlock`), registered on
 * this module under {@link GHOST_NAMES} (so the generic extractScales, loadScales, repOptSites and
 * initializeFromTwin see it as block `...ghostK`); in rep form (RepGhostNet's structural re-parameterisation,
 * no CSLA block) `cheap_operation` is a Sequential (dw conv, BN) beside `fusion_bn`.
 */
export class GhostModule extends Module implements Reparameterizable, CslaHost {
  readonly primary_conv: Sequential;
  readonly cslaBlock: CslaBlock | null = null;
  readonly fusion_bn: BatchNorm2d | null = null;
  readonly fusion_scale: ScaleLayer | null = null;
  readonly final_bn: BatchNorm2d | null = null;
  /** The 3x3 depthwise conv (`cheap_operation.0`), every mode. */
  readonly cheap_conv: Conv2d;
  /** hs/csla: the cheap op's scale (`cheap_operation.1`); rep: its BN; target: null. */
  readonly cheap_after: ScaleLayer | BatchNorm2d | null = null;
  /** rep: the Sequential (dw conv, BN) at `cheap_operation`. */
  readonly #rep: Sequential | null = null;
  constructor(
    inp: number,
    readonly channels: number,
    readonly relu: boolean,
    readonly mode: GhostNetMode,
    scaleInit: number,
    o: LayerOpts,
  ) {
    super();
    const c = channels;
    const { dtype } = o;
    this.primary_conv = this.registerModule(
      'primary_conv',
      new Sequential(new Conv2d(inp, c, 1, { bias: false, dtype }), new BatchNorm2d(c, { dtype }), relu ? new ReLU() : new Identity()),
    );
    // Registration order is the release's (primary, fusion branch, final BN, cheap op): state dicts list
    // keys in that order, and so does the release's scale file.
    if (mode === 'rep') {
      this.fusion_bn = this.registerModule('fusion_bn', new BatchNorm2d(c, { dtype }));
      const bn = new BatchNorm2d(c, { dtype });
      this.cheap_conv = new Conv2d(c, c, 3, { padding: 1, groups: c, bias: false, dtype });
      this.cheap_after = bn;
      this.#rep = this.registerModule('cheap_operation', new Sequential(this.cheap_conv, bn));
      return;
    }
    // hs starts the cheap scale at the release's init; csla holds it as a constant buffer under the same
    // key, starting at 1 (the release loads it); the identity (fusion_scale) is trainable, starting at 1.
    const b = new CslaBlock(ghostCslaSpec(new Array<number>(c).fill(mode === 'hs' ? scaleInit : 1)), { mode, dtype, names: GHOST_NAMES, owner: this });
    this.cslaBlock = b;
    this.final_bn = b.bn;
    if (mode === 'target') {
      this.cheap_conv = b.conv!;
    } else {
      this.cheap_conv = b.branches[0].conv!;
      this.cheap_after = b.branches[0].scale;
      this.fusion_scale = b.branches[1].scale;
    }
  }
  forward(x: Tensor): Tensor {
    const x1 = this.primary_conv.forward(x);
    if (this.#rep) {
      const y = this.#rep.forward(x1).add(this.fusion_bn!.forward(x1));
      return this.relu ? F.relu(y) : y;
    }
    const y = this.cslaBlock!.linear(x1);
    return this.relu ? this.final_bn!.forwardRelu(y) : this.final_bn!.forward(y);
  }
  /** The deployed module: 1x1 conv + bias [-> ReLU], one 3x3 depthwise conv + bias [-> ReLU]; this one is unchanged. */
  reparameterize(): DeployGhostModule {
    return deployGhostModule(this);
  }
  override dispose(): void {
    super.dispose();
    this.cslaBlock?.dispose();
  }
}

/** Squeeze-excitation with a hard-sigmoid gate (the same in every form, deployed included). */
export class SqueezeExcite extends Module implements GraphExportable {
  readonly conv_reduce: Conv2d;
  readonly conv_expand: Conv2d;
  constructor(channels: number, ratio: number, o: LayerOpts) {
    super();
    const reduced = makeDivisible(channels * ratio, 4);
    this.conv_reduce = this.registerModule('conv_reduce', new Conv2d(channels, reduced, 1, { dtype: o.dtype }));
    this.conv_expand = this.registerModule('conv_expand', new Conv2d(reduced, channels, 1, { dtype: o.dtype }));
  }
  forward(x: Tensor): Tensor {
    const s = F.adaptiveAvgPool2d(x, 1);
    return x.mul(F.hardsigmoid(this.conv_expand.forward(F.relu(this.conv_reduce.forward(s)))));
  }
  exportGraph(g: GraphBuilder, x: GraphValue): GraphValue {
    const s = g.relu(g.module(this.conv_reduce, g.globalAvgPool(x, 'pool'), 'conv_reduce'), 'relu');
    return g.mul(x, g.hardsigmoid(g.module(this.conv_expand, s, 'conv_expand'), 'gate'), '');
  }
}

export class GhostBottleneck extends Module {
  readonly ghost1: GhostModule;
  readonly conv_dw: Conv2d | null = null;
  readonly bn_dw: BatchNorm2d | null = null;
  readonly se: SqueezeExcite | null = null;
  readonly ghost2: GhostModule;
  readonly shortcut: Sequential;
  constructor(inp: number, hidden: number, out: number, k: number, stride: number, se: number, mode: GhostNetMode, scaleInits: [number, number], o: LayerOpts) {
    super();
    const { dtype } = o;
    this.ghost1 = this.registerModule('ghost1', new GhostModule(inp, hidden, true, mode, scaleInits[0], o));
    if (stride > 1) {
      this.conv_dw = this.registerModule('conv_dw', new Conv2d(hidden, hidden, k, { stride, padding: (k - 1) / 2, groups: hidden, bias: false, dtype }));
      this.bn_dw = this.registerModule('bn_dw', new BatchNorm2d(hidden, { dtype }));
    }
    if (se > 0) this.se = this.registerModule('se', new SqueezeExcite(hidden, se, o));
    this.ghost2 = this.registerModule('ghost2', new GhostModule(hidden, out, false, mode, scaleInits[1], o));
    this.shortcut = this.registerModule(
      'shortcut',
      inp === out && stride === 1
        ? new Sequential()
        : new Sequential(
            new Conv2d(inp, inp, k, { stride, padding: (k - 1) / 2, groups: inp, bias: false, dtype }),
            new BatchNorm2d(inp, { dtype }),
            new Conv2d(inp, out, 1, { bias: false, dtype }),
            new BatchNorm2d(out, { dtype }),
          ),
    );
  }
  forward(x: Tensor): Tensor {
    let y = this.ghost1.forward(x);
    if (this.conv_dw) y = this.bn_dw!.forward(this.conv_dw.forward(y));
    if (this.se) y = this.se.forward(y);
    y = this.ghost2.forward(y);
    return y.add(this.shortcut.forward(x));
  }
}

export class ConvBnAct extends Module {
  readonly conv: Conv2d;
  readonly bn1: BatchNorm2d;
  constructor(inp: number, out: number, o: LayerOpts) {
    super();
    this.conv = this.registerModule('conv', new Conv2d(inp, out, 1, { bias: false, dtype: o.dtype }));
    this.bn1 = this.registerModule('bn1', new BatchNorm2d(out, { dtype: o.dtype }));
  }
  forward(x: Tensor): Tensor {
    return this.bn1.forwardRelu(this.conv.forward(x));
  }
}

export interface GhostNetOptions {
  width?: number;
  mode?: GhostNetMode;
  numClasses?: number;
  inChannels?: number;
  dtype?: DType;
}

/** One re-parameterised Ghost module: its name prefix and width. */
export interface GhostSite {
  /** e.g. `blocks.6.3.ghost1` */
  prefix: string;
  channels: number;
}

/** The Ghost modules of a width, in model order (no model built). */
export function ghostnetLayout(width: number): GhostSite[] {
  const out: GhostSite[] = [];
  GHOSTNET_CFG.forEach((group, s) =>
    group.forEach(([, t, c], i) => {
      out.push({ prefix: `blocks.${s}.${i}.ghost1`, channels: makeDivisible(t * width, 4) });
      out.push({ prefix: `blocks.${s}.${i}.ghost2`, channels: makeDivisible(c * width, 4) });
    }),
  );
  return out;
}

export class GhostNet extends Module implements Reparameterizable {
  readonly conv_stem: Conv2d;
  readonly bn1: BatchNorm2d;
  readonly blocks: Sequential;
  readonly conv_head: Conv2d;
  readonly classifier: Linear;
  readonly width: number;
  readonly mode: GhostNetMode;
  readonly numClasses: number;
  readonly #sites: GhostSite[];
  constructor(opts: GhostNetOptions = {}) {
    super();
    const w = (this.width = opts.width ?? 1.0);
    const mode = (this.mode = opts.mode ?? 'target');
    if (!GHOSTNET_MODES.includes(mode)) throw new Error(`GhostNet: unknown mode '${mode}' (modes: ${GHOSTNET_MODES.join(', ')})`);
    if (!(w > 0)) throw new Error(`GhostNet: width must be positive, got ${w}`);
    this.numClasses = opts.numClasses ?? 1000;
    const o: LayerOpts = { dtype: opts.dtype ?? 'float32' };
    let cin = makeDivisible(16 * w, 4);
    this.conv_stem = this.registerModule('conv_stem', new Conv2d(opts.inChannels ?? 3, cin, 3, { stride: 2, padding: 1, bias: false, dtype: o.dtype }));
    this.bn1 = this.registerModule('bn1', new BatchNorm2d(cin, { dtype: o.dtype }));
    this.#sites = ghostnetLayout(w);
    const stages: Module[] = [];
    // Hyper-Search init of the cheap scales (the release's rule): m counts the bottlenecks in a row that
    // keep width and resolution (stride 1, in == out), reset to 1 by any other; ghost1 is module n = 2m - 1,
    // ghost2 n = 2m, and the scale starts at sqrt(2 / (n + 1)).
    const init = (n: number) => Math.sqrt(2 / (n + 1));
    let run = 0;
    let lastHidden = 0;
    GHOSTNET_CFG.forEach((group) => {
      const blocks: Module[] = [];
      for (const [k, t, c, se, stride] of group) {
        const hidden = makeDivisible(t * w, 4);
        const out = makeDivisible(c * w, 4);
        run = stride === 1 && cin === out ? run + 1 : 1;
        blocks.push(new GhostBottleneck(cin, hidden, out, k, stride, se, mode, [init(2 * run - 1), init(2 * run)], o));
        cin = out;
        lastHidden = t;
      }
      stages.push(new Sequential(...blocks));
    });
    const last = makeDivisible(lastHidden * w * 2, 4);
    stages.push(new Sequential(new ConvBnAct(cin, last, o)));
    this.blocks = this.registerModule('blocks', new Sequential(...stages));
    this.conv_head = this.registerModule('conv_head', new Conv2d(last, HEAD_CHANNELS, 1, { dtype: o.dtype }));
    this.classifier = this.registerModule('classifier', new Linear(HEAD_CHANNELS, this.numClasses, { dtype: o.dtype }));
  }

  /** The Ghost modules (re-parameterised cheap operations), in model order. */
  ghostSites(): GhostSite[] {
    return this.#sites.map((s) => ({ ...s }));
  }

  /** The deployed network (every BN folded, each Ghost module's cheap op and fusion branch one depthwise conv); this model is unchanged. */
  reparameterize(): DeployGhostNet {
    return deployGhostNet(this);
  }

  forward(x: Tensor): Tensor {
    let y = this.bn1.forwardRelu(this.conv_stem.forward(x));
    y = this.blocks.forward(y);
    y = F.relu(this.conv_head.forward(F.adaptiveAvgPool2d(y, 1))).flatten(1);
    return this.classifier.forward(F.dropout(y, DROPOUT, this.training));
  }
}

/**
 * Multiply-accumulates of the deployed network (BN folded, elementwise ops and pooling not counted)
 * for a square input; convolutions and linear layers only.
 */
export function ghostnetMacs(width: number, opts: { inputSize?: number; numClasses?: number; inChannels?: number } = {}): number {
  const conv = (cin: number, cout: number, k: number, groups: number, hw: number) => (cout * (cin / groups) * k * k * hw * hw);
  const down = (hw: number, k: number, s: number) => Math.floor((hw + 2 * ((k - 1) / 2) - k) / s) + 1;
  let hw = down(opts.inputSize ?? 224, 3, 2);
  let cin = makeDivisible(16 * width, 4);
  let macs = conv(opts.inChannels ?? 3, cin, 3, 1, hw);
  let lastT = 0;
  for (const group of GHOSTNET_CFG) {
    for (const [k, t, c, se, s] of group) {
      const hidden = makeDivisible(t * width, 4);
      const out = makeDivisible(c * width, 4);
      macs += conv(cin, hidden, 1, 1, hw) + conv(hidden, hidden, 3, hidden, hw);
      const hw2 = s > 1 ? down(hw, k, s) : hw;
      if (s > 1) macs += conv(hidden, hidden, k, hidden, hw2);
      if (se > 0) macs += 2 * hidden * makeDivisible(hidden * se, 4);
      macs += conv(hidden, out, 1, 1, hw2) + conv(out, out, 3, out, hw2);
      if (!(cin === out && s === 1)) macs += conv(cin, cin, k, cin, hw2) + conv(cin, out, 1, 1, hw2);
      hw = hw2;
      cin = out;
      lastT = t;
    }
  }
  const last = makeDivisible(lastT * width * 2, 4);
  macs += conv(cin, last, 1, 1, hw) + last * HEAD_CHANNELS + HEAD_CHANNELS * (opts.numClasses ?? 1000);
  return macs;
}

// ---------------------------------------------------------------------------------------------
// Scales and the RepOptimizer handler

const FUSION = '.fusion_scale.weight';
const CHEAP = '.cheap_operation.1.weight';

/** Whether a state-dict key names a GhostNet scale (in an hs/csla model or a scale file). */
export function isGhostnetScaleKey(key: string): boolean {
  return /(^|\.)ghost[12]\.(fusion_scale\.weight|cheap_operation\.1\.weight)$/.test(key);
}

/** The scale keys a model (or width) needs, with their shapes, in model order. */
export function ghostnetScaleShapes(model: GhostNet | number): Map<string, number[]> {
  const out = new Map<string, number[]>();
  for (const { prefix, channels } of typeof model === 'number' ? ghostnetLayout(model) : model.ghostSites()) {
    out.set(prefix + FUSION, [channels]);
    out.set(prefix + CHEAP, [channels]);
  }
  return out;
}

function asMap(scales: Map<string, Tensor> | Record<string, Tensor>): Map<string, Tensor> {
  return scales instanceof Map ? scales : new Map(Object.entries(scales));
}

function naturalKey(prefix: string): number[] {
  return (prefix.match(/\d+/g) ?? []).map(Number);
}

function comparePrefixes(a: string, b: string): number {
  const x = naturalKey(a);
  const y = naturalKey(b);
  for (let i = 0; i < Math.min(x.length, y.length); i++) if (x[i] !== y[i]) return x[i] - y[i];
  return x.length - y.length || (a < b ? -1 : a > b ? 1 : 0);
}

/**
 * Picks the scales of `model`'s Ghost modules from a state dict by name (a scale file, or a whole
 * hs/csla checkpoint: other keys are ignored). Fails, naming every key, on missing scale keys,
 * scale keys the model has no module for, and shapes that differ from the model's.
 */
export function pickGhostnetScales(sd: Map<string, Tensor> | Record<string, Tensor>, model: GhostNet | number, label = 'scales'): Map<string, Tensor> {
  const width = typeof model === 'number' ? model : model.width;
  const src = asMap(sd);
  const want = ghostnetScaleShapes(model);
  const missing = [...want.keys()].filter((k) => !src.has(k));
  const unexpected = [...src.keys()].filter((k) => (k.endsWith(FUSION) || (k.endsWith(CHEAP) && src.has(k.slice(0, -CHEAP.length) + FUSION))) && !want.has(k));
  const misShaped = [...want].filter(([k, s]) => src.has(k) && src.get(k)!.shape.join() !== s.join()).map(([k, s]) => `${k} [${src.get(k)!.shape.join(', ')}] (model: [${s.join(', ')}])`);
  const problems: string[] = [];
  if (missing.length) problems.push(`missing scale keys: ${missing.join(', ')}`);
  if (unexpected.length) problems.push(`unexpected scale keys: ${unexpected.join(', ')}`);
  if (misShaped.length) problems.push(`mis-shaped scale keys: ${misShaped.join(', ')}`);
  if (problems.length) throw new Error(`${label}: does not fit ${ghostnetArchName(width)}: ${problems.join('; ')}`);
  return new Map([...want.keys()].map((k) => [k, src.get(k)!]));
}

/**
 * Loads the release's scale file (a flat dict, or `{"model": ...}`) for `model` by name; see
 * {@link pickGhostnetScales} for the checks. The returned tensors belong to the caller.
 */
export function loadGhostnetScales(source: string | Uint8Array | PyValue, model: GhostNet): Map<string, Tensor> {
  const label = typeof source === 'string' ? source : 'scale file';
  const value = typeof source === 'string' || source instanceof Uint8Array ? loadPth(source) : source;
  const sd = extractStateDict(value, label);
  const picked = pickGhostnetScales(sd, model, label);
  for (const [k, t] of sd) if (!picked.has(k)) t.dispose();
  return picked;
}

/** The searched scales of a trained hs (or csla) model, by name, in model order (detached copies). */
export function extractGhostnetScales(model: GhostNet): Map<string, Tensor> {
  if (model.mode !== 'hs' && model.mode !== 'csla') {
    throw new Error(`extractGhostnetScales: the model is in mode '${model.mode}'; scales live in an 'hs' or 'csla' model`);
  }
  const sd = model.stateDict();
  const out = new Map<string, Tensor>();
  for (const k of ghostnetScaleShapes(model).keys()) out.set(k, torch.keep(sd.get(k)!.clone()));
  for (const t of sd.values()) t.dispose();
  return out;
}

function scaleValues(t: Tensor, key: string): number[] {
  if (t.ndim !== 1) throw new Error(`scale '${key}' must be 1-d [C], got shape [${t.shape.join(', ')}]`);
  return t.toArray() as number[];
}

/** The CSLA block of one Ghost module: depthwise 3x3 target, 3x3 branch scaled by s, trainable identity. */
export function ghostCslaSpec(s: ArrayLike<number>): CslaSpec {
  const c = s.length;
  return {
    inChannels: c,
    outChannels: c,
    kernel: 3,
    groups: c,
    branches: [
      { kind: 'conv', kernel: 3, scale: s },
      { kind: 'identity', scale: 1, trainable: true },
    ],
  };
}

export interface GhostnetSiteOptions {
  /** Check the scales against this model's (or width's) Ghost modules and use its order. */
  model?: GhostNet;
  width?: number;
  /** Initial identity weight: the searched fusion scale (default, the release) or 1 (the paper's equation). */
  identityInit?: 'searched' | 'one';
}

/**
 * RepOptimizer sites of a GhostNet from its scales: one per Ghost module, param
 * `<prefix>.cheap_operation.0.weight`, spec {@link ghostCslaSpec}(cheap_operation.1.weight),
 * identityInit = fusion_scale.weight. Without a model or width, every key must be a fusion or cheap scale and
 * come in pairs of equal length (order: natural order of the names); with one, see {@link pickGhostnetScales}.
 */
export function ghostnetSites(scales: Map<string, Tensor> | Record<string, Tensor>, opts: GhostnetSiteOptions = {}): ReparamSite[] {
  let src = asMap(scales);
  let prefixes: string[];
  const shape = opts.model ?? opts.width;
  if (shape !== undefined) {
    src = pickGhostnetScales(src, shape);
    prefixes = (typeof shape === 'number' ? ghostnetLayout(shape) : shape.ghostSites()).map((s) => s.prefix);
  } else {
    const set = new Set<string>();
    const stray: string[] = [];
    for (const k of src.keys()) {
      if (k.endsWith(FUSION)) set.add(k.slice(0, -FUSION.length));
      else if (k.endsWith(CHEAP)) set.add(k.slice(0, -CHEAP.length));
      else stray.push(k);
    }
    if (stray.length) throw new Error(`ghostnetSites: keys that are not GhostNet scales: ${stray.join(', ')}`);
    prefixes = [...set].sort(comparePrefixes);
    const missing = prefixes.flatMap((p) => [p + FUSION, p + CHEAP]).filter((k) => !src.has(k));
    if (missing.length) throw new Error(`ghostnetSites: missing scale keys: ${missing.join(', ')}`);
  }
  return prefixes.map((p) => {
    const s = scaleValues(src.get(p + CHEAP)!, p + CHEAP);
    const f = scaleValues(src.get(p + FUSION)!, p + FUSION);
    if (s.length !== f.length) {
      throw new Error(`ghostnetSites: '${p}${CHEAP}' has ${s.length} channels but '${p}${FUSION}' has ${f.length}`);
    }
    return { param: `${p}.cheap_operation.0.weight`, spec: ghostCslaSpec(s), identityInit: [opts.identityInit === 'one' ? 1 : f] };
  });
}

/** The RepOptimizer handler of a target GhostNet (Grad Mults, Rule of Initialization). */
export function ghostnetHandler(scales: Map<string, Tensor> | Record<string, Tensor>, model?: GhostNet, opts: Omit<GhostnetSiteOptions, 'model'> = {}): RepOptHandler {
  if (model && model.mode !== 'target') {
    throw new Error(`RepOpt-GhostNet handler: the model is in '${model.mode}' mode; the optimizer re-parameterises 'target' models`);
  }
  return new RepOptHandler(ghostnetSites(scales, { ...opts, model }));
}

/**
 * The target model's state dict equal to an hs/csla model: each cheap kernel fused with its scale and
 * identity (W' = s W + f at the centre), the scales dropped, all else (`final_bn` included) copied.
 * (Deploys a CSLA-trained model; the target model, BN in eval, then computes the same function.)
 * Copied entries alias the hs model's tensors (loadStateDict copies them); dispose the map when done.
 */
export function ghostnetHsToTarget(model: GhostNet): StateDict {
  if (model.mode !== 'hs' && model.mode !== 'csla') throw new Error(`ghostnetHsToTarget: needs an 'hs' or 'csla' model, got '${model.mode}'`);
  const sd = model.stateDict();
  const out: StateDict = new Map();
  const sites = new Set(model.ghostSites().map((s) => s.prefix));
  for (const [k, t] of sd) {
    const m = /^(.*\.ghost[12])\.(fusion_scale\.weight|cheap_operation\.[01]\.weight)$/.exec(k);
    if (!m || !sites.has(m[1])) {
      out.set(k, t);
      continue;
    }
    const [, p, part] = m;
    if (part === 'cheap_operation.0.weight') {
      const s = sd.get(p + CHEAP)!;
      const f = sd.get(p + FUSION)!;
      out.set(k, torch.keep(torch.noGrad(() => fuseKernel(ghostCslaSpec(s.toArray() as number[]), { convKernels: [t], identityWeights: [f] }, t.dtype as DType))));
    }
  }
  const kept = new Set(out.values());
  for (const t of sd.values()) if (!kept.has(t)) t.dispose(); // the scales and unfused kernels
  return out;
}

/**
 * Parameters of the target model with 1000 classes (from this file's table; they and ghostnetMacs
 * agree with RepGhostNet's published 2.3M/43M, 2.5M/60M, 3.3M/96M, 4.1M/142M, 4.5M/170M,
 * 5.5M/231M, 6.6M/301M, 9.8M/516M). Checked by test/ghostnet.test.ts.
 */
export const GHOSTNET_PARAMS: Record<string, number> = {
  'RepOpt-GhostNet-0.5x': 2_309_008,
  'RepOpt-GhostNet-0.58x': 2_540_620,
  'RepOpt-GhostNet-0.8x': 3_271_064,
  'RepOpt-GhostNet-1.0x': 4_063_716,
  'RepOpt-GhostNet-1.11x': 4_529_040,
  'RepOpt-GhostNet-1.3x': 5_465_748,
  'RepOpt-GhostNet-1.5x': 6_560_488,
  'RepOpt-GhostNet-2.0x': 9_776_348,
};

/** `RepOpt-GhostNet-0.5x`, `-1.0x`, `-1.11x`, ... */
export function ghostnetArchName(w: number): string {
  return `RepOpt-GhostNet-${Number.isInteger(w) ? w.toFixed(1) : String(w)}x`;
}

/** The named architectures (one per width); the family registers them (families.ts). */
export const ghostnetArchs = (): ArchInfo[] => GHOSTNET_WIDTHS.map((w) => {
  const name = ghostnetArchName(w);
  return {
    name,
    family: 'RepOpt-GhostNet',
    modes: [...GHOSTNET_MODES],
    create: (opts = {}) =>
      new GhostNet({
        width: w,
        mode: (opts.mode ?? 'target') as GhostNetMode,
        numClasses: opts.numClasses,
        inChannels: opts.inChannels,
        dtype: opts.dtype,
      }),
    params: GHOSTNET_PARAMS[name],
    macs: ghostnetMacs(w),
  };
});
