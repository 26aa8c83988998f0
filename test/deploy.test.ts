/**
 * Deployment: fusion of every mode and block kind into conv3x3+bias (random BN statistics, eval mode),
 * the deployed network's state-dict names, ONNX export read back and run in ONNX Runtime (FP32 and INT8
 * against our logits), and the deploy / export / quantize / inspect-weights commands with their errors.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import * as torch from '../src/torch/index.js';
import { F } from '../src/torch/index.js';
import { RepOptVGG, RepVGGBlock, TargetBlock, LinearAddBlock, type VGGBlockInfo, type RepOptVGGMode } from '../src/models/repoptvgg.js';
import { DeployVGG, deployVGG, fuseBlock, modeOfStateDict } from '../src/deploy/fuse.js';
import { calibrate, quantizeModel } from '../src/deploy/quant.js';
import { OPSET, OnnxRunner, decodeOnnx, exportOnnx } from '../src/deploy/onnx.js';
import { saveStateDict } from '../src/train/checkpoint.js';
import type { Module } from '../src/nn/index.js';
import { REPO_ROOT } from './helpers/paths.js';
import { PYTHON } from './helpers/python.js';
import { runDeploy, runExport, runInspectWeights, runQuantize } from '../src/cli/deploy.js';
import { UsageError } from '../src/cli/flags.js';

torch.setNumThreads(1);
const CLI = path.join(REPO_ROOT, 'dist/src/cli/main.js');
const tmp = () => fs.mkdtempSync(path.join(os.tmpdir(), 'repopt-deploy-'));

function cli(args: string[]): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', env: { ...process.env, CI: 'true' } });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** Random, non-trivial BN statistics and affine parameters (and scales), so fusion has something to fold. */
function randomizeBN(m: Module, seed = 1): void {
  torch.manualSeed(seed);
  torch.noGrad(() => {
    for (const [name, t] of [...m.namedParameters(), ...m.namedBuffers()]) {
      if (name.endsWith('running_var')) t.uniform_(0.3, 2.0);
      else if (name.endsWith('running_mean')) t.normal_(0, 0.3);
      else if (t.ndim === 1 && name.endsWith('.weight')) t.uniform_(0.5, 1.5); // BN gamma and hs/csla scales
      else if (t.ndim === 1 && name.endsWith('.bias') && !name.startsWith('linear')) t.normal_(0, 0.2);
    }
  });
}

/** max |a - b| / max |a| */
function rel(a: torch.Tensor, b: torch.Tensor): number {
  return torch.tidy(() => a.sub(b).abs().max().item() / Math.max(1e-12, a.abs().max().item()));
}

const info = (cin: number, cout: number, stride: number): VGGBlockInfo => ({
  name: 'stage1.0', inChannels: cin, outChannels: cout, stride, identity: cin === cout && stride === 1, scaleInit: 1,
});

/** A block's eval-mode output against relu(conv3x3(x, W, b)) with its fused kernel. */
function blockError(block: TargetBlock | RepVGGBlock | LinearAddBlock, x: torch.Tensor): number {
  randomizeBN(block, 7);
  block.eval();
  return torch.noGrad(() =>
    torch.tidy(() => {
      const { weight, bias } = fuseBlock(block);
      const y = block.forward(x);
      const z = F.relu(F.conv2d(x, weight.float(), bias.float(), { stride: block.info.stride, padding: 1 }));
      return rel(y, z);
    }),
  );
}

test('fuseBlock: target, repvgg with identity, repvgg stride 2, repvgg in != out, hs and csla blocks equal their fused conv', () => {
  torch.manualSeed(0);
  const x8 = torch.randn([2, 8, 9, 9]);
  const x4 = torch.randn([2, 4, 9, 9]);
  const cases: [string, TargetBlock | RepVGGBlock | LinearAddBlock, torch.Tensor][] = [
    ['target', new TargetBlock(info(8, 8, 1)), x8],
    ['target stride 2', new TargetBlock(info(8, 16, 2)), x8],
    ['repvgg with identity', new RepVGGBlock(info(8, 8, 1)), x8],
    ['repvgg stride 2 (no identity)', new RepVGGBlock(info(8, 8, 2)), x8],
    ['repvgg 4 -> 8 (no identity)', new RepVGGBlock(info(4, 8, 1)), x4],
    ['hs with identity', new LinearAddBlock(info(8, 8, 1)), x8],
    ['csla stride 2', new LinearAddBlock(info(8, 16, 2), { csla: true }), x8],
  ];
  for (const [name, block, x] of cases) {
    if (block instanceof RepVGGBlock) assert.equal(block.bnIdentity !== null, name.includes('with identity'), name);
    const e = blockError(block, x);
    assert.ok(e <= 1e-5, `${name}: relative error ${e}`);
    block.dispose();
  }
});

test('deployVGG: every mode deploys to outputs equal to the trained model in eval mode (<= 1e-4 of the logits)', () => {
  for (const mode of ['target', 'repvgg', 'hs', 'csla'] as RepOptVGGMode[]) {
    torch.manualSeed(3);
    const m = new RepOptVGG({ numBlocks: [2, 2, 1, 1], widthMultiplier: [0.125, 0.125, 0.125, 0.25], mode, numClasses: 7, inChannels: 3, strides: [1, 1, 2, 2, 2] });
    randomizeBN(m, 11);
    m.eval();
    const d = deployVGG(m);
    const e = torch.tidy(() => {
      const x = torch.randn([4, 3, 20, 20]);
      return torch.noGrad(() => rel(m.forward(x), d.forward(x)));
    });
    assert.ok(e <= 1e-4, `${mode}: relative logit error ${e}`);
    assert.equal(d.training, false);
    // Training the trained model afterwards does not touch the deployed one.
    assert.notEqual(d.blocks[0].conv.weight.storageId(), (m.blocks[0] as { conv?: { weight: torch.Tensor } }).conv?.weight.storageId());
    m.dispose();
    d.dispose();
  }
});

test('DeployVGG state dict: stageX.Y.conv.{weight,bias} and linear.*; modes recognised from keys', () => {
  const m = new RepOptVGG({ numBlocks: [1, 2, 1, 1], widthMultiplier: [0.125, 0.125, 0.125, 0.125], mode: 'repvgg', numClasses: 5 });
  const d = deployVGG(m);
  const keys = [...d.stateDict().keys()];
  assert.deepEqual(keys, [
    'stage0.conv.weight', 'stage0.conv.bias',
    'stage1.0.conv.weight', 'stage1.0.conv.bias',
    'stage2.0.conv.weight', 'stage2.0.conv.bias', 'stage2.1.conv.weight', 'stage2.1.conv.bias',
    'stage3.0.conv.weight', 'stage3.0.conv.bias',
    'stage4.0.conv.weight', 'stage4.0.conv.bias',
    'linear.weight', 'linear.bias',
  ]);
  assert.deepEqual(d.stateDict().get('stage2.1.conv.weight')!.shape, [16, 16, 3, 3]);
  assert.equal(modeOfStateDict(m.stateDict().keys()), 'repvgg');
  assert.equal(modeOfStateDict(d.stateDict().keys()), 'deploy');
  const t = new RepOptVGG({ numBlocks: [1, 1, 1, 1], widthMultiplier: [0.125, 0.125, 0.125, 0.125], mode: 'target', numClasses: 5 });
  assert.equal(modeOfStateDict(t.stateDict().keys()), 'target');
  assert.throws(() => modeOfStateDict(['foo.weight']), /not a RepOpt-VGG state dict/);
  // a deployed state dict loads into a DeployVGG of the same layout
  const d2 = new DeployVGG({ layout: m.layout, numClasses: 5 });
  d2.loadStateDict(d.stateDict());
  for (const x of [m, d, t, d2]) x.dispose();
});

function smallRepVGG(seed: number, mode: RepOptVGGMode = 'repvgg'): RepOptVGG {
  torch.manualSeed(seed);
  const m = new RepOptVGG({ numBlocks: [2, 1, 1, 1], widthMultiplier: [0.125, 0.125, 0.125, 0.125], mode, numClasses: 10, inChannels: 3, strides: [1, 1, 2, 2, 2] });
  randomizeBN(m, seed + 1);
  return m.eval();
}

test('ONNX FP32: opset 13, dynamic batch, NCHW; ONNX Runtime logits equal ours (<= 1e-4 of the scale) at two batch sizes', async () => {
  const m = smallRepVGG(5);
  const d = deployVGG(m);
  const bytes = exportOnnx(d);
  const model = decodeOnnx(bytes);
  assert.equal(Number(model.opsetImport[0].version), OPSET);
  assert.ok(OPSET >= 13);
  const dims = model.graph!.input![0].type!.tensorType!.shape!.dim!;
  assert.equal(dims[0].dimParam, 'batch');
  assert.equal(Number(dims[1].dimValue), 3);
  assert.deepEqual(model.graph!.node!.map((n) => n.opType).filter((t, i, a) => a.indexOf(t) === i), ['Conv', 'Relu', 'GlobalAveragePool', 'Flatten', 'Gemm']);
  const runner = await OnnxRunner.create(bytes);
  for (const n of [1, 5]) {
    const x = torch.randn([n, 3, 16, 16]);
    const ours = torch.noGrad(() => m.forward(x)); // the trained model: fusion and export at once
    const theirs = await runner.run(x);
    assert.deepEqual(theirs.shape, [n, 10]);
    const e = rel(ours, theirs);
    assert.ok(e <= 1e-4, `batch ${n}: relative error ${e}`);
  }
  await runner.release();
  m.dispose();
  d.dispose();
});

test('ONNX INT8 (QDQ): per-channel axis 0; ONNX Runtime agrees with the fake-quant simulation (as written and optimised)', async () => {
  for (const [perChannel, quantizeFirst, quantizeLast, weightBits] of [[true, true, true, 8], [false, false, false, 4]] as const) {
    const m = smallRepVGG(9, 'target');
    const d = deployVGG(m);
    torch.manualSeed(2);
    const calib = [torch.randn([16, 3, 16, 16]), torch.randn([16, 3, 16, 16])];
    const q = quantizeModel(d, calibrate(d, calib), 'minmax', { perChannel, quantizeFirst, quantizeLast, weightBits });
    const bytes = exportOnnx(q);
    const g = decodeOnnx(bytes).graph!;
    const ops = g.node!.map((n) => n.opType);
    const dq = g.node!.filter((n) => n.opType === 'DequantizeLinear' && n.input![0].endsWith('weight_quantized'));
    assert.equal(dq.length, d.blocks.length - (quantizeFirst ? 0 : 1) + (quantizeLast ? 1 : 0));
    for (const n of dq) {
      const axis = n.attribute!.find((a) => a.name === 'axis');
      if (perChannel) assert.equal(Number(axis!.i), 0);
      else assert.equal(axis, undefined);
    }
    assert.equal(ops.filter((o) => o === 'QuantizeLinear').length, q.act.size);
    const w0 = g.initializer!.find((t) => t.name === `${quantizeFirst ? 'stage0' : 'stage1.0'}.conv.weight_quantized`)!;
    assert.equal(w0.dataType, 3); // INT8
    const codes = new Int8Array(w0.rawData!.buffer, w0.rawData!.byteOffset, w0.rawData!.byteLength);
    assert.equal(Math.max(...Array.from(codes, Math.abs)), weightBits === 8 ? 127 : 7); // 4-bit weights: int8 codes in [-8, 7]

    torch.manualSeed(4);
    const x = torch.randn([32, 3, 16, 16]);
    const sim = torch.noGrad(() => q.forward(x));
    const fp = torch.noGrad(() => d.forward(x));
    // Without graph optimisation ONNX Runtime runs Q/DQ as written: the codes equal ours except where float
    // summation order moves a value across a rounding boundary (rare; one code step), so most images agree to
    // float precision. With it, ONNX Runtime may fuse them into int8 kernels, which also round the bias to
    // int32 at scale in_scale * w_scale: small systematic differences, the same classes.
    for (const optimize of [false, true]) {
      const runner = await OnnxRunner.create(bytes, { optimize });
      const y = await runner.run(x);
      const perImage = torch.tidy(() => y.sub(sim).abs().amax([1]).div(sim.abs().max()).toArray());
      const exact = perImage.filter((e) => e <= 1e-5).length / perImage.length;
      const agree = y.argmax(1).eq(sim.argmax(1)).sum().item() / 32;
      assert.ok(agree >= 0.9, `optimize ${optimize}: top-1 agreement ${agree}`);
      if (!optimize) assert.ok(exact >= 0.75, `optimize ${optimize}: only ${exact} of the images match to 1e-5 (${perImage.join(', ')})`);
      assert.ok(Math.max(...perImage) <= 0.05, `optimize ${optimize}: max relative logit difference ${Math.max(...perImage)}`);
      await runner.release();
    }
    // and INT8 is close to, but not the same as, FP32
    const eq = rel(fp, sim);
    assert.ok(eq > 1e-6 && eq < 0.2, `INT8 vs FP32 relative difference ${eq}`);
    m.dispose();
    d.dispose();
  }
});

/** A trained-looking checkpoint with config.json beside it, as `repopt train` leaves. */
function writeRun(dir: string, mode: RepOptVGGMode): string {
  const m = smallRepVGG(13, mode);
  const file = path.join(dir, 'final.pth');
  saveStateDict(file, m.stateDict());
  fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify({ mode, model: { blocks: [2, 1, 1, 1], widths: [0.125, 0.125, 0.125, 0.125], strides: [1, 1, 2, 2, 2], inChannels: 3, numClasses: 10 } }));
  m.dispose();
  return file;
}

test('repopt deploy / export / inspect-weights / quantize on a saved run', async () => {
  const run = async (cmd: (a: string[], l: (s: string) => void) => Promise<number>, args: string[]) => {
    const lines: string[] = [];
    const status = await cmd(args, (l) => lines.push(l));
    return { status, stdout: lines.join('\n') + '\n', stderr: '' };
  };
  const dir = tmp();
  const ckpt = writeRun(dir, 'repvgg');
  let r = await run(runDeploy, ['--checkpoint', ckpt, '--out', path.join(dir, 'deployed.pth'), '--threads', '1']);
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /\(RepOpt-VGG, repvgg\) -> .*deployed\.pth: DeployVGG, [\d,]+ params/);
  const err = Number(/max \|trained - deployed\| = ([0-9.e+-]+)/.exec(r.stdout)![1]);
  assert.ok(err <= 1e-4, r.stdout);

  r = await run(runExport, ['--checkpoint', ckpt, '--format', 'onnx', '--out', path.join(dir, 'm.onnx'), '--threads', '1']);
  assert.equal(r.status, 0, r.stderr + r.stdout);
  assert.match(r.stdout, /FP32, opset 13/);
  assert.match(r.stdout, /ONNX Runtime check on 8 random images: top-1 agreement 100\.00%/);
  assert.ok(fs.statSync(path.join(dir, 'm.onnx')).size > 1000);

  r = await run(runExport, ['--checkpoint', ckpt, '--out', path.join(dir, 'q.onnx'), '--int8', '--calib', 'synthetic:64', '--calib-images', '32', '--observer', 'percentile', '--threads', '1']);
  assert.equal(r.status, 0, r.stderr + r.stdout);
  assert.match(r.stdout, /INT8 QDQ \(percentile activations on 32 images of synthetic, per-channel weights\)/);

  // the deployed state dict is itself a checkpoint (model from flags, no config.json beside it)
  const other = tmp();
  fs.copyFileSync(path.join(dir, 'deployed.pth'), path.join(other, 'deployed.pth'));
  r = await run(runInspectWeights, ['--checkpoint', path.join(other, 'deployed.pth'), '--blocks', '2,1,1,1', '--widths', '0.125,0.125,0.125,0.125', '--strides', '1,1,2,2,2', '--json']);
  assert.equal(r.status, 0, r.stderr);
  const stats = JSON.parse(r.stdout) as { mode: string; layers: { layer: string; std: number; centreStd: number }[] };
  assert.equal(stats.mode, 'deploy');
  assert.deepEqual(stats.layers.map((l) => l.layer), ['stage0.conv', 'stage1.0.conv', 'stage1.1.conv', 'stage2.0.conv', 'stage3.0.conv', 'stage4.0.conv', 'linear']);
  assert.ok(stats.layers.every((l) => l.std > 0));

  r = await run(runQuantize, ['--checkpoint', ckpt, '--data', 'synthetic:64', '--calib-images', '32', '--test-images', '32', '--onnx-images', '32', '--observers', 'minmax,mse', '--json', '--threads', '1']);
  assert.equal(r.status, 0, r.stderr);
  const rep = JSON.parse(r.stdout) as { rows: { observer: string; top1: number }[]; onnx: { agreement: number; images: number }; testImages: number; fuseError: number };
  assert.deepEqual(rep.rows.map((x) => x.observer), ['minmax', 'mse']);
  assert.equal(rep.testImages, 32);
  assert.equal(rep.onnx.images, 32);
  assert.ok(rep.onnx.agreement >= 0.9, JSON.stringify(rep.onnx));
  assert.ok(rep.fuseError <= 1e-4);
});

test('CLI errors: bad or missing checkpoint, missing flags, INT8 without calibration data', async () => {
  const dir = tmp();
  const bad = path.join(dir, 'bad.pth');
  fs.writeFileSync(bad, 'this is not a checkpoint');
  const log = () => {};
  const B = ['--blocks', '1,1,1,1', '--widths', '1,1,1,1'];
  const cases: [(a: string[], l: (s: string) => void) => Promise<number>, string[], RegExp, boolean][] = [
    // [command, argv, message, usage error?]
    [runExport, ['--format', 'onnx', '--out', path.join(dir, 'x.onnx')], /--checkpoint FILE is required/, true],
    [runExport, ['--checkpoint', path.join(dir, 'nope.pth'), '--out', path.join(dir, 'x.onnx'), ...B], /no such checkpoint/, false],
    [runExport, ['--checkpoint', bad, '--out', path.join(dir, 'x.onnx'), ...B], /bad\.pth/, false],
    [runExport, ['--checkpoint', bad, ...B], /--out FILE\.onnx is required/, true],
    [runExport, ['--checkpoint', bad, '--out', 'x.onnx', '--format', 'tflite'], /--format must be onnx/, true],
    [runExport, ['--checkpoint', bad, '--out', 'x.onnx', '--int8'], /--int8 needs calibration data/, true],
    [runExport, ['--checkpoint', bad, '--out', 'x.onnx', '--calib', 'synthetic'], /need --int8/, true],
    [runExport, ['--checkpoint', bad, '--out', 'x.onnx', '--int8', '--calib', 'synthetic', '--observer', 'kl'], /--observer must be one of/, true],
    [runDeploy, ['--checkpoint', bad], /--out FILE\.pth is required/, true],
    [runQuantize, ['--checkpoint', bad], /--data SPEC is required/, true],
    [runQuantize, ['--data', 'synthetic'], /--checkpoint FILE is required/, true],
    [runQuantize, ['--checkpoint', bad, '--data', 'synthetic', '--observers', 'minmax,kl'], /unknown observer 'kl'/, true],
    [runQuantize, ['--checkpoint', bad, '--data', 'synthetic', '--weight-scales', 'row'], /--weight-scales must be one of channel, tensor, both/, true],
    [runQuantize, ['--checkpoint', bad, '--data', 'synthetic', '--percentile', '20'], /--percentile must be in/, true],
    [runInspectWeights, ['--checkpoint', bad, '--bogus'], /unknown flag --bogus/, true],
    [runInspectWeights, [], /--checkpoint FILE is required/, true],
  ];
  for (const [cmd, args, re, usage] of cases) {
    await assert.rejects(cmd(args, log), (e: Error) => {
      assert.match(e.message, re, `${args.join(' ')}: ${e.message}`);
      assert.equal(e instanceof UsageError, usage, `${args.join(' ')}: usage error ${usage}, got ${e.constructor.name}`);
      return true;
    });
  }
  // Through the real command line: exit 2 for usage errors (a checkpoint without config.json or model
  // flags), 1 for errors (weights that do not fit the architecture), with the message on stderr.
  const m = smallRepVGG(1);
  saveStateDict(path.join(dir, 'lonely.pth'), m.stateDict());
  m.dispose();
  const r = cli(['inspect-weights', '--checkpoint', path.join(dir, 'lonely.pth')]);
  assert.equal(r.status, 2);
  assert.match(r.stderr, /no config\.json beside/);
  const r2 = cli(['inspect-weights', '--checkpoint', path.join(dir, 'lonely.pth'), '--blocks', '1,1,1,1', '--widths', '0.125,0.125,0.125,0.125']);
  assert.equal(r2.status, 1);
  assert.match(r2.stderr, /unexpected keys|missing keys|shape mismatch/);
});

test('ONNX files pass the official checker (full check, strict shape inference) where python3-onnx is installed', async (t) => {
  const probe = spawnSync(PYTHON, ['-c', 'import onnx'], { encoding: 'utf8' });
  if (probe.status !== 0) {
    t.skip('python3-onnx is not installed (apt-get install python3-onnx)');
    return;
  }
  const dir = tmp();
  const m = smallRepVGG(21);
  const d = deployVGG(m);
  torch.manualSeed(1);
  const q = quantizeModel(d, calibrate(d, [torch.randn([8, 3, 16, 16])]), 'mse', { perChannel: true, quantizeFirst: true, quantizeLast: true });
  fs.writeFileSync(path.join(dir, 'fp32.onnx'), exportOnnx(d));
  fs.writeFileSync(path.join(dir, 'int8.onnx'), exportOnnx(q));
  const r = spawnSync(PYTHON, ['-c', `
import sys, onnx
for f in sys.argv[1:]:
    m = onnx.load(f)
    onnx.checker.check_model(m, full_check=True)
    out = onnx.shape_inference.infer_shapes(m, strict_mode=True).graph.output[0].type.tensor_type.shape.dim
    print(f, m.opset_import[0].version, [d.dim_param or d.dim_value for d in out])
`, path.join(dir, 'fp32.onnx'), path.join(dir, 'int8.onnx')], { encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /fp32\.onnx 13 \['batch', 10\]/);
  assert.match(r.stdout, /int8\.onnx 13 \['batch', 10\]/);
  m.dispose();
  d.dispose();
});
