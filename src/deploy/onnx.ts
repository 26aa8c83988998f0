/**
 * ONNX export of the deployed network (FP32) and of its INT8 form (QDQ: QuantizeLinear /
 * DequantizeLinear pairs), encoded with the ONNX protobuf schema of the `onnx-proto` package, and a runner
 * on ONNX Runtime's WebAssembly backend (`onnxruntime-web`, which ships its .wasm files and runs offline
 * in Node) for checking the files.
 *
 * Graph (opset 13, IR version 7): input `input` float32 [batch, C, height, width] (batch, height and
 * width symbolic), output `logits` float32 [batch, classes]. The nodes are the model's inference graph
 * (graph.ts), one ONNX node each: Conv (kernel, pads, strides, dilations, group: dense, grouped and
 * depthwise), Gemm (transB = 1) for linear layers, BatchNormalization (a standalone eval BN), Relu, Sigmoid, HardSigmoid (alpha 1/6, beta 0.5:
 * PyTorch's), Add, Mul, Concat (axis 1), Flatten (axis 1), GlobalAveragePool, AveragePool
 * (count_include_pad, as PyTorch), MaxPool. Initializers carry the state-dict names (`stage0.conv.weight`,
 * `blocks.0.0.ghost1.cheap_operation.bias`, ...); intermediate tensors the graph's value names.
 * INT8 (the scheme of quant.ts): initializers `L.weight_quantized` (int8), `L.weight_scale`
 * (float [Cout], or a scalar for per-tensor weights), `L.weight_zero_point` (int8 zeros), dequantized
 * with axis 0; every quantized activation X goes through QuantizeLinear(X_scale, X_zero_point: uint8) and
 * DequantizeLinear, and every reader of X reads the dequantized tensor. ONNX Runtime fuses these patterns
 * into its int8 kernels (QLinearConv and friends).
 */
import onnxProto from 'onnx-proto';
import type { Tensor } from '../torch/index.js';
import * as torch from '../torch/index.js';
import type { Module } from '../nn/index.js';
import { traceGraph, type GraphValue, type InferenceGraph } from './graph.js';
import { isReparameterizable } from '../repopt/reparam.js';
import { QuantizedNet, quantizeWeightInt8, type QParams } from './quant.js';

const { onnx } = onnxProto;
type INodeProto = onnxProto.onnx.INodeProto;
type ITensorProto = onnxProto.onnx.ITensorProto;
type IAttributeProto = onnxProto.onnx.IAttributeProto;

export const OPSET = 13;
export const IR_VERSION = 7;
const DT = onnx.TensorProto.DataType;
const AT = onnx.AttributeProto.AttributeType;

function bytesOf(a: Float32Array | Int8Array | Uint8Array): Uint8Array {
  return new Uint8Array(a.buffer, a.byteOffset, a.byteLength).slice();
}

function floatInit(name: string, dims: number[], data: ArrayLike<number>): ITensorProto {
  return { name, dataType: DT.FLOAT, dims, rawData: bytesOf(Float32Array.from(data)) };
}

function tensorInit(name: string, t: Tensor): ITensorProto {
  return floatInit(name, t.shape, t.detach().float().toArray());
}

const ints = (name: string, v: number[]): IAttributeProto => ({ name, type: AT.INTS, ints: v });
const int = (name: string, v: number): IAttributeProto => ({ name, type: AT.INT, i: v });
const float = (name: string, v: number): IAttributeProto => ({ name, type: AT.FLOAT, f: v });

export interface OnnxExportOptions {
  /** Written into the model's doc string. */
  docString?: string;
  producerVersion?: string;
  /** The network's name in the doc string and graph name (default: the model's class name). */
  title?: string;
}

/**
 * The ONNX bytes of a deployed network (any model {@link traceGraph} describes: `DeployVGG`, a deployed
 * RepOpt-GhostNet, a user's re-parameterized net), of a training form that re-parameterizes as a whole
 * (exported as its `reparameterize()`), or of a simulated INT8 network (`QuantizedNet`: same weights,
 * quantized with the scales and activation parameters it uses).
 */
export function exportOnnx(net: Module, o: OnnxExportOptions = {}): Uint8Array {
  const q = net instanceof QuantizedNet ? net : null;
  const model = q ? q.model : net;
  let graph: InferenceGraph;
  try {
    graph = q ? q.graph : traceGraph(model);
  } catch (e) {
    // A training form that re-parameterizes as a whole (RepOptVGG, GhostNet): export its deploy form.
    if (q || !isReparameterizable(model)) throw e;
    const deployed = model.reparameterize();
    try {
      return exportOnnx(deployed, { ...o, title: o.title ?? model.constructor.name });
    } finally {
      deployed.dispose();
    }
  }
  const nodes: INodeProto[] = [];
  const inits: ITensorProto[] = [];
  let counter = 0;
  const node = (opType: string, input: string[], output: string, attribute: IAttributeProto[] = []) => {
    nodes.push({ opType, input, output: [output], name: `${opType}_${counter++}`, attribute });
    return output;
  };

  /** QuantizeLinear + DequantizeLinear of an activation (uint8, per tensor). */
  const qdq = (x: string, site: string, p: QParams): string => {
    inits.push(floatInit(`${site}_scale`, [], [p.scale]));
    inits.push({ name: `${site}_zero_point`, dataType: DT.UINT8, dims: [], rawData: Uint8Array.of(p.zeroPoint) });
    const xq = node('QuantizeLinear', [x, `${site}_scale`, `${site}_zero_point`], `${site}_quantized`);
    return node('DequantizeLinear', [xq, `${site}_scale`, `${site}_zero_point`], `${site}_dequantized`);
  };

  /** A weight initializer; int8 + DequantizeLinear when the layer is quantized. */
  const weight = (layer: string, name: string, w: Tensor): string => {
    if (!q || !q.layers.has(layer)) {
      inits.push(tensorInit(name, w));
      return name;
    }
    const scales = q.scalesOf(layer);
    const codes = quantizeWeightInt8(w, scales, q.weightBits);
    inits.push({ name: `${name}_quantized`, dataType: DT.INT8, dims: w.shape, rawData: bytesOf(codes) });
    if (q.policy.perChannel) {
      inits.push(floatInit(`${name}_scale`, [scales.length], scales));
      inits.push({ name: `${name}_zero_point`, dataType: DT.INT8, dims: [scales.length], rawData: new Uint8Array(scales.length) });
      return node('DequantizeLinear', [`${name}_quantized`, `${name}_scale`, `${name}_zero_point`], `${name}_dequantized`, [int('axis', 0)]);
    }
    inits.push(floatInit(`${name}_scale`, [], [scales[0]]));
    inits.push({ name: `${name}_zero_point`, dataType: DT.INT8, dims: [], rawData: new Uint8Array(1) });
    return node('DequantizeLinear', [`${name}_quantized`, `${name}_scale`, `${name}_zero_point`], `${name}_dequantized`);
  };
  /** The graph value as an ONNX tensor name: after QDQ where it is an activation site. */
  const onnxName = new Map<GraphValue, string>();
  const produced = (v: GraphValue, name: string) => {
    const p = q?.act.get(v);
    onnxName.set(v, p ? qdq(name, v, p) : name);
  };
  const read = (v: GraphValue) => onnxName.get(v)!;
  const output = 'logits';

  torch.noGrad(() =>
    torch.tidy(() => {
      produced(graph.input, 'input');
      for (const n of graph.nodes) {
        const ins = n.inputs.map(read);
        const out = n.output === graph.output ? output : n.output;
        const op = n.op;
        switch (op.kind) {
          case 'conv': {
            const m = op.module;
            const w = weight(op.layer, `${op.layer}.weight`, m.weight);
            const inputs = [ins[0], w];
            if (m.bias) {
              inits.push(tensorInit(`${op.layer}.bias`, m.bias));
              inputs.push(`${op.layer}.bias`);
            }
            const [p0, p1] = op.padding;
            node('Conv', inputs, out, [
              ints('kernel_shape', m.weight.shape.slice(2)),
              ints('pads', [p0, p1, p0, p1]),
              ints('strides', op.stride),
              ints('dilations', op.dilation),
              int('group', op.groups),
            ]);
            break;
          }
          case 'linear': {
            const m = op.module;
            const inputs = [ins[0], weight(op.layer, `${op.layer}.weight`, m.weight)];
            if (m.bias) {
              inits.push(tensorInit(`${op.layer}.bias`, m.bias));
              inputs.push(`${op.layer}.bias`);
            }
            node('Gemm', inputs, out, [int('transB', 1)]);
            break;
          }
          case 'batchNorm': {
            const m = op.module;
            const c = m.numFeatures;
            const names = ['scale', 'B', 'mean', 'var'].map((k) => `${op.layer}.${k}`);
            const values = [m.weight ?? torch.ones([c]), m.bias ?? torch.zeros([c]), m.runningMean!, m.runningVar!];
            names.forEach((n, i) => inits.push(tensorInit(n, values[i])));
            node('BatchNormalization', [ins[0], ...names], out, [float('epsilon', m.eps)]);
            break;
          }
          case 'relu':
            node('Relu', ins, out);
            break;
          case 'sigmoid':
            node('Sigmoid', ins, out);
            break;
          case 'hardsigmoid': // PyTorch's relu6(x + 3) / 6 = clip(x / 6 + 0.5, 0, 1)
            node('HardSigmoid', ins, out, [float('alpha', 1 / 6), float('beta', 0.5)]);
            break;
          case 'add':
            node('Add', ins, out);
            break;
          case 'mul':
            node('Mul', ins, out);
            break;
          case 'concat':
            node('Concat', ins, out, [int('axis', 1)]);
            break;
          case 'flatten':
            node('Flatten', ins, out, [int('axis', 1)]);
            break;
          case 'globalAvgPool':
            node('GlobalAveragePool', ins, out);
            break;
          case 'avgPool':
          case 'maxPool': {
            const [p0, p1] = op.padding;
            const attrs = [ints('kernel_shape', op.kernel), ints('strides', op.stride), ints('pads', [p0, p1, p0, p1])];
            // PyTorch's avg_pool2d counts the zero padding in the mean by default.
            if (op.kind === 'avgPool') attrs.push(int('count_include_pad', 1));
            node(op.kind === 'avgPool' ? 'AveragePool' : 'MaxPool', ins, out, attrs);
            break;
          }
        }
        produced(n.output, out);
      }
    }),
  );
  if (read(graph.output) !== output) throw new Error('ONNX export: the output is quantized; logits must stay float');

  const cin = graph.inChannels();
  const classes = graph.outFeatures();
  const title = o.title ?? model.constructor.name;
  const m = onnx.ModelProto.create({
    irVersion: IR_VERSION,
    producerName: 'repopt',
    producerVersion: o.producerVersion ?? '0.1.0',
    docString: o.docString ?? `${title} deployed network, ${q ? 'INT8 (QDQ)' : 'FP32'}`,
    opsetImport: [{ domain: '', version: OPSET }],
    graph: {
      name: `${title.replace(/[^A-Za-z0-9_]/g, '_')}${q ? '_int8' : ''}`,
      node: nodes,
      initializer: inits,
      input: [{ name: 'input', type: { tensorType: { elemType: DT.FLOAT, shape: { dim: [{ dimParam: 'batch' }, { dimValue: cin }, { dimParam: 'height' }, { dimParam: 'width' }] } } } }],
      output: [{ name: output, type: { tensorType: { elemType: DT.FLOAT, shape: { dim: [{ dimParam: 'batch' }, classes === null ? { dimParam: 'classes' } : { dimValue: classes }] } } } }],
    },
  });
  const err = onnx.ModelProto.verify(m);
  if (err) throw new Error(`ONNX export: invalid model: ${err}`);
  return onnx.ModelProto.encode(m).finish();
}

/** Decodes ONNX bytes (for inspection and tests). */
export function decodeOnnx(bytes: Uint8Array): onnxProto.onnx.ModelProto {
  return onnx.ModelProto.decode(bytes);
}

type Ort = typeof import('onnxruntime-web');
type OrtSession = import('onnxruntime-web').InferenceSession;
let ortPromise: Promise<Ort> | null = null;

/** Which ONNX Runtime runs a model: the WebAssembly build (`web`), the native one (`node`), or node when installed (`auto`). */
export type OnnxBackend = 'web' | 'node' | 'auto';
export type OnnxRuntimeName = 'onnxruntime-web' | 'onnxruntime-node';

const notFound = (e: unknown) => {
  const code = (e as { code?: string }).code;
  return code === 'ERR_MODULE_NOT_FOUND' || code === 'MODULE_NOT_FOUND';
};

/**
 * onnxruntime-web, loaded on first use, single-threaded WebAssembly backend, errors only. It is an
 * optional peer dependency (about 140 MB): only running ONNX models needs it, exporting does not.
 * Not exported, so the package's types never name it.
 */
function loadOrt(): Promise<Ort> {
  ortPromise ??= import('onnxruntime-web').catch((e: unknown) => {
    ortPromise = null;
    if (notFound(e)) throw new Error('running ONNX models needs ONNX Runtime, an optional dependency of repopt: npm install onnxruntime-web');
    throw e;
  }).then((ort) => {
    ort.env.wasm.numThreads = 1;
    ort.env.wasm.proxy = false;
    ort.env.logLevel = 'error';
    return ort;
  });
  return ortPromise;
}

/**
 * The subset of onnxruntime-node's API used here (the same as onnxruntime-web's, both re-export
 * onnxruntime-common). Declared by hand: onnxruntime-node is an optional peer that a build may lack,
 * so its types cannot be imported.
 */
interface OrtNode {
  InferenceSession: { create(bytes: Uint8Array, opts: { executionProviders: string[]; graphOptimizationLevel: 'disabled' | 'all'; intraOpNumThreads: number; interOpNumThreads: number }): Promise<OrtSession> };
  Tensor: Ort['Tensor'];
  env: { logLevel?: string };
}
let ortNodePromise: Promise<OrtNode | null> | null = null;

/** onnxruntime-node when installed (null when not): its CPU binaries ship in the package. */
function loadOrtNode(): Promise<OrtNode | null> {
  const name = 'onnxruntime-node'; // a variable, so TypeScript does not look for the optional module's types
  ortNodePromise ??= (import(name) as Promise<OrtNode & { default?: OrtNode }>).then(
    (m) => {
      const ort = m.InferenceSession ? m : m.default!;
      ort.env.logLevel = 'error';
      return ort;
    },
    (e: unknown) => {
      if (notFound(e)) return null;
      throw e;
    },
  );
  return ortNodePromise;
}

/** Whether onnxruntime-node can be loaded here. */
export async function hasOrtNode(): Promise<boolean> {
  return (await loadOrtNode()) !== null;
}

/** An ONNX Runtime session over ONNX bytes: `run(x)` gives the logits as a tensor. */
export class OnnxRunner {
  private constructor(
    private readonly session: OrtSession,
    private readonly TensorCtor: Ort['Tensor'],
    /** The runtime that runs it. */
    readonly runtime: OnnxRuntimeName,
  ) {}

  /**
   * `optimize` (default true) lets ONNX Runtime fuse the QDQ patterns into its int8 kernels; false runs
   * every node as written (QuantizeLinear/DequantizeLinear in float: the fake-quant arithmetic).
   * `backend` (default `web`): `node` needs onnxruntime-node, `auto` takes it when installed. Both run
   * on one thread (as our libtorch checks do).
   */
  static async create(bytes: Uint8Array, opts: { optimize?: boolean; backend?: OnnxBackend } = {}): Promise<OnnxRunner> {
    const level = opts.optimize === false ? 'disabled' : 'all';
    const backend = opts.backend ?? 'web';
    if (backend !== 'web') {
      const node = await loadOrtNode();
      if (node) {
        const session = await node.InferenceSession.create(bytes, { executionProviders: ['cpu'], graphOptimizationLevel: level, intraOpNumThreads: 1, interOpNumThreads: 1 });
        return new OnnxRunner(session, node.Tensor, 'onnxruntime-node');
      }
      if (backend === 'node') throw new Error('the node backend needs onnxruntime-node, an optional dependency of repopt: npm install --ignore-scripts onnxruntime-node (see the README)');
    }
    const ort = await loadOrt();
    const session = await ort.InferenceSession.create(bytes, { executionProviders: ['wasm'], graphOptimizationLevel: level });
    return new OnnxRunner(session, ort.Tensor, 'onnxruntime-web');
  }

  async run(x: Tensor): Promise<Tensor> {
    const data = x.detach().float().contiguous().toTypedArray() as Float32Array;
    const out = await this.session.run({ input: new this.TensorCtor('float32', data, x.shape) });
    const y = out.logits;
    return torch.fromTypedArray(Float32Array.from(y.data as Float32Array), y.dims.map(Number));
  }

  async release(): Promise<void> {
    await this.session.release();
  }
}
