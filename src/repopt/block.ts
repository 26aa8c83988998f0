/**
 * Generic re-parameterization: from ONE block description (a `CslaSpec`, csla.ts) the three forms of
 * the method (Ding et al., ICLR 2023, arXiv 2205.15242) as one module class, `CslaBlock`:
 *
 *   'hs'      Hyper-Search twin: sum of the branches with TRAINABLE per-channel scales, then BN.
 *   'csla'    the same sum with CONSTANT scales (the searched ones): trained with a plain optimizer it
 *             is what the target trained with RepSGD / RepAdamW computes.
 *   'target'  one conv (no bias) with the target kernel, then BN: what RepOptimizers train.
 *
 * and, on any model built from such blocks and ordinary layers, by block name (module path):
 *   extractScales(hs)              the searched scales, keyed `<block>.branches.<i>.scale.weight`
 *   loadScales(model, scales)      sets them in an hs/csla model (the twin), every key checked
 *   repOptHandler(target, scales)  Grad Mults and the Rule of Initialization (a RepOptHandler)
 *   initializeFromTwin(target, t)  the Rule of Initialization from a given hs/csla twin (so the two
 *                                  start equal and can be compared after training)
 *   block.reparameterize()         the deploy form of any of the three: one Conv2d with bias (BN
 *                                  folded); `reparameterizeModel(model)` fuses a whole model.
 *
 * State-dict keys under a block: hs/csla `branches.<i>.conv.weight` (conv branches),
 * `branches.<i>.scale.weight` [Cout] (every branch: the scale of a conv branch, the per-channel weight
 * of an identity branch), `bn.*`; target `conv.weight`, `bn.*`; deploy (a Conv2d) `weight`, `bias`.
 * In csla form the conv scales are buffers (constants no optimizer sees; `frozenScales: 'parameter'`
 * keeps them parameters with requiresGrad off, as RepOpt-VGG's release does); an identity branch's
 * weight v stays trainable, multiplied by the spec's constant identity scale (1 by default), and
 * starts at the searched identity scale (the release's choice; the paper's is 1).
 *
 * A naming map (`names`) registers each branch's conv and scale directly on the block under the names a
 * release uses (RepOpt-VGG: `conv` + `scale_conv`, `conv_1x1` + `scale_1x1`, `scale_identity`), and the
 * target conv under its own name (dotted names nest in small containers created on demand; the BN's name
 * and the registration order can be given too); with `owner`, the parts are registered onto a given module
 * (a CslaHost: RepOpt-GhostNet's Ghost module, whose primary conv precedes them) and the generic functions
 * find the block under the owner's name; everything generic here reads a block's keys from the block
 * (`scaleKeys`, `kernelKey`), so scale files and handlers keep the release's keys.
 */
import * as torch from '../torch/index.js';
import type { DType, Tensor } from '../torch/index.js';
import { BatchNorm2d, Conv2d, Module } from '../nn/index.js';
import { ScaleLayer } from './scale-layer.js';
import { foldBN } from './fold.js';
import { fuseKernel, normalizeSpec, type CslaSpec, type NormalSpec } from './csla.js';
import { RepOptHandler, assertFresh, type ReparamSite } from './handler.js';
import type { Reparameterizable } from './reparam.js';

export type CslaMode = 'hs' | 'csla' | 'target';
export const CSLA_MODES: readonly CslaMode[] = ['hs', 'csla', 'target'];

/**
 * Where a block's parts are registered (default: `branches.<i>.conv`, `branches.<i>.scale`, target `conv`).
 * With a map, each branch's conv (conv branches) and scale are registered directly on the block.
 */
export interface CslaBlockNames {
  /** One per branch, in the spec's order: `conv` (conv branches only) and `scale` module names. */
  branches: readonly { conv?: string; scale: string }[];
  /** target: the single conv's module name (default 'conv'). */
  conv?: string;
  /** The BatchNorm's module name (default 'bn'). */
  bn?: string;
  /**
   * Registration (and so state-dict key) order of the parts by their first name segment; parts not
   * listed keep the default order (branches in spec order, conv then scale; then the BN) after those listed.
   */
  order?: readonly string[];
}

export interface CslaBlockOptions {
  /** Default 'target'. */
  mode?: CslaMode;
  /** BatchNorm after the sum (default true, as RepOpt-VGG and RepOpt-GhostNet). */
  bn?: boolean;
  dtype?: DType;
  /** Module names of the branches' convs and scales (a release's state-dict keys); see CslaBlockNames. */
  names?: CslaBlockNames;
  /** csla: the constant conv scales as buffers (default) or as parameters with requiresGrad off (RepOpt-VGG's release). */
  frozenScales?: 'buffer' | 'parameter';
  /**
   * Register the parts (with `names`) on this module instead of on the block: the owner holds the keys
   * (the block's keys are then relative to the owner) and exposes the block as `cslaBlock` (a CslaHost),
   * so the generic functions find it under the owner's name. RepOpt-GhostNet's Ghost module, whose primary
   * conv comes before the block's parts, is one. The owner disposes the parts; it calls the block's dispose too.
   */
  owner?: Module;
}

/** A module whose state-dict keys include a CslaBlock's parts (registered with `owner`): the generic functions see the block under the host's name. */
export interface CslaHost {
  readonly cslaBlock: CslaBlock<Module> | null;
}

function hostedBlock(m: Module): CslaBlock | null {
  const b = (m as Partial<CslaHost>).cslaBlock;
  return b instanceof CslaBlock ? (b as CslaBlock) : null;
}

/**
 * Checks a naming map against a spec: one entry per branch, a conv name for each conv branch, names unique
 * (dotted names nest: `cheap_operation.0` is child `0` of a container `cheap_operation`; no name may be
 * another's container).
 */
function checkNames(names: CslaBlockNames, n: NormalSpec): void {
  if (names.branches.length !== n.branches.length) throw new Error(`CslaBlock: names has ${names.branches.length} branches, the spec ${n.branches.length}`);
  const all = [names.bn ?? 'bn'];
  n.branches.forEach((b, i) => {
    const e = names.branches[i];
    if (b.kind === 'conv' && !e.conv) throw new Error(`CslaBlock: names.branches[${i}] needs a conv name (branch ${i} is a conv)`);
    if (b.kind === 'identity' && e.conv) throw new Error(`CslaBlock: names.branches[${i}] has a conv name, but branch ${i} is an identity`);
    all.push(e.scale, ...(e.conv ? [e.conv] : []));
  });
  const dup = all.find((x, i) => !x || all.indexOf(x) !== i || x.split('.').some((seg) => !seg) || all.some((y) => y.startsWith(`${x}.`)));
  if (dup !== undefined) throw new Error(`CslaBlock: names must be distinct, non-empty, with non-empty segments, and none another's container ('${dup}')`);
  if (names.conv !== undefined && (!names.conv || names.conv.split('.').some((seg) => !seg))) throw new Error(`CslaBlock: bad target conv name '${names.conv}'`);
}

/** A container for dotted part names (`a.b`: child `b` of container `a`), created on demand; holds no computation. */
class PartContainer extends Module {
  add(name: string, m: Module): void {
    this.registerModule(name, m);
  }
  forward(): Tensor {
    throw new Error('PartContainer holds parts of a CslaBlock; the block computes');
  }
}

/** Registers `parts` ([dotted name, module]) on `owner`, in order, creating containers for the dotted names. */
function registerParts(owner: Module, parts: [string, Module][]): void {
  const containers = new Map<string, PartContainer>();
  const reg = (parent: Module, name: string, m: Module) => {
    if (parent instanceof PartContainer) parent.add(name, m);
    // registerModule is protected; the owner hands its registration to the block (option `owner`).
    else (parent as unknown as { registerModule(n: string, x: Module): Module }).registerModule(name, m);
  };
  for (const [path, m] of parts) {
    const segs = path.split('.');
    let parent: Module = owner;
    for (let i = 0; i < segs.length - 1; i++) {
      const key = segs.slice(0, i + 1).join('.');
      let c = containers.get(key);
      if (!c) {
        c = new PartContainer();
        reg(parent, segs[i], c);
        containers.set(key, c);
      }
      parent = c;
    }
    reg(parent, segs[segs.length - 1], m);
  }
}

/** One branch of an hs/csla block: a conv (kernel + scale) or an identity (per-channel weight). */
class Branch extends Module {
  readonly conv: Conv2d | null;
  readonly scale: ScaleLayer;
  constructor(n: NormalSpec, i: number, mode: 'hs' | 'csla', dtype: DType, frozenAsBuffer: boolean) {
    super();
    const b = n.branches[i];
    const trainable = b.kind === 'identity' ? b.trainable : mode === 'hs';
    this.conv =
      b.kind === 'conv'
        ? this.registerModule('conv', new Conv2d(n.cin, n.cout, [b.kh, b.kw], { stride: n.stride, padding: [(b.kh - 1) / 2, (b.kw - 1) / 2], groups: n.groups, bias: false, dtype }))
        : null;
    this.scale = this.registerModule('scale', new ScaleLayer(n.cout, 1, { trainable, frozenAsBuffer, dtype }));
    // Initial scale: the spec's (the Hyper-Search init); an identity's weight starts at 1 in csla form
    // (its constant factor is the spec's scale) and at the spec's scale in hs form.
    const init = b.kind === 'identity' && mode === 'csla' ? new Float64Array(n.cout).fill(1) : b.scale;
    torch.noGrad(() => this.scale.weight.copy_(torch.fromTypedArray(Float64Array.from(init), [n.cout], 'float64')));
  }
  forward(x: Tensor): Tensor {
    return this.scale.forward(this.conv ? this.conv.forward(x) : x);
  }
}

/**
 * A CSLA block in one of its three forms (see the file comment), with the deploy form as its re-parameterization.
 * `D` is the deploy form's type: a Conv2d here; a subclass with more after the block (a family's ReLU, SE, ...)
 * overrides `reparameterize()` with its own deploy module (`fusedConv()` gives the fused conv + BN).
 */
export class CslaBlock<D extends Module = Conv2d> extends Module implements Reparameterizable {
  readonly mode: CslaMode;
  readonly spec: NormalSpec;
  /** hs/csla: one module per branch, in the spec's order. */
  readonly branches: Branch[];
  /** target: the single conv. */
  readonly conv: Conv2d | null;
  readonly bn: BatchNorm2d | null;
  /** State-dict keys of the branches' scales under the block, in the spec's order (`branches.<i>.scale.weight` by default). */
  readonly scaleKeys: readonly string[];
  /** State-dict key of the target conv's kernel under the block (`conv.weight` by default). */
  readonly kernelKey: string;
  /** csla: the constant factor in front of each identity branch's weight (per channel); null where it is 1. */
  readonly #identityFactor: (Tensor | null)[];
  readonly #dtype: DType;

  constructor(spec: CslaSpec, opts: CslaBlockOptions = {}) {
    super();
    const mode = opts.mode ?? 'target';
    if (!CSLA_MODES.includes(mode)) throw new Error(`CslaBlock: unknown mode '${mode}' (modes: ${CSLA_MODES.join(', ')})`);
    this.mode = mode;
    const n = (this.spec = normalizeSpec(spec));
    const dtype = (this.#dtype = opts.dtype ?? 'float32');
    const names = opts.names;
    if (names) checkNames(names, n);
    if (opts.owner && !names) throw new Error('CslaBlock: option owner needs a naming map (names)');
    const owner = opts.owner ?? this;
    // The parts, in the default order; registered at the end (in `names.order` where given).
    const parts: [string, Module][] = [];
    const frozenScales = opts.frozenScales ?? 'buffer';
    if (frozenScales !== 'buffer' && frozenScales !== 'parameter') throw new Error(`CslaBlock: frozenScales must be 'buffer' or 'parameter', got '${frozenScales}'`);
    const convName = names?.conv ?? 'conv';
    this.kernelKey = `${convName}.weight`;
    this.scaleKeys = n.branches.map((_, i) => (names ? `${names.branches[i].scale}.weight` : `branches.${i}.scale.weight`));
    if (mode === 'target') {
      this.branches = [];
      this.conv = new Conv2d(n.cin, n.cout, [n.kh, n.kw], { stride: n.stride, padding: [(n.kh - 1) / 2, (n.kw - 1) / 2], groups: n.groups, bias: false, dtype });
      parts.push([convName, this.conv]);
    } else {
      this.conv = null;
      const branches = n.branches.map((_, i) => new Branch(n, i, mode, dtype, frozenScales === 'buffer'));
      if (names) {
        // The branch modules stay unregistered: their conv and scale hang directly off the block.
        branches.forEach((br, i) => {
          const e = names.branches[i];
          if (br.conv) parts.push([e.conv!, br.conv]);
          parts.push([e.scale, br.scale]);
        });
        this.branches = branches;
      } else {
        const list = new BranchList(branches);
        parts.push(['branches', list]);
        this.branches = list.items;
      }
    }
    // A constant factor of exactly 1 is skipped (x * 1 == x, gradients too).
    this.#identityFactor = n.branches.map((b) =>
      mode === 'csla' && b.kind === 'identity' && !b.scale.every((v) => v === 1)
        ? torch.keep(torch.fromTypedArray(Float64Array.from(b.scale), [1, n.cout, 1, 1], 'float64').to(dtype))
        : null,
    );
    this.bn = opts.bn === false ? null : new BatchNorm2d(n.cout, { dtype });
    if (this.bn) parts.push([names?.bn ?? 'bn', this.bn]);
    const order = names?.order ?? [];
    const rank = (p: string) => {
      const i = order.indexOf(p.split('.')[0]);
      return i < 0 ? order.length : i;
    };
    registerParts(owner, parts.map((p, i) => [p, i] as const).sort((a, b) => rank(a[0][0]) - rank(b[0][0]) || a[1] - b[1]).map(([p]) => p));
  }

  /**
   * The conv (or sum of branches) before BN. Block-local intermediates (branch outputs, partial sums) are
   * released as soon as the next op has consumed them, as Python drops them: autograd keeps what it saved
   * by its own reference, so values and gradients are unchanged and peak memory inside a step is lower.
   */
  linear(x: Tensor): Tensor {
    if (this.mode === 'target') return this.conv!.forward(x);
    let y: Tensor | null = null;
    for (let i = 0; i < this.branches.length; i++) {
      const br = this.branches[i];
      const f = this.#identityFactor[i];
      let term: Tensor;
      if (br.conv) {
        const c = br.conv.forward(x);
        term = br.scale.forward(c);
        c.dispose();
      } else {
        term = br.scale.forward(x);
      }
      if (f) term = release(term, term.mul(f));
      y = y ? release2(y, term, y.add(term)) : term;
    }
    return y!;
  }

  forward(x: Tensor): Tensor {
    const y = this.linear(x);
    return this.bn ? release(y, this.bn.forward(y)) : y;
  }

  /** The block's scales as they stand (hs: current trainable values; csla: the constants), as a spec. */
  currentSpec(): CslaSpec {
    const n = this.spec;
    return {
      inChannels: n.cin,
      outChannels: n.cout,
      kernel: [n.kh, n.kw],
      groups: n.groups,
      stride: n.stride,
      branches: n.branches.map((b, i) => {
        if (b.kind === 'conv') return { kind: 'conv', kernel: [b.kh, b.kw], scale: this.mode === 'target' ? b.scale : this.branches[i].scale.weight.toArray() };
        return { kind: 'identity', scale: this.mode === 'csla' ? b.scale : 1, trainable: b.trainable };
      }),
    };
  }

  /** The single kernel equal to the block's linear part (float64): W' = sum_b scale_b pad(W_b) (+ identity). */
  fusedKernel(): Tensor {
    return torch.noGrad(() => {
      if (this.mode === 'target') return this.conv!.weight.double();
      const convKernels = this.branches.filter((b) => b.conv).map((b) => b.conv!.weight);
      const identityWeights = this.branches.filter((b) => !b.conv).map((b) => b.scale.weight);
      return fuseKernel(this.currentSpec(), { convKernels, identityWeights }, 'float64');
    });
  }

  /** The deploy form: `fusedConv()` (a subclass with more after the block returns its own deploy module). */
  reparameterize(): D {
    return this.fusedConv() as unknown as D;
  }

  /** One Conv2d with bias (BN folded), eval mode, this block's dtype, equal to conv/branches + BN; this block is unchanged. */
  fusedConv(): Conv2d {
    const n = this.spec;
    const dtype = this.#dtype;
    const hasBias = this.bn !== null;
    const out = new Conv2d(n.cin, n.cout, [n.kh, n.kw], { stride: n.stride, padding: [(n.kh - 1) / 2, (n.kw - 1) / 2], groups: n.groups, bias: hasBias, dtype });
    torch.noGrad(() =>
      torch.tidy(() => {
        const k = this.fusedKernel();
        const { weight, bias } = this.bn ? foldBN(k, this.bn) : { weight: k, bias: null };
        out.weight.copy_(weight);
        if (bias && out.bias) out.bias.copy_(bias);
      }),
    );
    return out.eval();
  }

  override dispose(): void {
    super.dispose();
    for (const f of this.#identityFactor) f?.dispose();
  }
}

/** Returns `out`, releasing `a` (a block-local intermediate `out` was computed from). */
function release(a: Tensor, out: Tensor): Tensor {
  a.dispose();
  return out;
}

/** Returns `out`, releasing `a` and `b`. */
function release2(a: Tensor, b: Tensor, out: Tensor): Tensor {
  a.dispose();
  b.dispose();
  return out;
}

/** Children `0`, `1`, ... (PyTorch's ModuleList): the branches, stored under `branches.<i>`. */
class BranchList extends Module {
  constructor(readonly items: Branch[]) {
    super();
    items.forEach((b, i) => this.registerModule(String(i), b));
  }
  forward(): Tensor {
    throw new Error('BranchList is a container; CslaBlock sums its branches');
  }
}

/** Every CslaBlock of a model with its name (module path), in model order. */
export function cslaBlocks(model: Module): [string, CslaBlock][] {
  const out: [string, CslaBlock][] = [];
  for (const [name, m] of model.namedModules()) {
    const b = m instanceof CslaBlock ? m : hostedBlock(m);
    if (b) out.push([name, b]);
  }
  return out;
}

function blocksOf(model: Module, modes: CslaMode[], what: string): [string, CslaBlock][] {
  const blocks = cslaBlocks(model);
  if (blocks.length === 0) throw new Error(`${what}: ${model.constructor.name} has no CslaBlock`);
  for (const [name, b] of blocks) {
    if (!modes.includes(b.mode)) throw new Error(`${what}: block '${name}' is in '${b.mode}' form; expected ${modes.map((m) => `'${m}'`).join(' or ')}`);
  }
  return blocks;
}

const prefixed = (block: string, key: string) => (block ? `${block}.${key}` : key);

/** A model's scales by name, as the scale files hold them (a Map of [Cout] tensors). */
export type BlockScales = Map<string, Tensor>;

/**
 * The searched scales of a Hyper-Search (or csla) model, keyed `<block>.branches.<i>.scale.weight`
 * (copies, in model order; the caller owns and disposes them). `saveScaleFile` writes them.
 */
export function extractScales(model: Module): BlockScales {
  const out: BlockScales = new Map();
  for (const [name, b] of blocksOf(model, ['hs', 'csla'], 'extractScales')) {
    b.branches.forEach((br, i) => out.set(prefixed(name, b.scaleKeys[i]), torch.keep(br.scale.weight.detach().clone())));
  }
  return out;
}

function scaleOf(scales: BlockScales, key: string, cout: number, what: string): Tensor {
  const t = scales.get(key);
  if (!t) throw new Error(`${what}: no scale '${key}' (scales hold ${[...scales.keys()].slice(0, 4).join(', ')}${scales.size > 4 ? ', ...' : ''})`);
  if (t.shape.length !== 1 || t.shape[0] !== cout) throw new Error(`${what}: scale '${key}' has shape [${t.shape.join(', ')}], the block has ${cout} output channels`);
  return t;
}

/** Checks that `scales` has exactly the keys a model's blocks need. */
function checkKeys(blocks: [string, BlockKeys][], scales: BlockScales, what: string): void {
  const want = new Set(blocks.flatMap(([name, b]) => b.scaleKeys.map((k) => prefixed(name, k))));
  const extra = [...scales.keys()].filter((k) => !want.has(k));
  if (extra.length) throw new Error(`${what}: scales for blocks this model does not have: ${extra.slice(0, 4).join(', ')}${extra.length > 4 ? ', ...' : ''}`);
}

/** Sets the scales of every block of an hs/csla model (the twin) from `scales`; every key must match. */
export function loadScales(model: Module, scales: BlockScales): void {
  const blocks = blocksOf(model, ['hs', 'csla'], 'loadScales');
  checkKeys(blocks, scales, 'loadScales');
  torch.noGrad(() => {
    for (const [name, b] of blocks) {
      b.branches.forEach((br, i) => br.scale.weight.copy_(scaleOf(scales, prefixed(name, b.scaleKeys[i]), b.spec.cout, 'loadScales')));
    }
  });
}

export interface SiteOptions {
  /** Initial identity weight of the target: the searched identity scale (the release, default) or 1 (the paper). */
  identityInit?: 'searched' | 'one';
}

/** What the generic functions read of a block: its spec and keys (a CslaBlock, or a description of one). */
export interface BlockKeys {
  readonly spec: NormalSpec;
  readonly scaleKeys: readonly string[];
  readonly kernelKey: string;
}

/** The keys a CslaBlock of a spec and naming map would have, without building it (for layouts, scale schemes). */
export function blockKeys(spec: CslaSpec, names?: CslaBlockNames): BlockKeys {
  const n = normalizeSpec(spec);
  if (names) checkNames(names, n);
  return {
    spec: n,
    scaleKeys: n.branches.map((_, i) => (names ? `${names.branches[i].scale}.weight` : `branches.${i}.scale.weight`)),
    kernelKey: `${names?.conv ?? 'conv'}.weight`,
  };
}

/** The scale keys and shapes ([Cout]) of named blocks, in order. */
export function blockScaleShapesOf(blocks: Iterable<[string, BlockKeys]>): Map<string, number[]> {
  const out = new Map<string, number[]>();
  for (const [name, b] of blocks) for (const k of b.scaleKeys) out.set(prefixed(name, k), [b.spec.cout]);
  return out;
}

/** The RepOptimizer sites of a target model (one per CslaBlock, `<block>.<kernelKey>`) from searched scales. */
export function repOptSites(target: Module, scales: BlockScales, opts: SiteOptions = {}): ReparamSite[] {
  return blockSites(blocksOf(target, ['target'], 'repOptSites'), scales, opts);
}

/** The sites of named blocks (built or described by `blockKeys`) from searched scales; every key checked. */
export function blockSites(blocks: [string, BlockKeys][], scales: BlockScales, opts: SiteOptions = {}): ReparamSite[] {
  checkKeys(blocks, scales, 'repOptSites');
  return blocks.map(([name, b]): ReparamSite => {
    const n = b.spec;
    const identityInit: number[][] = [];
    const branches = n.branches.map((br, i) => {
      const s = scaleOf(scales, prefixed(name, b.scaleKeys[i]), n.cout, 'repOptSites').toArray();
      if (br.kind === 'conv') return { kind: 'conv' as const, kernel: [br.kh, br.kw] as [number, number], scale: s };
      identityInit.push(opts.identityInit === 'one' ? new Array<number>(n.cout).fill(1) : s);
      return { kind: 'identity' as const, scale: br.scale, trainable: br.trainable };
    });
    const spec: CslaSpec = { inChannels: n.cin, outChannels: n.cout, kernel: [n.kh, n.kw], groups: n.groups, stride: n.stride, branches };
    return { param: prefixed(name, b.kernelKey), spec, identityInit };
  });
}

/**
 * A RepOptHandler for a target model built from CslaBlocks: `gradMults('sgd' | 'adamw')` for RepSGD /
 * RepAdamW, and `reinitialize(target)` (the Rule of Initialization from fresh branch kernels).
 */
export function repOptHandler(target: Module, scales: BlockScales, opts: SiteOptions = {}): RepOptHandler {
  return new RepOptHandler(repOptSites(target, scales, opts));
}

/**
 * The Rule of Initialization from a given twin: every target block's kernel becomes the twin's
 * fused kernel (W' = sum of its scaled branches), and every other parameter and buffer (BN, stem,
 * head, ...) is copied from the twin by name. Trained from there on the same data, the target with
 * RepSGD and the csla twin with SGD stay equal. The target must be fresh (BN weights 1).
 */
export function initializeFromTwin(target: Module, twin: Module, opts: { force?: boolean } = {}): void {
  assertFresh(target, opts.force);
  const mine = blocksOf(target, ['target'], 'initializeFromTwin');
  const theirs = new Map(blocksOf(twin, ['hs', 'csla'], 'initializeFromTwin'));
  const kernels = new Set<string>();
  torch.noGrad(() =>
    torch.tidy(() => {
      for (const [name, b] of mine) {
        const t = theirs.get(name);
        if (!t) throw new Error(`initializeFromTwin: the twin has no block '${name}'`);
        const want = b.conv!.weight.shape.join();
        const k = t.fusedKernel();
        if (k.shape.join() !== want) throw new Error(`initializeFromTwin: block '${name}' has kernel [${want}], the twin's fuses to [${k.shape.join()}]`);
        b.conv!.weight.copy_(k);
        kernels.add(prefixed(name, b.kernelKey));
      }
      const src = new Map([...twin.namedParameters(), ...twin.namedBuffers()]);
      for (const [key, t] of [...target.namedParameters(), ...target.namedBuffers()]) {
        if (kernels.has(key)) continue;
        const s = src.get(key);
        if (!s) throw new Error(`initializeFromTwin: the twin has no '${key}'`);
        if (s.shape.join() !== t.shape.join()) throw new Error(`initializeFromTwin: '${key}' is [${t.shape.join(', ')}] here, [${s.shape.join(', ')}] in the twin`);
        t.copy_(s);
      }
    }),
  );
}
