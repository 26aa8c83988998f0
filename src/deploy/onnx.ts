/**
 * ONNX export of the deployed network (FP32) and of its INT8 form (QDQ: QuantizeLinear /
 * DequantizeLinear pairs), encoded with the ONNX protobuf schema of the `onnx-proto` package, and a runner
 * on ONNX Runtime's WebAssembly backend (`onnxruntime-web`, which ships its .wasm files and runs offline
 * in Node) for checking the files.
 *
 * Graph (opset 13, IR version 7): input `input` float32 [batch, C, height, width] (batch, height and
 * width symbolic), output `logits` float32 [batch, classes]. Per block `P` (stage0, stage1.0, ...):
 *   Conv(P.conv.weight, P.conv.bias; 3x3, pads 1, strides s) -> Relu
 * then GlobalAveragePool -> Flatten -> Gemm(linear.weight, linear.bias, transB = 1).
 * INT8 (the scheme of quant.ts): initializers `P.conv.weight_quantized` (int8), `P.conv.weight_scale`
 * (float [Cout], or a scalar for per-tensor weights), `P.conv.weight_zero_point` (int8 zeros), dequantized
 * with axis 0; every quantized activation X goes through QuantizeLinear(X_scale, X_zero_point: uint8) and
 * DequantizeLinear. ONNX Runtime fuses these patterns into its int8 kernels (QLinearConv and friends).
 */
import onnxProto from 'onnx-proto';
import type { Tensor } from '../torch/index.js';
import * as torch from '../torch/index.js';
import type { DeployVGG } from './fuse.js';
import { QuantizedVGG, quantizeWeightInt8, type QParams } from './quant.js';

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

export interface OnnxExportOptions {
  /** Written into the model's doc string. */
  docString?: string;
  producerVersion?: string;
}

/**
 * The ONNX bytes of a deployed network (`DeployVGG`) or of its simulated INT8 form (`QuantizedVGG`:
 * same weights, quantized with the scales and activation parameters it uses).
 */
export function exportOnnx(net: DeployVGG | QuantizedVGG, o: OnnxExportOptions = {}): Uint8Array {
  const q = net instanceof QuantizedVGG ? net : null;
  const model = q ? q.model : (net as DeployVGG);
  if (model.blocks.some((b) => b.postSE)) throw new Error('ONNX export of post-SE blocks is not supported');
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
  const act = (x: string, site: string): string => {
    const p = q?.act.get(site);
    return p ? qdq(x, site, p) : x;
  };

  torch.noGrad(() =>
    torch.tidy(() => {
      let x = act('input', 'input');
      for (const b of model.blocks) {
        const p = b.info.name;
        const w = weight(p, `${p}.conv.weight`, b.conv.weight);
        inits.push(tensorInit(`${p}.conv.bias`, b.conv.bias!));
        const s = b.info.stride;
        const y = node('Conv', [x, w, `${p}.conv.bias`], `${p}.conv`, [ints('kernel_shape', [3, 3]), ints('pads', [1, 1, 1, 1]), ints('strides', [s, s])]);
        x = act(node('Relu', [y], `${p}.relu`), p);
      }
      const pooled = node('GlobalAveragePool', [x], 'pool.global');
      const feats = act(node('Flatten', [pooled], 'pool', [int('axis', 1)]), 'pool');
      const lw = weight('linear', 'linear.weight', model.linear.weight);
      const gemmIn = [feats, lw];
      if (model.linear.bias) {
        inits.push(tensorInit('linear.bias', model.linear.bias));
        gemmIn.push('linear.bias');
      }
      node('Gemm', gemmIn, 'logits', [int('transB', 1)]);
    }),
  );

  const cin = model.layout[0].inChannels;
  const m = onnx.ModelProto.create({
    irVersion: IR_VERSION,
    producerName: 'repopt',
    producerVersion: o.producerVersion ?? '0.1.0',
    docString: o.docString ?? (q ? 'RepOpt-VGG deployed network, INT8 (QDQ)' : 'RepOpt-VGG deployed network, FP32'),
    opsetImport: [{ domain: '', version: OPSET }],
    graph: {
      name: q ? 'repopt_vgg_int8' : 'repopt_vgg',
      node: nodes,
      initializer: inits,
      input: [{ name: 'input', type: { tensorType: { elemType: DT.FLOAT, shape: { dim: [{ dimParam: 'batch' }, { dimValue: cin }, { dimParam: 'height' }, { dimParam: 'width' }] } } } }],
      output: [{ name: 'logits', type: { tensorType: { elemType: DT.FLOAT, shape: { dim: [{ dimParam: 'batch' }, { dimValue: model.numClasses }] } } } }],
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
let ortPromise: Promise<Ort> | null = null;

/** onnxruntime-web, loaded on first use, single-threaded WebAssembly backend, errors only. */
export function loadOrt(): Promise<Ort> {
  ortPromise ??= import('onnxruntime-web').then((ort) => {
    ort.env.wasm.numThreads = 1;
    ort.env.wasm.proxy = false;
    ort.env.logLevel = 'error';
    return ort;
  });
  return ortPromise;
}

/** An ONNX Runtime session over ONNX bytes: `run(x)` gives the logits as a tensor. */
export class OnnxRunner {
  private constructor(private readonly session: import('onnxruntime-web').InferenceSession, private readonly ort: Ort) {}

  /**
   * `optimize` (default true) lets ONNX Runtime fuse the QDQ patterns into its int8 kernels; false runs
   * every node as written (QuantizeLinear/DequantizeLinear in float: the fake-quant arithmetic).
   */
  static async create(bytes: Uint8Array, opts: { optimize?: boolean } = {}): Promise<OnnxRunner> {
    const ort = await loadOrt();
    const session = await ort.InferenceSession.create(bytes, { executionProviders: ['wasm'], graphOptimizationLevel: opts.optimize === false ? 'disabled' : 'all' });
    return new OnnxRunner(session, ort);
  }

  async run(x: Tensor): Promise<Tensor> {
    const data = x.detach().float().contiguous().toTypedArray() as Float32Array;
    const out = await this.session.run({ input: new this.ort.Tensor('float32', data, x.shape) });
    const y = out.logits;
    return torch.fromTypedArray(Float32Array.from(y.data as Float32Array), y.dims.map(Number));
  }

  async release(): Promise<void> {
    await this.session.release();
  }
}
