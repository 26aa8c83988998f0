/**
 * Deployment commands (flags -> library calls in src/deploy/study.ts -> printed lines):
 *   deploy           fuse a trained checkpoint into its deploy form, write its state dict
 *   export           write the deploy form as ONNX (FP32, or INT8 QDQ calibrated on data), checked in ONNX Runtime
 *   quantize         FP32 vs INT8 top-1 per observer (simulated in libtorch), optional QAT, ONNX Runtime agreement
 *   inspect-weights  per-layer weight statistics of the deployed kernels (the paper's Table 11)
 *   quant-demo       search + RepOpt training + RepVGG training on Fashion-MNIST, then all of the above side by side
 */
import { groupQuantStudies, quantComparisons, spreadOf, writeReport } from '../report/index.js';
import fs from 'node:fs';
import path from 'node:path';
import { saveStateDict } from '../train/checkpoint.js';
import { OBSERVERS, type LayerWeightStats, type QuantPolicy } from '../deploy/quant.js';
import { exportCheckpoint, int8Label as label, loadForDeploy, prepareCheckpointModel, quantizeStudy, weightReport, type CheckpointSource, type QuantReport } from '../deploy/study.js';
import { parseKeepFloat, type KeepFloat } from '../deploy/sensitivity.js';
import { exportWeb } from '../deploy/web.js';
import { runTraining, type TrainingRunOptions } from '../train/run.js';
import { UsageError, parseCommand, type Flags } from './flags.js';
import { DEPLOY_COMMAND, EXPORT_COMMAND, INSPECT_WEIGHTS_COMMAND, QUANTIZE_COMMAND, QUANT_DEMO_COMMAND, QUANT_DEMO_ARCH } from './commands.js';
import { applyThreads } from './threads.js';
import { InterruptedError } from '../train/interrupt.js';

type Log = (line: string) => void;

const pct = (x: number) => `${(x * 100).toFixed(2)}%`;

/** The checkpoint flags as the library's source. */
function source(f: { checkpoint: string; arch?: string; blocks?: number[]; widths?: number[]; strides?: number[]; model?: string }): CheckpointSource {
  return { checkpoint: f.checkpoint, model: { arch: f.arch, blocks: f.blocks, widths: f.widths, strides: f.strides, file: f.model } };
}

// ------------------------------------------------------------------ deploy

export async function runDeploy(argv: string[], log: Log): Promise<number> {
  const { flags: f } = parseCommand(DEPLOY_COMMAND, argv);
  applyThreads(f.threads);
  await prepareCheckpointModel(source(f));
  const m = loadForDeploy(source(f));
  try {
    saveStateDict(f.out, m.deployed.stateDict());
    log(`${f.checkpoint} (${m.family.name}, ${m.mode}) -> ${f.out}: ${m.deployed.constructor.name}, ${m.deployed.numParameters().toLocaleString('en-US')} params` +
      (m.trained ? ` (trained ${m.trained.numParameters().toLocaleString('en-US')}); max |trained - deployed| = ${m.fuseError.toExponential(2)} of the logits' scale` : ''));
    return 0;
  } finally {
    m.trained?.dispose();
    m.deployed.dispose();
  }
}

// ------------------------------------------------------------------ export

function keepFloatFlag(text: string | undefined): KeepFloat | undefined {
  if (text === undefined) return undefined;
  try {
    return parseKeepFloat(text);
  } catch (e) {
    throw new UsageError(`--keep-float: ${(e as Error).message.replace(/^keep-float: /, '')}`);
  }
}

export async function runExport(argv: string[], log: Log): Promise<number> {
  const { flags: f, given } = parseCommand(EXPORT_COMMAND, argv);
  if (f.web !== undefined) return runExportWeb(f, given, log);
  if (f.out === undefined) throw new UsageError('--out FILE.onnx is required (or --web DIR)');
  if (f.int8 && !f.calib) throw new UsageError('--int8 needs calibration data: --calib SPEC (e.g. fashion-mnist)');
  const int8Only = (['calib', 'calib-images', 'observer', 'per-tensor', 'weight-bits', 'fp32-first', 'fp32-last', 'percentile', 'keep-float'] as const).filter((k) => given.has(k));
  if (!f.int8 && int8Only.length) throw new UsageError(`${int8Only.map((k) => `--${k}`).join(', ')} need --int8`);
  if (given.has('web-images')) throw new UsageError('--web-images needs --web DIR');
  applyThreads(f.threads);
  const policy: QuantPolicy = { perChannel: !f['per-tensor'], quantizeFirst: !f['fp32-first'], quantizeLast: !f['fp32-last'], weightBits: f['weight-bits'] };
  const r = await exportCheckpoint({
    ...source(f),
    out: f.out,
    int8: f.int8 && f.calib ? { calib: f.calib, calibImages: f['calib-images'], observer: f.observer, percentile: f.percentile, policy, keepFloat: keepFloatFlag(f['keep-float']) } : undefined,
    imageSize: f['image-size'],
    verify: !f['no-verify'],
    seed: f.seed,
  });
  const q = r.int8;
  const what = q
    ? `INT8 QDQ (${q.observer} activations on ${q.calibImages} images of ${q.calibData}, ${q.perChannel ? 'per-channel' : 'per-tensor'}${q.weightBits < 8 ? ` ${q.weightBits}-bit` : ''} weights${q.quantizeFirst ? '' : ', first conv FP32'}${q.quantizeLast ? '' : ', last linear FP32'}${q.floatLayers.length ? `, kept in float: ${q.floatLayers.join(', ')}` : ''})`
    : 'FP32';
  log(`${r.out}: ${what}, opset 13, input [batch, ${r.inChannels}, height, width], ${r.bytes.toLocaleString('en-US')} bytes` + (r.fuseError !== null ? `; fusion error ${r.fuseError.toExponential(2)}` : ''));
  if (r.check) {
    const a = r.check;
    log(`ONNX Runtime check on ${a.images} ${a.on} images: top-1 agreement ${pct(a.agreement)}, max |logit diff| ${a.maxDiff.toExponential(2)} (${a.relMaxDiff.toExponential(2)} of the logits' scale; ${a.runtime})`);
    if (!a.ok) {
      log('ONNX Runtime disagrees with the model beyond tolerance');
      return 1;
    }
  }
  const n = r.nativeCheck;
  if (n) {
    log(`onnxruntime-node on the same images: top-1 agreement ${pct(n.agreement)}, max |logit diff| ${n.relMaxDiff.toExponential(2)} of the logits' scale` +
      (n.agreement < 0.99 && (r.int8?.weightBits ?? 8) === 8 ? ' (its int8 kernels saturate 8-bit weights on CPUs without AVX-512 VNNI: --weight-bits 7, ORT\'s reduce_range, avoids it)' : ''));
  }
  return 0;
}

type ExportFlags = Flags<typeof EXPORT_COMMAND.flags>;

async function runExportWeb(f: ExportFlags, given: ReadonlySet<string>, log: Log): Promise<number> {
  if (!f.calib) throw new UsageError('--web needs a data set: --calib SPEC (INT8 calibration on its training split; the page shows its test images)');
  const bad = (['out', 'format', 'no-verify'] as const).filter((k) => given.has(k));
  if (bad.length) throw new UsageError(`${bad.map((k) => `--${k}`).join(', ')} cannot go with --web`);
  applyThreads(f.threads);
  const policy: QuantPolicy = { perChannel: !f['per-tensor'], quantizeFirst: !f['fp32-first'], quantizeLast: !f['fp32-last'], weightBits: f['weight-bits'] };
  const r = await exportWeb({
    ...source(f),
    dir: f.web!,
    int8: { calib: f.calib, calibImages: f['calib-images'], observer: f.observer, percentile: f.percentile, policy, keepFloat: keepFloatFlag(f['keep-float']) },
    images: f['web-images'],
    imageSize: f['image-size'],
    seed: f.seed,
  });
  log(`${r.dir}: ${r.files.join(', ')}; ${r.ours.fp32.length} test images, ${r.channels}x${r.height}x${r.width}, ${r.channels === 1 ? 'a canvas to draw on' : 'a file picker'}`);
  log(`INT8: ${r.int8.observer} activations on ${r.int8.calibImages} images of ${r.int8.calibData}${r.int8.floatLayers.length ? `, kept in float: ${r.int8.floatLayers.join(', ')}` : ''}`);
  for (const k of ['fp32', 'int8'] as const) {
    const a = r.check[k];
    log(`ONNX Runtime (${a.runtime}) ${k.toUpperCase()} on the page's images: top-1 agreement ${pct(a.agreement)}, max |logit diff| ${a.relMaxDiff.toExponential(2)} of the logits' scale`);
  }
  log(`serve it with any static file server (browsers do not run pages from file://), e.g. python3 -m http.server -d ${r.dir} 8000, then open http://localhost:8000/`);
  return r.check.fp32.relMaxDiff <= 1e-4 && r.check.int8.agreement >= 0.9 ? 0 : 1;
}

// ------------------------------------------------------------------ quantize

export function formatWeightStats(rows: LayerWeightStats[]): string[] {
  const f = (x: number | null) => (x === null ? '     -' : x.toFixed(4).padStart(8));
  const lines = [`${'layer'.padEnd(10)} ${'shape'.padEnd(16)} ${'std'.padStart(8)} ${'centre'.padStart(8)} ${'around'.padStart(8)} ${'max|w|'.padStart(8)} ${'max/std'.padStart(8)} ${'err/T'.padStart(7)} ${'err/C'.padStart(7)}`];
  for (const r of rows) {
    lines.push(`${r.layer.padEnd(10)} ${`[${r.shape.join(',')}]`.padEnd(16)} ${f(r.std)} ${f(r.centreStd)} ${f(r.surroundStd)} ${f(r.maxAbs)} ${(r.maxAbs / r.std).toFixed(1).padStart(8)} ${(r.errPerTensor * 100).toFixed(2).padStart(6)}% ${(r.errPerChannel * 100).toFixed(2).padStart(6)}%`);
  }
  return lines;
}


const WEIGHT_STATS_NOTE = 'deployed kernels (BN folded, branches fused); centre = tap [1,1], around = the other 8 taps; err/T, err/C = relative RMS error of int8 weights with per-tensor / per-channel scales';

export async function runQuantize(argv: string[], log: Log): Promise<number> {
  const { flags: f } = parseCommand(QUANTIZE_COMMAND, argv);
  applyThreads(f.threads);
  const granularities = { channel: [true], tensor: [false], both: [true, false] }[f['weight-scales']];
  const r = await quantizeStudy({
    ...source(f),
    data: f.data,
    calibImages: f['calib-images'],
    testImages: f['test-images'],
    observers: f.observers,
    percentile: f.percentile,
    granularities,
    quantizeFirst: !f['fp32-first'],
    quantizeLast: !f['fp32-last'],
    weightBits: f['weight-bits'],
    qatEpochs: f['qat-epochs'],
    qatLr: f['qat-lr'],
    qatObserver: f['qat-observer'],
    qatBits: f['qat-bits'],
    onnxImages: f['onnx-images'],
    batchSize: f['batch-size'],
    seed: f.seed,
    sensitivity: f.sensitivity ? { curve: f['onnx-images'] > 0 } : undefined,
    keepFloat: keepFloatFlag(f['keep-float']),
    log: f.json ? undefined : log,
  });
  if (f.json) {
    log(JSON.stringify(r));
    return 0;
  }
  log(`${r.checkpoint} (${r.mode}); fusion error ${r.fuseError.toExponential(2)}; calibration ${r.calibImages} training images, test ${r.testImages} images`);
  if (r.floatLayers) log(`kept in float: ${r.floatLayers.join(', ')}`);
  log(`${'model'.padEnd(36)} ${'top-1'.padStart(8)} ${'drop'.padStart(8)}`);
  if (r.fp32Trained !== null) log(`${'FP32 trained (eval mode)'.padEnd(36)} ${pct(r.fp32Trained).padStart(8)}`);
  log(`${'FP32 deployed'.padEnd(36)} ${pct(r.fp32Deployed).padStart(8)}`);
  for (const row of r.rows) {
    const name = `${label(row.weightBits)} ${row.observer} (${row.perChannel ? 'per-channel' : 'per-tensor'} w)`;
    log(`${name.padEnd(36)} ${pct(row.top1).padStart(8)} ${((row.top1 - r.fp32Deployed) * 100).toFixed(2).padStart(7)}%`);
  }
  if (r.qat) log(`${`${label(r.qat.weightBits)} ${r.qat.observer} + QAT ${r.qat.epochs} ep`.padEnd(36)} ${pct(r.qat.after).padStart(8)} ${((r.qat.after - r.fp32Deployed) * 100).toFixed(2).padStart(7)}%`);
  if (r.onnx) log(`ONNX Runtime ${label(r.onnx.weightBits)} (${r.onnx.observer}, ${r.onnx.perChannel ? 'per-channel' : 'per-tensor'} w): top-1 ${pct(r.onnx.onnxTop1)} vs simulated ${pct(r.onnx.oursTop1)} on ${r.onnx.images} images, agreement ${pct(r.onnx.agreement)}, max |logit diff| ${(r.onnx.relMaxDiff * 100).toFixed(2)}% of the logits' scale`);
  if (f.weights) {
    log(`weights: ${WEIGHT_STATS_NOTE}`);
    for (const l of formatWeightStats(r.weights)) log(l);
  }
  return 0;
}

// ------------------------------------------------------------------ inspect-weights

export async function runInspectWeights(argv: string[], log: Log): Promise<number> {
  const { flags: f } = parseCommand(INSPECT_WEIGHTS_COMMAND, argv);
  applyThreads(f.threads);
  await prepareCheckpointModel(source(f));
  const m = loadForDeploy(source(f));
  try {
    const w = weightReport(m);
    if (f.json) {
      log(JSON.stringify({ checkpoint: f.checkpoint, mode: m.mode, layers: w.deployed }));
      return 0;
    }
    log(`${f.checkpoint} (${m.mode}): ${WEIGHT_STATS_NOTE}`);
    for (const l of formatWeightStats(w.deployed)) log(l);
    if (w.beforeFolding) {
      log('trained 3x3 kernels before BN folding:');
      for (const l of formatWeightStats(w.beforeFolding)) log(l);
    }
    return 0;
  } finally {
    m.trained?.dispose();
    m.deployed.dispose();
  }
}

// ------------------------------------------------------------------ quant-demo

export { QUANT_DEMO_ARCH };

export async function runQuantDemo(argv: string[], log: Log): Promise<number> {
  const { flags: f } = parseCommand(QUANT_DEMO_COMMAND, argv);
  applyThreads(f.threads);
  // With --seeds N every arm runs N times (seeds S..S+N-1, each in OUT/seed-K); one seed keeps OUT itself.
  const studies: Record<string, QuantReport>[] = [];
  for (let k = 0; k < f.seeds; k++) {
    if (f.seeds > 1) log(`\n=== seed ${f.seed + k} (${k + 1} of ${f.seeds}) ===`);
    studies.push(await quantDemoOnce(f, f.seeds > 1 ? path.join(f.out, `seed-${f.seed + k}`) : f.out, f.seed + k, log));
  }
  if (f.seeds > 1) {
    const [group] = groupQuantStudies(studies.map((arms, k) => ({ file: path.join(f.out, `seed-${f.seed + k}`, 'quant-demo.json'), arms })));
    log('');
    log(`over ${f.seeds} seeds (mean ± sd of top-1):`);
    for (let i = 0; i < group.configs.length; i++) {
      log(`${group.configs[i].padEnd(34)}${group.arms.map((n) => {
        const sp = spreadOf(group.top1[n][i]);
        return (sp ? `${sp.mean.toFixed(2)} ± ${sp.sd.toFixed(2)}` : '-').padStart(17);
      }).join('')}`);
    }
    for (const c of quantComparisons(group)) log(c.sentence);
  }
  const report = writeReport([f.out], path.join(f.out, 'report.html'), { title: 'repopt quant-demo: RepOpt-VGG vs RepVGG after quantization', commands: [['repopt', 'quant-demo', ...argv].join(' ')] });
  log(`report: ${report.file}`);
  return 0;
}

type QuantDemoFlags = Flags<typeof QUANT_DEMO_COMMAND.flags>;

/** One seed of the quant-demo: search, RepOpt-VGG and RepVGG in `out`, quantized; writes out/quant-demo.json. */
async function quantDemoOnce(f: QuantDemoFlags, out: string, seed: number, log: Log): Promise<Record<string, QuantReport>> {
  const { data, epochs } = f;
  // 8-bit weights with every observer, then narrower weights (MSE activations): where weight outliers cost.
  const bitsList = f['weight-bits'];
  const model = { blocks: f.blocks, widths: f.widths, strides: f.strides };
  // Every stage trains with train's defaults but these, in this process (logs quiet, one record per run).
  const common = { data, model, batchSize: f['batch-size'], seed, lr: f.lr, logEvery: 1_000_000, quiet: true, log };
  const t0 = performance.now();
  const stage = async (name: string, what: string, run: Omit<TrainingRunOptions, keyof typeof common | 'out' | 'resume'>): Promise<string> => {
    const dir = path.join(out, name);
    const done = path.join(dir, run.mode === 'hs' ? 'scales.pth' : 'final.pth');
    if (fs.existsSync(done)) {
      log(`[${name}] reusing ${done}`);
      return done;
    }
    const resume = fs.existsSync(path.join(dir, 'latest.pth'));
    log(`[${name}] ${what}, ${run.epochs} epoch(s)${resume ? ', resuming' : ''} -> ${dir}`);
    const r = await runTraining({ ...common, ...run, out: dir, resume });
    if (r.stopSignal) throw new InterruptedError(r.stopSignal, `${name} interrupted by ${r.stopSignal}: its checkpoint is saved; rerun quant-demo to continue`);
    log(`[${name}] done in ${((performance.now() - t0) / 1000).toFixed(0)} s${r.lastEval ? `, test top-1 ${pct(r.lastEval.top1)}` : ''}`);
    return done;
  };
  const scales = await stage('search', 'Hyper-Search', { mode: 'hs', evaluate: false, epochs: f['search-epochs'] });
  const repopt = await stage('repopt', 'RepOpt-VGG (target + RepSGD)', { mode: 'target', scales, epochs });
  const repvgg = await stage('repvgg', 'RepVGG', { mode: 'repvgg', epochs });

  const reports: Record<string, QuantReport> = {};
  for (const [name, ckpt] of [['RepOpt-VGG', repopt], ['RepVGG', repvgg]] as const) {
    log(`[quantize] ${name}: ${ckpt}`);
    reports[name] = await quantizeStudy({
      checkpoint: ckpt,
      data,
      calibImages: f['calib-images'],
      testImages: f['test-images'],
      observers: [...OBSERVERS],
      lowBitObservers: ['mse'],
      weightBits: bitsList,
      percentile: 99.99,
      granularities: [true, false],
      quantizeFirst: true,
      quantizeLast: true,
      qatEpochs: f['qat-epochs'],
      qatLr: 1e-3,
      onnxImages: f['onnx-images'],
      batchSize: 256,
      seed,
      sensitivity: f.sensitivity ? { curve: f['onnx-images'] > 0 } : undefined,
      log,
    });
  }
  fs.writeFileSync(path.join(out, 'quant-demo.json'), JSON.stringify(reports, null, 2) + '\n');
  const names = Object.keys(reports);
  const col = (s: string) => s.padStart(17);
  log('');
  log(`${data}, blocks ${f.blocks.join(',')} widths ${f.widths.join(',')} strides ${f.strides.join(',')}, ${epochs} epoch(s); INT8 calibrated on ${reports[names[0]].calibImages} training images, top-1 on ${reports[names[0]].testImages} test images`);
  log(`${''.padEnd(34)}${names.map(col).join('')}`);
  const line = (label: string, get: (r: QuantReport) => string) => log(`${label.padEnd(34)}${names.map((n) => col(get(reports[n]))).join('')}`);
  line('FP32 deployed', (r) => pct(r.fp32Deployed));
  for (const bits of bitsList) {
    for (const perChannel of [true, false]) {
      for (const obs of bits < 8 ? ['mse' as const] : OBSERVERS) {
        line(`${label(bits)} ${obs}, ${perChannel ? 'per-channel' : 'per-tensor'} w`, (r) => {
          const row = r.rows.find((x) => x.observer === obs && x.perChannel === perChannel && x.weightBits === bits)!;
          return `${pct(row.top1)} (${((row.top1 - r.fp32Deployed) * 100).toFixed(1)})`;
        });
      }
    }
  }
  if (reports[names[0]].qat) line(`${label(bitsList[0])} + QAT`, (r) => (r.qat ? `${pct(r.qat.after)} (${((r.qat.after - r.fp32Deployed) * 100).toFixed(1)})` : '-'));
  line(`ONNX Runtime ${label(bitsList[0])} agreement`, (r) => (r.onnx ? pct(r.onnx.agreement) : '-'));
  // Weight statistics of the deployed kernels. In RepVGG the identity branch lands on the centre taps of the
  // blocks that have one (stageS.I, I >= 1): the fused kernels get outliers there.
  const idBlocks = (r: QuantReport) => r.weights.filter((w) => /^stage[1-4]\.[1-9]/.test(w.layer));
  const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / Math.max(1, xs.length);
  if (idBlocks(reports[names[0]]).length) {
    line('centre/around std, identity blocks', (r) => mean(idBlocks(r).map((w) => w.centreStd! / w.surroundStd!)).toFixed(2));
    line('max|w|/std, identity blocks', (r) => mean(idBlocks(r).map((w) => w.maxAbs / w.std)).toFixed(1));
    line('int8 weight error, per-tensor', (r) => `${(mean(idBlocks(r).map((w) => w.errPerTensor)) * 100).toFixed(2)}%`);
  }
  log(`results in ${path.join(out, 'quant-demo.json')} (${((performance.now() - t0) / 1000).toFixed(0)} s)`);
  return reports;
}
