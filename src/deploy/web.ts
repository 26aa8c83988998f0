/**
 * `repopt export --web DIR`: a static page that classifies images in the browser with the exported
 * model, FP32 and INT8 side by side (web-page.ts). DIR holds index.html (the test images, the data set's
 * normalization and our library's predictions inline), app.js, model-fp32.onnx, model-int8.onnx and
 * onnxruntime-web's WebAssembly build (its bundled ES module and .wasm), nothing fetched from elsewhere.
 * Browsers do not let a page read file:// URLs, so DIR is served by any static file server.
 */
import fs from 'node:fs';
import path from 'node:path';
import * as torch from '../torch/index.js';
import type { Module } from '../nn/index.js';
import { openDataset } from '../data/dataset.js';
import { NORMALIZATION, normalizationLut } from '../data/transforms.js';
import { disposeBatches, type Batch } from '../data/batches.js';
import { OptionError } from '../errors.js';
import { exportOnnx } from './onnx.js';
import { loadForDeploy, onnxAgreement, prepareCheckpointModel, quantizeForExport, type CheckpointSource, type ExportOptions, type ExportReport, type OnnxAgreement } from './study.js';
import { WEB_APP_JS, webPageHtml, type WebPageData } from './web-page.js';

export interface WebExportOptions extends CheckpointSource {
  /** The folder to write (created; the page's files are overwritten). */
  dir: string;
  /** INT8 calibration (the data set's training split); the page's images are the first `images` of its test split. */
  int8: NonNullable<ExportOptions['int8']>;
  /** Test images embedded in the page (default 16). */
  images?: number;
  imageSize?: number;
  seed?: number;
}

export interface WebExportReport {
  dir: string;
  files: string[];
  classes: string[];
  channels: number;
  height: number;
  width: number;
  int8: NonNullable<ExportReport['int8']>;
  /** Our predictions on the embedded images: top-5 [class, probability] (FP32: libtorch; INT8: the simulation). */
  ours: { fp32: [number, number][][]; int8: [number, number][][] };
  labels: number[];
  /** The two files run on the embedded images in ONNX Runtime here (onnxruntime-node when installed). */
  check: { fp32: OnnxAgreement; int8: OnnxAgreement };
}

const ORT_FILES = ['ort.wasm.bundle.min.mjs', 'ort-wasm-simd-threaded.wasm'];

/** onnxruntime-web's files the page needs (its ES module with the wasm glue inside, and the .wasm). */
function ortWebFiles(): { dir: string; version: string } {
  let wasm: string;
  try {
    wasm = new URL(import.meta.resolve('onnxruntime-web/ort-wasm-simd-threaded.wasm')).pathname;
  } catch {
    throw new Error('the web page needs onnxruntime-web, an optional dependency of repopt: npm install onnxruntime-web');
  }
  const dir = path.dirname(wasm);
  for (const f of ORT_FILES) if (!fs.existsSync(path.join(dir, f))) throw new Error(`onnxruntime-web: ${path.join(dir, f)} is missing`);
  const pkg = JSON.parse(fs.readFileSync(path.join(dir, '..', 'package.json'), 'utf8')) as { version: string };
  return { dir, version: pkg.version };
}

function top5Of(logits: torch.Tensor): [number, number][][] {
  return torch.tidy(() => {
    const p = torch.F.softmax(logits, 1);
    const { values, indices } = p.topk(Math.min(5, p.shape[1]), 1);
    const v = values.toArray();
    const ix = indices.toArray();
    const k = values.shape[1];
    return Array.from({ length: p.shape[0] }, (_, i) => Array.from({ length: k }, (_, j): [number, number] => [ix[i * k + j], v[i * k + j]]));
  });
}

const base64 = (a: Uint8Array | Float32Array) => Buffer.from(a.buffer, a.byteOffset, a.byteLength).toString('base64');

/** Writes the page, its models and ONNX Runtime's files into `o.dir`. */
export async function exportWeb(o: WebExportOptions): Promise<WebExportReport> {
  const seed = o.seed ?? 0;
  torch.manualSeed(seed);
  const ort = ortWebFiles();
  const calibSet = openDataset(o.int8.calib, 'train', { imageSize: o.imageSize });
  const testSet = openDataset(o.int8.calib, 'test', { imageSize: o.imageSize });
  const norm = NORMALIZATION[testSet.name];
  if (!norm) throw new OptionError('calib', `${o.int8.calib}: no normalization known for '${testSet.name}'`);
  await prepareCheckpointModel(o);
  const m = loadForDeploy(o, { imageSize: testSet.height });
  let calib: Batch[] = [];
  let probe: Batch[] = [];
  try {
    const { channels: C, height: H, width: W } = testSet;
    if (C !== m.config.inChannels) throw new OptionError('calib', `${o.int8.calib}: ${C}-channel images, the model takes ${m.config.inChannels}`);
    const deployed: Module = m.deployed;
    const r = await quantizeForExport(deployed, calibSet, o.int8, { imageSize: o.imageSize, seed });
    calib = r.calib;
    const q = r.q;
    const fp32Bytes = exportOnnx(deployed);
    const int8Bytes = exportOnnx(q);

    // The page's images: the first N of the test split, normalized with the same table the page uses.
    const n = Math.min(o.images ?? 16, testSet.length);
    const lut = normalizationLut(norm, C);
    const hw = H * W;
    const pixels: Uint8Array[] = [];
    const labels: number[] = [];
    const xs = new Float32Array(n * C * hw);
    for (let i = 0; i < n; i++) {
      const s = testSet.get(i);
      pixels.push(s.pixels);
      labels.push(s.label);
      for (let c = 0; c < C; c++) for (let j = 0; j < hw; j++) xs[i * C * hw + c * hw + j] = lut[c * 256 + s.pixels[c * hw + j]];
    }
    probe = [{ x: torch.keep(torch.fromTypedArray(xs, [n, C, H, W])), y: torch.keep(torch.fromTypedArray(Int32Array.from(labels), [n]).to('int64')) }];
    const [fp32, int8] = torch.noGrad(() => [top5Of(deployed.forward(probe[0].x)), top5Of(q.forward(probe[0].x))]);
    const check = { fp32: await onnxAgreement(fp32Bytes, deployed, probe, { backend: 'auto' }), int8: await onnxAgreement(int8Bytes, q, probe, { backend: 'auto' }) };

    const classes = testSet.classNames ?? Array.from({ length: m.config.numClasses }, (_, k) => `class ${k}`);
    const info = r.info;
    const data: WebPageData = {
      title: `${path.basename(o.checkpoint)}: ${m.family.name} (${m.mode}) on ${testSet.name}`,
      channels: C, height: H, width: W, classes,
      lut: base64(lut),
      samples: pixels.map((p, i) => ({ pixels: base64(p), label: labels[i], ours: { fp32: fp32[i], int8: int8[i] } })),
      models: { fp32: 'model-fp32.onnx', int8: 'model-int8.onnx' },
      int8Note: `${info.observer} activations calibrated on ${info.calibImages} training images, ${info.perChannel ? 'per-channel' : 'per-tensor'} ${info.weightBits}-bit weights` +
        (info.floatLayers.length ? `, kept in float: ${info.floatLayers.join(', ')}` : ''),
      ortVersion: ort.version,
    };
    fs.mkdirSync(o.dir, { recursive: true });
    const files: string[] = [];
    const write = (name: string, content: string | Uint8Array) => {
      fs.writeFileSync(path.join(o.dir, name), content);
      files.push(name);
    };
    write('index.html', webPageHtml(data));
    write('app.js', WEB_APP_JS);
    write('model-fp32.onnx', fp32Bytes);
    write('model-int8.onnx', int8Bytes);
    // The source-map comment would make an open DevTools fetch a file we do not ship.
    write(ORT_FILES[0], fs.readFileSync(path.join(ort.dir, ORT_FILES[0]), 'utf8').replace(/\n\/\/# sourceMappingURL=.*\s*$/, '\n'));
    fs.copyFileSync(path.join(ort.dir, ORT_FILES[1]), path.join(o.dir, ORT_FILES[1]));
    files.push(ORT_FILES[1]);
    return { dir: o.dir, files, classes, channels: C, height: H, width: W, int8: info, ours: { fp32, int8 }, labels, check };
  } finally {
    disposeBatches(calib);
    disposeBatches(probe);
    m.trained?.dispose();
    m.deployed.dispose();
  }
}
