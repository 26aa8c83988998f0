/**
 * The inference graph of a deployed (plain) network: what quantization and ONNX export work on, for any
 * model, not one family.
 *
 * A deployed model is described once as a graph of a few plain operations on named values:
 *   conv (dense, grouped or depthwise, with bias), linear, batch norm (eval, standalone), relu, sigmoid,
 *   hardsigmoid, add, mul, concat, flatten, global average pooling, average and max pooling.
 * Weighted nodes hold the model's own Conv2d / Linear modules (named by their state-dict prefix, e.g.
 * `blocks.0.0.ghost1.cheap_operation`), so the graph always sees the current weights (QAT trains them).
 *
 * How a model is described (`traceGraph`), module by module:
 *   - a module with `exportGraph(g, x)` ({@link GraphExportable}) describes its own forward with the
 *     builder's operations and `g.module(child, x, 'childName')` for its children;
 *   - `Sequential` chains its children; `Conv2d`, `Linear`, `BatchNorm2d`, `ReLU`, `Flatten(1)`, `AdaptiveAvgPool2d(1)`
 *     map to one node; `Identity` and `Dropout` (inference) to none;
 *   - anything else is an error naming the module and its path (write its `exportGraph`).
 * A user's network made of `Sequential`s and these layers therefore needs no code; one with its own
 * `forward` writes the same computation once more as `exportGraph` (a few lines), and
 * {@link checkGraph} tells whether the two agree.
 *
 * `graph.run(x, hooks)` executes the graph with libtorch; the hooks see every value (activation
 * quantization) and every weight (weight quantization) on the way.
 */
import * as torch from '../torch/index.js';
import { F, type Tensor } from '../torch/index.js';
import { AdaptiveAvgPool2d, BatchNorm2d, Conv2d, Dropout, Flatten, Identity, Linear, Module, ReLU, Sequential } from '../nn/index.js';

import type { GraphExportable, GraphOps, GraphValue } from '../nn/graph-types.js';

export type { GraphExportable, GraphOps, GraphValue };

type Pair = [number, number];

export type GraphOp =
  | { kind: 'conv'; layer: string; module: Conv2d; stride: Pair; padding: Pair; dilation: Pair; groups: number }
  | { kind: 'linear'; layer: string; module: Linear }
  | { kind: 'batchNorm'; layer: string; module: BatchNorm2d }
  | { kind: 'relu' | 'sigmoid' | 'hardsigmoid' | 'add' | 'mul' | 'concat' | 'flatten' | 'globalAvgPool' }
  | { kind: 'avgPool' | 'maxPool'; kernel: Pair; stride: Pair; padding: Pair };

export interface GraphNode {
  op: GraphOp;
  inputs: GraphValue[];
  output: GraphValue;
}


export function isGraphExportable(m: unknown): m is Module & GraphExportable {
  return m instanceof Module && typeof (m as Partial<GraphExportable>).exportGraph === 'function';
}

const pair = (v: number | number[] | undefined, dflt: number): Pair => {
  if (v === undefined) return [dflt, dflt];
  return typeof v === 'number' ? [v, v] : [v[0], v[1]];
};

interface BuildState {
  nodes: GraphNode[];
  names: Set<string>;
}

/**
 * Records graph nodes under a scope (the state-dict prefix of the module being described). Every
 * operation takes an optional value name relative to the scope ('' names the value after the scope
 * itself); names are made unique.
 */
export class GraphBuilder implements GraphOps {
  constructor(
    readonly scope: string,
    private readonly state: BuildState,
  ) {}

  private path(name: string): string {
    return this.scope && name ? `${this.scope}.${name}` : this.scope || name;
  }

  private emit(op: GraphOp, inputs: GraphValue[], name: string): GraphValue {
    const base = this.path(name) || op.kind;
    let out = base;
    for (let i = 1; this.state.names.has(out); i++) out = `${base}_${i}`;
    this.state.names.add(out);
    this.state.nodes.push({ op, inputs, output: out });
    return out;
  }

  /** The builder of a child scope. */
  child(name: string): GraphBuilder {
    return new GraphBuilder(this.path(name), this.state);
  }

  /** Describes child module `m` (registered as `name`) applied to `x`. */
  module(m: Module, x: GraphValue, name: string): GraphValue {
    const g = this.child(name);
    if (isGraphExportable(m)) return m.exportGraph(g, x);
    if (m instanceof Sequential) return m.children().reduce((y, [n, c]) => g.module(c, y, n), x);
    if (m instanceof Conv2d) return g.conv(m, x, '');
    if (m instanceof Linear) return g.linear(m, x, '');
    if (m instanceof ReLU) return g.relu(x, '');
    if (m instanceof BatchNorm2d) return g.batchNorm(m, x, '');
    if (m instanceof Identity || m instanceof Dropout) return x;
    if (m instanceof Flatten) {
      if (m.startDim !== 1 || m.endDim !== -1) throw new Error(`graph: '${g.scope}': only Flatten(1) is supported`);
      return g.flatten(x, '');
    }
    if (m instanceof AdaptiveAvgPool2d) {
      const s = pair(m.outputSize, 1);
      if (s[0] !== 1 || s[1] !== 1) throw new Error(`graph: '${g.scope}': only AdaptiveAvgPool2d(1) (global pooling) is supported`);
      return g.globalAvgPool(x, '');
    }
    throw new Error(
      `graph: ${m.constructor.name} at '${g.scope || '(model)'}' has no inference graph: give it exportGraph(g, x) ` +
        '(GraphExportable) or build it from Sequential and plain layers; re-parameterize the model first if it is a training form',
    );
  }

  /** A conv layer (dense, grouped or depthwise); the layer is named after the scope + name. */
  conv(m: Conv2d, x: GraphValue, name = 'conv'): GraphValue {
    const o = m.options;
    const layer = this.path(name);
    return this.emit({ kind: 'conv', layer, module: m, stride: pair(o.stride, 1), padding: pair(o.padding, 0), dilation: pair(o.dilation, 1), groups: o.groups ?? 1 }, [x], name);
  }
  linear(m: Linear, x: GraphValue, name = 'linear'): GraphValue {
    return this.emit({ kind: 'linear', layer: this.path(name), module: m }, [x], name);
  }
  /** An eval-mode BN on its own (one not following a conv; those are folded by re-parameterization). */
  batchNorm(m: BatchNorm2d, x: GraphValue, name = 'bn'): GraphValue {
    if (!m.runningMean || !m.runningVar) throw new Error(`graph: '${this.path(name)}': a BN without running statistics has no inference form`);
    return this.emit({ kind: 'batchNorm', layer: this.path(name), module: m }, [x], name);
  }
  relu(x: GraphValue, name = 'relu'): GraphValue {
    return this.emit({ kind: 'relu' }, [x], name);
  }
  sigmoid(x: GraphValue, name = 'sigmoid'): GraphValue {
    return this.emit({ kind: 'sigmoid' }, [x], name);
  }
  /** PyTorch's hardsigmoid: relu6(x + 3) / 6. */
  hardsigmoid(x: GraphValue, name = 'hardsigmoid'): GraphValue {
    return this.emit({ kind: 'hardsigmoid' }, [x], name);
  }
  add(a: GraphValue, b: GraphValue, name = 'add'): GraphValue {
    return this.emit({ kind: 'add' }, [a, b], name);
  }
  /** Elementwise product with broadcasting ([N, C, 1, 1] gates [N, C, H, W]). */
  mul(a: GraphValue, b: GraphValue, name = 'mul'): GraphValue {
    return this.emit({ kind: 'mul' }, [a, b], name);
  }
  /** Concatenation along channels. */
  concat(xs: GraphValue[], name = 'concat'): GraphValue {
    if (xs.length < 1) throw new Error('graph: concat of nothing');
    return this.emit({ kind: 'concat' }, xs, name);
  }
  /** [N, C, ...] -> [N, C * ...]. */
  flatten(x: GraphValue, name = 'flatten'): GraphValue {
    return this.emit({ kind: 'flatten' }, [x], name);
  }
  /** [N, C, H, W] -> [N, C, 1, 1] (mean). */
  globalAvgPool(x: GraphValue, name = 'pool'): GraphValue {
    return this.emit({ kind: 'globalAvgPool' }, [x], name);
  }
  /** Average pooling (PyTorch's default: padding counted in the mean). */
  avgPool(x: GraphValue, kernel: number | Pair, opts: { stride?: number | Pair; padding?: number | Pair } = {}, name = 'avgpool'): GraphValue {
    const k = pair(kernel, 1);
    return this.emit({ kind: 'avgPool', kernel: k, stride: pair(opts.stride, k[0]), padding: pair(opts.padding, 0) }, [x], name);
  }
  maxPool(x: GraphValue, kernel: number | Pair, opts: { stride?: number | Pair; padding?: number | Pair } = {}, name = 'maxpool'): GraphValue {
    const k = pair(kernel, 1);
    return this.emit({ kind: 'maxPool', kernel: k, stride: pair(opts.stride, k[0]), padding: pair(opts.padding, 0) }, [x], name);
  }
}

export interface GraphHooks {
  /** Sees (and may replace) every value as it is produced, the input included. */
  act?: (value: GraphValue, t: Tensor) => Tensor;
  /** Sees (and may replace) the weight of every conv / linear layer. */
  weight?: (layer: string, w: Tensor) => Tensor;
}

export type WeightedLayer = { layer: string; module: Conv2d | Linear; kind: 'conv' | 'linear' };

/** The plain inference graph of a model; see the file comment. */
export class InferenceGraph {
  readonly input: GraphValue = 'input';
  constructor(
    readonly nodes: readonly GraphNode[],
    readonly output: GraphValue,
  ) {}

  /** The conv and linear layers in graph order. */
  layers(): WeightedLayer[] {
    const out: WeightedLayer[] = [];
    for (const n of this.nodes) if (n.op.kind === 'conv' || n.op.kind === 'linear') out.push({ layer: n.op.layer, module: n.op.module, kind: n.op.kind });
    return out;
  }

  /** The nodes that read a value. */
  consumers(v: GraphValue): GraphNode[] {
    return this.nodes.filter((n) => n.inputs.includes(v));
  }

  /** The node that produces a value (undefined for the input). */
  producer(v: GraphValue): GraphNode | undefined {
    return this.nodes.find((n) => n.output === v);
  }

  /** Input channels (from the first layer reading the input). */
  inChannels(): number {
    const first = this.consumers(this.input).find((n) => n.op.kind === 'conv');
    if (!first || first.op.kind !== 'conv') throw new Error('graph: the input does not feed a conv layer; its channel count is unknown');
    return first.op.module.inChannels;
  }

  /** Output features when the output is a linear layer's (else null: only known at run time). */
  outFeatures(): number | null {
    const last = this.producer(this.output);
    return last?.op.kind === 'linear' ? last.op.module.outFeatures : null;
  }

  /** Runs the graph on `x` (libtorch; call it inside `torch.tidy`, which frees the intermediate values). */
  run(x: Tensor, hooks: GraphHooks = {}): Tensor {
    const act = hooks.act ?? ((_v, t) => t);
    const weight = hooks.weight ?? ((_l, w) => w);
    const env = new Map<GraphValue, Tensor>([[this.input, act(this.input, x)]]);
    for (const n of this.nodes) {
      const ins = n.inputs.map((v) => {
        const t = env.get(v);
        if (!t) throw new Error(`graph: value '${v}' read before it is produced (node '${n.output}')`);
        return t;
      });
      env.set(n.output, act(n.output, evalNode(n.op, ins, weight)));
    }
    const out = env.get(this.output);
    if (!out) throw new Error(`graph: the output '${this.output}' is never produced`);
    return out;
  }
}

function evalNode(op: GraphOp, xs: Tensor[], weight: (layer: string, w: Tensor) => Tensor): Tensor {
  switch (op.kind) {
    case 'conv': {
      const m = op.module;
      return F.conv2d(xs[0], weight(op.layer, m.weight), m.bias, { stride: op.stride, padding: op.padding, dilation: op.dilation, groups: op.groups });
    }
    case 'linear':
      return F.linear(xs[0], weight(op.layer, op.module.weight), op.module.bias);
    case 'batchNorm': {
      const m = op.module;
      return F.batchNorm(xs[0], m.runningMean, m.runningVar, { weight: m.weight, bias: m.bias, training: false, momentum: 0, eps: m.eps });
    }
    case 'relu':
      return F.relu(xs[0]);
    case 'sigmoid':
      return xs[0].sigmoid();
    case 'hardsigmoid':
      return F.hardsigmoid(xs[0]);
    case 'add':
      return xs[0].add(xs[1]);
    case 'mul':
      return xs[0].mul(xs[1]);
    case 'concat':
      return F.cat(xs, 1);
    case 'flatten':
      return xs[0].flatten(1);
    case 'globalAvgPool':
      return F.adaptiveAvgPool2d(xs[0], 1);
    case 'avgPool':
      return F.avgPool2d(xs[0], op.kernel, { stride: op.stride, padding: op.padding });
    case 'maxPool':
      return F.maxPool2d(xs[0], op.kernel, { stride: op.stride, padding: op.padding });
  }
}

const cache = new WeakMap<Module, { graph: InferenceGraph; modules: Module[] }>();

/**
 * The inference graph of a deployed model (cached per model, and rebuilt when its module tree changed, e.g.
 * after an in-place `reparameterizeModel`; the graph holds the model's layers, so it stays current as
 * weights change). Errors name the module that cannot be described.
 */
export function traceGraph(model: Module): InferenceGraph {
  const modules = [...model.namedModules()].map(([, m]) => m);
  const hit = cache.get(model);
  if (hit && hit.modules.length === modules.length && hit.modules.every((m, i) => m === modules[i])) return hit.graph;
  const state: BuildState = { nodes: [], names: new Set(['input']) };
  const b = new GraphBuilder('', state);
  const out = isGraphExportable(model) ? model.exportGraph(b, 'input') : b.module(model, 'input', '');
  if (out === 'input') throw new Error(`graph: ${model.constructor.name} computes nothing from its input`);
  const graph = new InferenceGraph(state.nodes, out);
  cache.set(model, { graph, modules });
  return graph;
}

/**
 * max |graph(x) - model(x)| / max |model(x)| in eval mode: 0 (up to rounding) when the graph describes the
 * model's forward; a user's `exportGraph` is checked with it.
 */
export function checkGraph(model: Module, x: Tensor): number {
  const g = traceGraph(model);
  const was = model.training;
  model.eval();
  try {
    return torch.noGrad(() =>
      torch.tidy(() => {
        const a = model.forward(x);
        const b = g.run(x);
        if (a.shape.join() !== b.shape.join()) throw new Error(`graph: output shape [${b.shape.join(', ')}] differs from the model's [${a.shape.join(', ')}]`);
        return a.sub(b).abs().max().item() / Math.max(1e-30, a.abs().max().item());
      }),
    );
  } finally {
    model.train(was);
  }
}
