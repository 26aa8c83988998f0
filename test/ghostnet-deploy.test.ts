/**
 * RepOpt-GhostNet deployment through the generic path: every mode fuses (re-parameterization interface)
 * into plain convs with the trained model's eval logits; its inference graph equals its forward; ONNX
 * FP32 and INT8 (QDQ) run in ONNX Runtime against our logits and the fake-quant simulation; a user's
 * network with its own re-parameterizable block, concat and pooling goes the same way.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import * as torch from '../src/torch/index.js';
import { F, type Tensor } from '../src/torch/index.js';
import { BatchNorm2d, Conv2d, Linear, Module, ReLU, Sequential } from '../src/nn/index.js';
import { GhostNet, GhostModule, GHOSTNET_MODES } from '../src/models/ghostnet.js';
import { DeployGhostNet, DeployGhostModule } from '../src/models/ghostnet-deploy.js';
import { isReparameterizable, reparameterizeModel } from '../src/repopt/reparam.js';
import { checkGraph, traceGraph, type GraphBuilder, type GraphValue } from '../src/deploy/graph.js';
import { activationSites, calibrate, quantizeModel, QuantizedNet } from '../src/deploy/quant.js';
import { OnnxRunner, decodeOnnx, exportOnnx } from '../src/deploy/onnx.js';
import { PYTHON } from './helpers/python.js';

torch.setNumThreads(1);

/** Non-trivial BN statistics and affines, scales off their init: fusion has something to fold. */
function randomize(m: Module, seed: number): void {
  torch.manualSeed(seed);
  torch.noGrad(() => {
    for (const [name, t] of [...m.namedParameters(), ...m.namedBuffers()]) {
      if (name.endsWith('running_var')) t.uniform_(0.3, 2.0);
      else if (name.endsWith('running_mean')) t.normal_(0, 0.3);
      else if (/(fusion_scale|cheap_operation\.1)\.weight$/.test(name) && t.ndim === 1) t.uniform_(-1.2, 1.5); // scales, or rep's cheap-op BN
      else if (t.ndim === 1 && name.endsWith('.weight')) t.uniform_(0.5, 1.5);
      else if (t.ndim === 1 && name.endsWith('.bias') && !/conv_head|classifier|se\./.test(name)) t.normal_(0, 0.2);
    }
  });
}

/** Runs onnx.checker (full check) and strict shape inference on ONNX files; null when python3-onnx is missing. */
function officialCheck(files: Record<string, Uint8Array>): string | null {
  if (spawnSync(PYTHON, ['-c', 'import onnx'], { encoding: 'utf8' }).status !== 0) return null;
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'repopt-ghost-onnx-'));
  const paths = Object.entries(files).map(([name, bytes]) => {
    const f = path.join(dir, `${name}.onnx`);
    fs.writeFileSync(f, bytes);
    return f;
  });
  const r = spawnSync(PYTHON, ['-c', `
import sys, os, onnx
for f in sys.argv[1:]:
    m = onnx.load(f)
    onnx.checker.check_model(m, full_check=True)
    out = onnx.shape_inference.infer_shapes(m, strict_mode=True).graph.output[0].type.tensor_type.shape.dim
    print(os.path.basename(f), m.opset_import[0].version, [d.dim_param or d.dim_value for d in out])
`, ...paths], { encoding: 'utf8' });
  fs.rmSync(dir, { recursive: true, force: true });
  assert.equal(r.status, 0, r.stderr);
  return r.stdout;
}

const rel = (a: Tensor, b: Tensor) => torch.tidy(() => a.sub(b).abs().max().item() / Math.max(1e-12, a.abs().max().item()));

test('every mode fuses to the plain deploy form: same eval logits (float64 1e-10, float32 1e-4), no BN left, model unchanged', () => {
  for (const dtype of ['float64', 'float32'] as const) {
    for (const mode of GHOSTNET_MODES) {
      const m = new GhostNet({ width: 0.5, mode, numClasses: 10, dtype });
      randomize(m, 3);
      m.eval();
      assert.ok(isReparameterizable(m));
      const before = new Map([...m.stateDict()].map(([k, t]) => [k, torch.keep(t.clone())]));
      const d = reparameterizeModel(m);
      assert.ok(d instanceof DeployGhostNet, mode);
      assert.equal(d.training, false);
      const keys = [...d.stateDict().keys()];
      assert.ok(!keys.some((k) => /bn|running|scale|fusion/.test(k)), `${mode}: ${keys.filter((k) => /bn|running|scale|fusion/.test(k)).join(', ')}`);
      assert.ok(keys.includes('blocks.0.0.ghost1.cheap_operation.bias') && keys.includes('blocks.1.0.conv_dw.bias') && keys.includes('blocks.1.0.shortcut.1.bias'));
      assert.deepEqual(d.stateDict().get('blocks.6.3.ghost1.cheap_operation.weight')!.shape, [120, 1, 3, 3]);
      torch.noGrad(() =>
        torch.tidy(() => {
          const x = torch.randn([3, 3, 32, 32], { dtype });
          const y = m.forward(x);
          const e = rel(y, d.forward(x));
          assert.ok(y.abs().max().item() > 1e-3);
          assert.ok(e <= (dtype === 'float64' ? 1e-10 : 1e-4), `${dtype} ${mode}: deployed vs trained ${e}`);
        }),
      );
      for (const [k, t] of m.stateDict()) assert.ok(torch.tidy(() => before.get(k)!.sub(t).abs().max().item()) === 0, `${mode}: ${k} changed`);
      for (const t of before.values()) t.dispose();
      // a deployed state dict loads into a fresh deploy form of the same width
      const d2 = new DeployGhostNet({ width: 0.5, numClasses: 10, dtype });
      d2.loadStateDict(d.stateDict());
      d2.dispose();
      d.dispose();
      m.dispose();
    }
  }
});

test('one Ghost module (any mode) reparameterizes to one depthwise conv; in place inside a user network', () => {
  for (const mode of GHOSTNET_MODES) {
    const g = new GhostModule(6, 8, true, mode, 0.7, { dtype: 'float64' });
    randomize(g, 5);
    g.eval();
    const x = torch.randn([2, 6, 9, 9], { dtype: 'float64' });
    const d = g.reparameterize();
    assert.ok(d instanceof DeployGhostModule);
    torch.noGrad(() => assert.ok(rel(g.forward(x), d.forward(x)) < 1e-12, mode));
    // timm-style in place: a Sequential holding the module
    const net = new Sequential(new Conv2d(6, 6, 1, { dtype: 'float64' }), new GhostModule(6, 8, false, mode, 0.7, { dtype: 'float64' }));
    randomize(net, 6);
    net.eval();
    const want = torch.noGrad(() => net.forward(x));
    reparameterizeModel(net);
    assert.ok(net.layers[1] instanceof DeployGhostModule);
    torch.noGrad(() => assert.ok(rel(want, net.forward(x)) < 1e-12, `${mode} in place`));
    d.dispose();
    g.dispose();
    net.dispose();
  }
});

test('the deploy form\'s inference graph is its forward; every layer kind named by its state-dict prefix', () => {
  const m = new GhostNet({ width: 0.5, mode: 'hs', numClasses: 10 });
  randomize(m, 8);
  const d = m.reparameterize();
  const g = traceGraph(d);
  const kinds = new Set(g.nodes.map((n) => n.op.kind));
  for (const k of ['conv', 'linear', 'relu', 'hardsigmoid', 'add', 'mul', 'flatten', 'globalAvgPool']) assert.ok(kinds.has(k as never), k);
  const convs = g.layers().filter((l) => l.kind === 'conv');
  const depthwise = convs.filter((l) => (l.module as Conv2d).options.groups === (l.module as Conv2d).outChannels && l.module.weight.shape[1] === 1);
  assert.equal(depthwise.length, 32 + 4 + 5); // cheap ops, stride-2 conv_dw, shortcut depthwise convs
  assert.deepEqual(new Set(g.layers().map((l) => `${l.layer}.weight`)), new Set(d.namedParameters().map(([k]) => k).filter((k) => k.endsWith('.weight'))));
  torch.manualSeed(9);
  assert.ok(checkGraph(d, torch.randn([2, 3, 32, 32])) <= 1e-6);
  // the training form has no inference graph: the error says what to do
  assert.throws(() => traceGraph(m), /re-parameterize/);
  d.dispose();
  m.dispose();
});

test('ONNX FP32 of the deployed GhostNet (every mode): ONNX Runtime logits equal the trained model\'s (1e-4) at two batch sizes', async () => {
  for (const mode of GHOSTNET_MODES) {
    const m = new GhostNet({ width: 0.5, mode, numClasses: 10 });
    randomize(m, 11);
    m.eval();
    // a re-parameterizable training model is accepted as is (deployed on the fly)
    const bytes = exportOnnx(m);
    const ops = new Set(decodeOnnx(bytes).graph!.node!.map((n) => n.opType));
    assert.deepEqual([...ops].sort(), ['Add', 'Conv', 'Flatten', 'Gemm', 'GlobalAveragePool', 'HardSigmoid', 'Mul', 'Relu']);
    const runner = await OnnxRunner.create(bytes);
    for (const n of [1, 4]) {
      const x = torch.randn([n, 3, 32, 32]);
      const ours = torch.noGrad(() => m.forward(x));
      const theirs = await runner.run(x);
      assert.deepEqual(theirs.shape, [n, 10]);
      const e = rel(ours, theirs);
      assert.ok(e <= 1e-4, `${mode} batch ${n}: relative error ${e}`);
    }
    await runner.release();
    m.dispose();
  }
});

test('INT8 QDQ of the deployed GhostNet: ONNX Runtime agrees with the fake-quant simulation; close to FP32', async () => {
  const m = new GhostNet({ width: 0.5, mode: 'target', numClasses: 10 });
  randomize(m, 12);
  const d = m.reparameterize();
  torch.manualSeed(13);
  const calib = [torch.randn([16, 3, 32, 32]), torch.randn([16, 3, 32, 32])];
  const q = quantizeModel(d, calibrate(d, calib), 'minmax', { perChannel: true, quantizeFirst: true, quantizeLast: true });
  assert.ok(q instanceof QuantizedNet);
  const sites = activationSites(d, q.policy);
  assert.equal(sites[0], 'input');
  assert.ok(sites.includes('blocks.0.0.ghost1.primary_conv.1') && sites.includes('blocks.3.0.se.pool'), sites.slice(0, 12).join(', '));
  const bytes = exportOnnx(q);
  const g = decodeOnnx(bytes).graph!;
  const dq = g.node!.filter((n) => n.opType === 'DequantizeLinear' && n.input![0].endsWith('weight_quantized'));
  assert.equal(dq.length, traceGraph(d).layers().length);
  assert.equal(g.node!.filter((n) => n.opType === 'QuantizeLinear').length, q.act.size);
  const x = torch.randn([32, 3, 32, 32]);
  const sim = torch.noGrad(() => q.forward(x));
  const fp = torch.noGrad(() => d.forward(x));
  for (const optimize of [false, true]) {
    const runner = await OnnxRunner.create(bytes, { optimize });
    const y = await runner.run(x);
    const perImage = torch.tidy(() => y.sub(sim).abs().amax([1]).div(sim.abs().max()).toArray());
    const agree = y.argmax(1).eq(sim.argmax(1)).sum().item() / 32;
    assert.ok(agree >= 0.85, `optimize ${optimize}: top-1 agreement ${agree}`);
    if (!optimize) assert.ok(perImage.filter((e) => e <= 1e-4).length / 32 >= 0.5, `as written: ${perImage.join(', ')}`);
    assert.ok(Math.max(...perImage) <= 0.1, `optimize ${optimize}: max relative logit difference ${Math.max(...perImage)}`);
    await runner.release();
  }
  const eq = rel(fp, sim);
  assert.ok(eq > 1e-6 && eq < 0.3, `INT8 vs FP32 relative difference ${eq}`);
  d.dispose();
  m.dispose();
});

/** A user's own multi-branch block (3x3 + 1x3 + 3x1 convs + identity, each with BN) and its plain form. */
class MyBlock extends Module {
  readonly k33: Sequential;
  readonly k13: Sequential;
  readonly k31: Sequential;
  readonly id: BatchNorm2d;
  constructor(readonly c: number) {
    super();
    const branch = (kh: number, kw: number) => new Sequential(new Conv2d(c, c, [kh, kw], { padding: [(kh - 1) / 2, (kw - 1) / 2], bias: false }), new BatchNorm2d(c));
    this.k33 = this.registerModule('k33', branch(3, 3));
    this.k13 = this.registerModule('k13', branch(1, 3));
    this.k31 = this.registerModule('k31', branch(3, 1));
    this.id = this.registerModule('id', new BatchNorm2d(c));
  }
  forward(x: Tensor): Tensor {
    return F.relu(this.k33.forward(x).add(this.k13.forward(x)).add(this.k31.forward(x)).add(this.id.forward(x)));
  }
  reparameterize(): Module {
    const fold = (k: Tensor, bn: BatchNorm2d) => {
      const s = bn.weight!.div(bn.runningVar!.add(bn.eps).sqrt());
      return { w: k.mul(s.view([-1, 1, 1, 1])), b: bn.bias!.sub(bn.runningMean!.mul(s)) };
    };
    const conv = new Conv2d(this.c, this.c, 3, { padding: 1 });
    torch.noGrad(() =>
      torch.tidy(() => {
        const eye = torch.pad(torch.eye(this.c).view([this.c, this.c, 1, 1]), [1, 1, 1, 1]);
        const parts = [
          fold((this.k33.layers[0] as Conv2d).weight, this.k33.layers[1] as BatchNorm2d),
          fold(torch.pad((this.k13.layers[0] as Conv2d).weight, [0, 0, 1, 1]), this.k13.layers[1] as BatchNorm2d),
          fold(torch.pad((this.k31.layers[0] as Conv2d).weight, [1, 1, 0, 0]), this.k31.layers[1] as BatchNorm2d),
          fold(eye, this.id),
        ];
        conv.weight.copy_(parts.reduce((a, p) => a.add(p.w), torch.zerosLike(conv.weight)));
        conv.bias!.copy_(parts.reduce((a, p) => a.add(p.b), torch.zerosLike(conv.bias!)));
      }),
    );
    return new Sequential(conv, new ReLU()).eval();
  }
}

/** A user's network with its own forward: two blocks on two paths, concatenated, a BN, average-pooled, a head. */
class MyNet extends Module {
  readonly stem: Conv2d;
  a: Module;
  b: Module;
  readonly norm: BatchNorm2d;
  readonly head: Linear;
  constructor() {
    super();
    this.stem = this.registerModule('stem', new Conv2d(3, 8, 3, { stride: 2, padding: 1 }));
    this.a = this.registerModule('a', new MyBlock(8));
    this.b = this.registerModule('b', new MyBlock(8));
    this.norm = this.registerModule('norm', new BatchNorm2d(16));
    this.head = this.registerModule('head', new Linear(16 * 4 * 4, 5));
  }
  forward(x: Tensor): Tensor {
    const s = F.relu(this.stem.forward(x));
    const y = F.cat([this.a.forward(s), this.b.forward(F.maxPool2d(s, 3, { stride: 1, padding: 1 }))], 1);
    return this.head.forward(F.avgPool2d(this.norm.forward(y), 2).flatten(1));
  }
  /** The same forward once more, as graph operations: what a user writes to export their own network. */
  exportGraph(g: GraphBuilder, x: GraphValue): GraphValue {
    const s = g.relu(g.module(this.stem, x, 'stem'), 'stem_relu');
    const y = g.concat([g.module(this.a, s, 'a'), g.module(this.b, g.maxPool(s, 3, { stride: 1, padding: 1 }, 'pool1'), 'b')], 'cat');
    return g.module(this.head, g.flatten(g.avgPool(g.module(this.norm, y, 'norm'), 2, {}, 'pool2'), 'flat'), 'head');
  }
}

test('a user network (own block, concat, BN, max/avg pooling): reparameterizeModel, graph, ONNX FP32 and INT8 in ONNX Runtime', async () => {
  torch.manualSeed(20);
  const net = new MyNet();
  randomize(net, 21);
  net.eval();
  const x = torch.randn([4, 3, 16, 16]);
  const want = torch.noGrad(() => net.forward(x));
  assert.throws(() => exportOnnx(new Sequential(new MyBlock(3))), /MyBlock at '0' has no inference graph/);
  reparameterizeModel(net);
  assert.ok(!(net.a instanceof MyBlock));
  const got = torch.noGrad(() => net.forward(x));
  assert.ok(rel(want, got) <= 1e-5, `deployed vs trained ${rel(want, got)}`);
  assert.ok(checkGraph(net, x) <= 1e-6);
  const bytes = exportOnnx(net);
  const ops = new Set(decodeOnnx(bytes).graph!.node!.map((n) => n.opType));
  for (const op of ['Conv', 'Relu', 'MaxPool', 'Concat', 'BatchNormalization', 'AveragePool', 'Flatten', 'Gemm']) assert.ok(ops.has(op), op);
  const runner = await OnnxRunner.create(bytes);
  const y = await runner.run(x);
  assert.ok(rel(want, y) <= 1e-4, `ONNX Runtime vs ours ${rel(want, y)}`);
  await runner.release();
  const q = quantizeModel(net, calibrate(net, [torch.randn([16, 3, 16, 16])]), 'minmax');
  const qr = await OnnxRunner.create(exportOnnx(q), { optimize: false });
  const sim = torch.noGrad(() => q.forward(x));
  const yq = await qr.run(x);
  assert.ok(rel(sim, yq) <= 0.05, `INT8 ONNX Runtime vs simulation ${rel(sim, yq)}`);
  await qr.release();
  const out = officialCheck({ user_fp32: bytes, user_int8: exportOnnx(q) });
  if (out !== null) assert.match(out, /user_fp32\.onnx 13 \['batch', 5\][\s\S]*user_int8\.onnx 13 \['batch', 5\]/);
  net.dispose();
});

test('GhostNet ONNX files (FP32 and INT8) pass the official checker (full check, strict shape inference)', async (t) => {
  const m = new GhostNet({ width: 0.5, mode: 'rep', numClasses: 10 });
  randomize(m, 30);
  const d = m.reparameterize();
  torch.manualSeed(31);
  const q = quantizeModel(d, calibrate(d, [torch.randn([8, 3, 32, 32])]), 'mse', { perChannel: true, quantizeFirst: true, quantizeLast: true });
  const out = officialCheck({ fp32: exportOnnx(d), int8: exportOnnx(q) });
  d.dispose();
  m.dispose();
  if (out === null) {
    t.skip('python3-onnx is not installed (apt-get install python3-onnx)');
    return;
  }
  assert.match(out, /fp32\.onnx 13 \['batch', 10\]/);
  assert.match(out, /int8\.onnx 13 \['batch', 10\]/);
});
