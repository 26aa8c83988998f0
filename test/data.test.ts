/**
 * The data layer: dataset formats (CIFAR-10/100 binaries, IDX plain and gzip,
 * image folders via sharp, synthetic), clear errors for corrupt files, transforms
 * (normalisation by hand, crop/flip/cutout/resized-crop invariants, RandAugment),
 * and the loader: determinism across worker counts, exact resume, natural order,
 * clean exit. Loader throughput is a benchmark: bench/data-loader.ts.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, mkdirSync, writeFileSync, rmSync, existsSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import os from 'node:os';
import path from 'node:path';
import { gzipSync } from 'node:zlib';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import * as torch from '../src/torch/index.js';
import { openDataset, type Dataset } from '../src/data/dataset.js';
import { DataLoader, type LoaderOptions } from '../src/data/loader.js';
import {
  NORMALIZATION,
  RAND_AUGMENT_OPS,
  Transformer,
  applyOp,
  cropPad,
  defaultTransforms,
  normalizationLut,
  outputShape,
  rrcBox,
  type TransformSpec,
} from '../src/data/transforms.js';
import { Rng, permutation } from '../src/data/rng.js';

const tmp = mkdtempSync(path.join(os.tmpdir(), 'repopt-data-'));
process.on('exit', () => rmSync(tmp, { recursive: true, force: true }));
const dir = (name: string) => {
  const d = path.join(tmp, name);
  mkdirSync(d, { recursive: true });
  return d;
};

/** Deterministic pixel value of sample s (global index), byte p. */
const pix = (s: number, p: number) => (s * 31 + p * 7 + 1) & 255;

function cifarRecords(first: number, n: number, labelOf: (s: number) => number[]): Buffer {
  const lb = labelOf(0).length;
  const rec = lb + 3072;
  const b = Buffer.alloc(n * rec);
  for (let r = 0; r < n; r++) {
    const s = first + r;
    labelOf(s).forEach((v, k) => (b[r * rec + k] = v));
    for (let p = 0; p < 3072; p++) b[r * rec + lb + p] = pix(s, p);
  }
  return b;
}

function throwsMatching(fn: () => unknown, re: RegExp): void {
  assert.throws(fn, (e: unknown) => {
    assert.ok(e instanceof Error, `expected an Error, got ${String(e)}`);
    assert.match(e.message, re);
    return true;
  });
}

// ---------------------------------------------------------------- formats

test('cifar10: train = 5 batches in order, test batch, labels and CHW pixels', () => {
  const d = dir('cifar10');
  for (let i = 1; i <= 5; i++) writeFileSync(path.join(d, `data_batch_${i}.bin`), cifarRecords((i - 1) * 3, 3, (s) => [s % 10]));
  writeFileSync(path.join(d, 'test_batch.bin'), cifarRecords(100, 2, (s) => [(s + 3) % 10]));
  const tr = openDataset(`cifar10:${d}`, 'train');
  assert.equal(tr.name, 'cifar10');
  assert.deepEqual([tr.length, tr.numClasses, tr.channels, tr.height, tr.width], [15, 10, 3, 32, 32]);
  assert.equal(tr.classNames?.[0], 'airplane');
  for (const i of [0, 4, 14]) {
    const { pixels, label } = tr.get(i);
    assert.equal(label, i % 10);
    assert.equal(pixels.length, 3072);
    for (const p of [0, 1023, 1024, 3071]) assert.equal(pixels[p], pix(i, p));
  }
  const te = openDataset(`cifar10:${d}`, 'test');
  assert.equal(te.length, 2);
  assert.equal(te.get(1).label, (101 + 3) % 10);
  assert.equal(te.get(1).pixels[5], pix(101, 5));
  assert.throws(() => tr.get(15), RangeError);
  // the archive's sub-folder is found too
  const parent = dir('cifar10-parent');
  const sub = path.join(parent, 'cifar-10-batches-bin');
  mkdirSync(sub);
  writeFileSync(path.join(sub, 'test_batch.bin'), cifarRecords(0, 1, () => [7]));
  assert.equal(openDataset(`cifar10:${parent}`, 'test').get(0).label, 7);
});

test('cifar100: fine labels, 100 classes', () => {
  const d = dir('cifar100');
  writeFileSync(path.join(d, 'train.bin'), cifarRecords(0, 4, (s) => [s % 20, (s * 37) % 100]));
  writeFileSync(path.join(d, 'test.bin'), cifarRecords(10, 2, (s) => [1, 99 - s]));
  const tr = openDataset(`cifar100:${d}`, 'train');
  assert.deepEqual([tr.length, tr.numClasses, tr.channels], [4, 100, 3]);
  assert.deepEqual([0, 1, 2, 3].map((i) => tr.get(i).label), [0, 37, 74, 11]);
  assert.equal(tr.get(3).pixels[2000], pix(3, 2000));
  assert.equal(tr.classNames?.length, 100);
  const te = openDataset(`cifar100:${d}`, 'test');
  assert.deepEqual([te.get(0).label, te.get(1).label], [89, 88]);
});

test('cifar: truncated, out-of-range and missing files give clear errors naming the file', () => {
  const d = dir('cifar10-bad');
  for (let i = 1; i <= 5; i++) writeFileSync(path.join(d, `data_batch_${i}.bin`), cifarRecords(0, 2, () => [1]));
  writeFileSync(path.join(d, 'data_batch_3.bin'), cifarRecords(0, 2, () => [1]).subarray(0, 3073 + 100));
  throwsMatching(() => openDataset(`cifar10:${d}`, 'train'), /data_batch_3\.bin: size 3173 bytes is not a multiple of the record size 3073.*truncated/);
  writeFileSync(path.join(d, 'data_batch_3.bin'), cifarRecords(0, 2, (s) => [s === 1 ? 12 : 0]));
  throwsMatching(() => openDataset(`cifar10:${d}`, 'train'), /data_batch_3\.bin: record 1: label 12 is out of range \[0, 10\)/);
  writeFileSync(path.join(d, 'data_batch_3.bin'), Buffer.alloc(0));
  throwsMatching(() => openDataset(`cifar10:${d}`, 'train'), /data_batch_3\.bin is empty/);
  throwsMatching(() => openDataset(`cifar10:${d}`, 'test'), /test_batch\.bin not found/);
  throwsMatching(() => openDataset(`cifar10:${path.join(tmp, 'nope')}`, 'test'), /folder .*nope does not exist/);
  const d100 = dir('cifar100-bad');
  writeFileSync(path.join(d100, 'train.bin'), cifarRecords(0, 2, () => [3, 100]));
  throwsMatching(() => openDataset(`cifar100:${d100}`, 'train'), /train\.bin: record 0: label 100 is out of range \[0, 100\)/);
  writeFileSync(path.join(d100, 'test.bin'), cifarRecords(0, 1, () => [3, 4]));
  writeFileSync(path.join(d100, 'test.bin'), cifarRecords(0, 3, () => [3, 4]).subarray(0, 3074 * 2 + 7));
  throwsMatching(() => openDataset(`cifar100:${d100}`, 'test'), /test\.bin: size 6155 bytes is not a multiple of the record size 3074/);
  throwsMatching(() => openDataset('imagenet:/x', 'train'), /unknown dataset 'imagenet'/);
  throwsMatching(() => openDataset('cifar10', 'train'), /needs a folder: cifar10:DIR/);
});

function idxFile(dims: number[], data: (i: number) => number, magicNdim = dims.length): Buffer {
  const count = dims.reduce((a, b) => a * b, 1);
  const b = Buffer.alloc(4 + 4 * dims.length + count);
  b[2] = 0x08;
  b[3] = magicNdim;
  dims.forEach((d, i) => b.writeUInt32BE(d, 4 + 4 * i));
  for (let i = 0; i < count; i++) b[4 + 4 * dims.length + i] = data(i);
  return b;
}

function writeIdxSet(d: string, prefix: string, n: number, h: number, w: number, gz: boolean): void {
  const img = idxFile([n, h, w], (i) => (i * 13) & 255);
  const lab = idxFile([n], (i) => (i * 3) % 10);
  writeFileSync(path.join(d, `${prefix}-images-idx3-ubyte${gz ? '.gz' : ''}`), gz ? gzipSync(img) : img);
  writeFileSync(path.join(d, `${prefix}-labels-idx1-ubyte${gz ? '.gz' : ''}`), gz ? gzipSync(lab) : lab);
}

test('IDX (MNIST / Fashion-MNIST): plain and .gz files', () => {
  const plain = dir('mnist-plain');
  writeIdxSet(plain, 'train', 6, 5, 4, false);
  writeIdxSet(plain, 't10k', 3, 5, 4, false);
  const gz = dir('fmnist-gz');
  writeIdxSet(gz, 'train', 6, 5, 4, true);
  writeIdxSet(gz, 't10k', 3, 5, 4, true);
  for (const [spec, name] of [[`mnist:${plain}`, 'mnist'], [`fashion-mnist:${gz}`, 'fashion-mnist']]) {
    const ds = openDataset(spec, 'train');
    assert.equal(ds.name, name);
    assert.deepEqual([ds.length, ds.numClasses, ds.channels, ds.height, ds.width], [6, 10, 1, 5, 4]);
    for (const i of [0, 5]) {
      const { pixels, label } = ds.get(i);
      assert.equal(label, (i * 3) % 10);
      assert.deepEqual(Array.from(pixels), Array.from({ length: 20 }, (_, p) => ((i * 20 + p) * 13) & 255));
    }
    assert.equal(openDataset(spec, 'test').length, 3);
  }
  assert.equal(openDataset(`fashion-mnist:${gz}`, 'train').classNames?.[9], 'Ankle boot');
});

test('IDX: wrong magic, truncated data, bad gzip, label out of range and count mismatch are clear errors', () => {
  const d = dir('idx-bad');
  writeIdxSet(d, 'train', 4, 3, 3, false);
  const imgs = path.join(d, 'train-images-idx3-ubyte');
  const labs = path.join(d, 'train-labels-idx1-ubyte');
  const good = idxFile([4, 3, 3], (i) => i);
  writeFileSync(imgs, idxFile([4, 3, 3], (i) => i, 1));
  throwsMatching(() => openDataset(`mnist:${d}`, 'train'), /train-images-idx3-ubyte: wrong magic number 0x00000801 \(expected 0x00000803/);
  writeFileSync(imgs, good.subarray(0, good.length - 5));
  throwsMatching(() => openDataset(`mnist:${d}`, 'train'), /train-images-idx3-ubyte: header says 4x3x3 = 36 bytes of data but the file has 31 \(truncated\)/);
  writeFileSync(imgs, good.subarray(0, 10));
  throwsMatching(() => openDataset(`mnist:${d}`, 'train'), /truncated IDX header/);
  writeFileSync(imgs, good);
  writeFileSync(labs, idxFile([4], (i) => (i === 2 ? 10 : 0)));
  throwsMatching(() => openDataset(`mnist:${d}`, 'train'), /train-labels-idx1-ubyte: label 10 of item 2 is out of range/);
  writeFileSync(labs, idxFile([5], () => 0));
  throwsMatching(() => openDataset(`mnist:${d}`, 'train'), /has 4 images but .*train-labels-idx1-ubyte has 5 labels/);
  // gzip: truncated stream
  rmSync(imgs);
  writeFileSync(imgs + '.gz', gzipSync(good).subarray(0, 20));
  throwsMatching(() => openDataset(`mnist:${d}`, 'train'), /train-images-idx3-ubyte\.gz: cannot decompress \(gzip\).*truncated or corrupt/);
  throwsMatching(() => openDataset(`mnist:${d}`, 'test'), /neither .*t10k-images-idx3-ubyte nor .*t10k-images-idx3-ubyte\.gz found/);
  throwsMatching(() => openDataset(`mnist:${path.join(tmp, 'missing')}`, 'test'), /folder .*missing does not exist/);
});

const require = createRequire(import.meta.url);
// eslint-disable-next-line @typescript-eslint/no-explicit-any
const sharp = require('sharp') as any;

test('folder: classes from sorted sub-folders, PNG and JPEG decoded by sharp to RGB imageSize', async () => {
  const d = dir('folder');
  mkdirSync(path.join(d, 'b_dog'));
  mkdirSync(path.join(d, 'a_cat'));
  const solid = (r: number, g: number, b: number, w = 10, h = 7, channels = 3) =>
    sharp({ create: { width: w, height: h, channels, background: channels === 4 ? { r, g, b, alpha: 0.5 } : { r, g, b } } });
  await solid(200, 10, 30).png().toFile(path.join(d, 'a_cat', '1.png'));
  await solid(0, 0, 250).jpeg({ quality: 95 }).toFile(path.join(d, 'a_cat', '2.jpg'));
  await solid(90, 90, 90, 5, 5).greyscale().png().toFile(path.join(d, 'b_dog', 'grey.png'));
  await solid(10, 220, 40, 6, 9, 4).png().toFile(path.join(d, 'b_dog', 'rgba.PNG'));
  writeFileSync(path.join(d, 'b_dog', 'notes.txt'), 'ignored');
  const ds = openDataset(`folder:${d}`, 'train', { imageSize: 4 });
  assert.equal(ds.name, 'folder');
  assert.deepEqual(ds.classNames, ['a_cat', 'b_dog']);
  assert.deepEqual([ds.length, ds.numClasses, ds.channels, ds.height, ds.width], [4, 2, 3, 4, 4]);
  const expect = [[200, 10, 30, 0], [0, 0, 250, 0], [90, 90, 90, 1], [10, 220, 40, 1]];
  expect.forEach(([r, g, b, label], i) => {
    const s = ds.get(i);
    assert.equal(s.label, label);
    assert.equal(s.pixels.length, 48);
    for (let p = 0; p < 16; p++)
      [r, g, b].forEach((v, c) => assert.ok(Math.abs(s.pixels[c * 16 + p] - v) <= 6, `image ${i} channel ${c}: ${s.pixels[c * 16 + p]} vs ${v}`));
  });
  assert.equal(openDataset(`folder:${d}`, 'test', {}).height, 32, 'default imageSize 32');
  // train/ and test/ sub-folders select the split
  const split = dir('folder-split');
  for (const sp of ['train', 'test']) {
    mkdirSync(path.join(split, sp, 'x'), { recursive: true });
    await solid(1, 2, 3).png().toFile(path.join(split, sp, 'x', 'a.png'));
  }
  await solid(1, 2, 3).png().toFile(path.join(split, 'train', 'x', 'b.png'));
  assert.equal(openDataset(`folder:${split}`, 'train', { imageSize: 2 }).length, 2);
  assert.equal(openDataset(`folder:${split}`, 'test', { imageSize: 2 }).length, 1);
  // a corrupt image names the file
  writeFileSync(path.join(d, 'b_dog', 'broken.png'), Buffer.from('\x89PNG\r\n\x1a\n garbage'));
  throwsMatching(() => openDataset(`folder:${d}`, 'train', { imageSize: 4 }), /broken\.png: cannot decode image/);
  throwsMatching(() => openDataset(`folder:${dir('empty-folder')}`, 'train'), /no class sub-folders/);
});

test('synthetic: deterministic, 3x32x32, 10 balanced classes, splits differ', () => {
  const a = openDataset('synthetic:50', 'train');
  const b = openDataset('synthetic:50', 'train');
  const t = openDataset('synthetic:50', 'test');
  assert.deepEqual([a.name, a.length, a.numClasses, a.channels, a.height, a.width], ['synthetic', 50, 10, 3, 32, 32]);
  for (let i = 0; i < 50; i++) {
    assert.equal(a.get(i).label, i % 10);
    assert.deepEqual(a.get(i).pixels, b.get(i).pixels);
  }
  assert.notDeepEqual(a.get(3).pixels, t.get(3).pixels);
  assert.equal(openDataset('synthetic', 'train').length, 10000);
  // learnable: same-class samples are closer than other-class ones
  const dist = (x: Uint8Array, y: Uint8Array) => x.reduce((s, v, k) => s + (v - y[k]) ** 2, 0);
  assert.ok(dist(a.get(0).pixels, a.get(10).pixels) < dist(a.get(0).pixels, a.get(1).pixels));
  throwsMatching(() => openDataset('synthetic:-3', 'train'), /positive integer/);
});

test('real Fashion-MNIST from /usr/share/datasets/fashion-mnist', (t) => {
  if (!existsSync('/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz') && !existsSync('/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte')) {
    t.skip('dataset-fashion-mnist is not installed');
    return;
  }
  const tr = openDataset('fashion-mnist', 'train');
  const te = openDataset('fashion-mnist', 'test');
  assert.deepEqual([tr.length, te.length, tr.height, tr.width, tr.channels, tr.numClasses], [60000, 10000, 28, 28, 1, 10]);
  const counts = new Array(10).fill(0);
  for (let i = 0; i < tr.length; i++) counts[tr.storage!.labels[i]]++;
  assert.deepEqual(counts, new Array(10).fill(6000));
  // the dataset's mean matches the normalisation constant
  const px = tr.storage!.pixels;
  let s = 0;
  for (let i = 0; i < px.length; i++) s += px[i];
  assert.ok(Math.abs(s / px.length / 255 - NORMALIZATION['fashion-mnist'].mean[0]) < 1e-3);
});

// ---------------------------------------------------------------- transforms

test('normalisation: table equals (v/255 - mean)/std computed by hand, CIFAR-100 constants exact', () => {
  const n = NORMALIZATION.cifar100;
  assert.deepEqual(n.mean, [0.5070751592371323, 0.48654887331495095, 0.4409178433670343]);
  assert.deepEqual(n.std, [0.2673342858792401, 0.2564384629170883, 0.27615047132568404]);
  assert.deepEqual(NORMALIZATION.cifar10, { mean: [0.4914, 0.4822, 0.4465], std: [0.247, 0.2435, 0.2616] });
  assert.deepEqual(NORMALIZATION['fashion-mnist'], { mean: [0.286], std: [0.353] });
  assert.deepEqual(NORMALIZATION.mnist, { mean: [0.1307], std: [0.3081] });
  const lut = normalizationLut(n, 3);
  for (let c = 0; c < 3; c++)
    for (const v of [0, 1, 77, 128, 254, 255]) {
      const hand = (v / 255 - n.mean[c]) / n.std[c];
      assert.ok(Math.abs(lut[c * 256 + v] - hand) < 1e-6 * Math.max(1, Math.abs(hand)), `c${c} v${v}`);
    }
  assert.equal(normalizationLut({ mean: [0.5], std: [0.5] }, 1)[255], 1);
  assert.equal(normalizationLut({ mean: [0.5], std: [0.5] }, 1)[0], -1);
});

test('loader without augmentation: x = normalised pixels in natural order, y = labels', async () => {
  const ds = openDataset(`cifar10:${path.join(tmp, 'cifar10')}`, 'train');
  const L = new DataLoader(ds, { batchSize: 4, shuffle: false, augment: false, workers: 0, transforms: defaultTransforms('cifar10', 'train') });
  const n = NORMALIZATION.cifar10;
  let seen = 0;
  for await (const { x, y, index } of L.epoch(0)) {
    assert.equal(index, seen / 4);
    assert.deepEqual(x.shape, [Math.min(4, 15 - seen), 3, 32, 32]);
    assert.equal(x.dtype, 'float32');
    assert.equal(y.dtype, 'int64');
    const xv = x.toTypedArray() as Float32Array;
    const yv = y.toArray();
    for (let k = 0; k < yv.length; k++) {
      const s = seen + k;
      assert.equal(yv[k], s % 10);
      for (const p of [0, 1500, 3071]) {
        const c = Math.floor(p / 1024);
        assert.ok(Math.abs(xv[k * 3072 + p] - (pix(s, p) / 255 - n.mean[c]) / n.std[c]) < 1e-5);
      }
    }
    seen += yv.length;
    x.dispose();
    y.dispose();
  }
  assert.equal(seen, 15);
  assert.equal(L.batchesPerEpoch, 4);
  await L.close();
});

const ramp = (c: number, h: number, w: number, lo = 1) => Uint8Array.from({ length: c * h * w }, (_, i) => lo + (i % (255 - lo)));
const unitNorm = { mean: [0], std: [1] };

test('random crop: padding 0 and full size is the identity; with padding it is a shifted window with zeros', () => {
  const src = ramp(3, 8, 8);
  const out = new Float32Array(3 * 64);
  const id = new Transformer({ randomCrop: { size: 8, padding: 0 }, normalize: unitNorm }, 3, 8, 8, true);
  id.apply(src, 0, new Rng(1), out, 0);
  assert.deepEqual(Array.from(out, (v) => Math.round(v * 255)), Array.from(src));
  const pad = new Transformer({ randomCrop: { size: 8, padding: 2 }, normalize: unitNorm }, 3, 8, 8, true);
  const shifts = new Set<string>();
  for (let s = 0; s < 200; s++) {
    pad.apply(src, 0, new Rng([5, s]), out, 0);
    const o = Array.from(out, (v) => Math.round(v * 255));
    // find the shift that explains the output
    let found = '';
    for (let dy = -2; dy <= 2 && !found; dy++)
      for (let dx = -2; dx <= 2 && !found; dx++) {
        let ok = true;
        for (let c = 0; c < 3 && ok; c++)
          for (let y = 0; y < 8 && ok; y++)
            for (let x = 0; x < 8 && ok; x++) {
              const sy = y + dy;
              const sx = x + dx;
              const want = sy >= 0 && sy < 8 && sx >= 0 && sx < 8 ? src[c * 64 + sy * 8 + sx] : 0;
              ok = o[c * 64 + y * 8 + x] === want;
            }
        if (ok) found = `${dy},${dx}`;
      }
    assert.ok(found, `sample ${s} is not a padded shift`);
    shifts.add(found);
  }
  assert.equal(shifts.size, 25, 'all 25 offsets occur');
  // evaluation: centre crop of the padded image = identity
  const ev = new Transformer({ randomCrop: { size: 8, padding: 2 }, normalize: unitNorm }, 3, 8, 8, false);
  ev.apply(src, 0, new Rng(1), out, 0);
  assert.deepEqual(Array.from(out, (v) => Math.round(v * 255)), Array.from(src));
});

test('flip: twice is the identity; the loader flips about half the samples', () => {
  const src = ramp(3, 5, 7);
  const a = new Uint8Array(src.length);
  const b = new Uint8Array(src.length);
  cropPad(src, 0, 3, 5, 7, 0, 0, 5, 7, true, a);
  assert.notDeepEqual(a, src);
  assert.equal(a[0], src[6]);
  cropPad(a, 0, 3, 5, 7, 0, 0, 5, 7, true, b);
  assert.deepEqual(b, src);
  const t = new Transformer({ flip: true, normalize: unitNorm }, 3, 5, 7, true);
  const out = new Float32Array(src.length);
  let flipped = 0;
  const N = 4000;
  for (let s = 0; s < N; s++) {
    t.apply(src, 0, new Rng([9, s]), out, 0);
    if (Math.round(out[0] * 255) === src[6]) flipped++;
    else assert.equal(Math.round(out[0] * 255), src[0]);
  }
  assert.ok(Math.abs(flipped / N - 0.5) < 0.04, `flip rate ${flipped / N}`);
});

test('cutout: one square hole of at most size^2 pixels, the same in every channel, set to 0', () => {
  const src = new Uint8Array(3 * 16 * 16).fill(255);
  const t = new Transformer({ cutout: 6, normalize: unitNorm }, 3, 16, 16, true);
  const out = new Float32Array(src.length);
  let full = 0;
  for (let s = 0; s < 300; s++) {
    t.apply(src, 0, new Rng([3, s]), out, 0);
    const zeros: number[] = [];
    for (let p = 0; p < 256; p++) {
      const z = out[p] === 0;
      assert.equal(out[256 + p] === 0, z);
      assert.equal(out[512 + p] === 0, z);
      if (z) zeros.push(p);
      else assert.equal(out[p], 1);
    }
    assert.ok(zeros.length > 0 && zeros.length <= 36);
    const ys = zeros.map((p) => p >> 4);
    const xs = zeros.map((p) => p & 15);
    const hh = Math.max(...ys) - Math.min(...ys) + 1;
    const ww = Math.max(...xs) - Math.min(...xs) + 1;
    assert.equal(hh * ww, zeros.length, 'the hole is a rectangle');
    if (zeros.length === 36) full++;
  }
  assert.ok(full > 300 * 0.3, `full holes: ${full}`);
  // no augmentation: no hole
  new Transformer({ cutout: 6, normalize: unitNorm }, 3, 16, 16, false).apply(src, 0, new Rng(1), out, 0);
  assert.ok(out.every((v) => v === 1));
});

test('random-resized crop: boxes within scale/ratio bounds, output size, constant images stay constant', () => {
  const rng = new Rng(11);
  const areas: number[] = [];
  for (let s = 0; s < 2000; s++) {
    const [i, j, h, w] = rrcBox(32, 32, [0.08, 1], [3 / 4, 4 / 3], rng);
    assert.ok(i >= 0 && j >= 0 && i + h <= 32 && j + w <= 32 && h > 0 && w > 0);
    const area = (h * w) / 1024;
    areas.push(area);
    assert.ok(area >= 0.05 && area <= 1, `area ${area}`);
    assert.ok(w / h >= 0.6 && w / h <= 1.5, `ratio ${w / h}`);
  }
  const mean = areas.reduce((a, b) => a + b, 0) / areas.length;
  assert.ok(mean > 0.4 && mean < 0.6, `mean area ${mean}`);
  assert.deepEqual(rrcBox(10, 10, [1, 1], [1, 1], rng), [0, 0, 10, 10]);
  // constant image -> constant output at the requested size; identity when the box is the image
  const cst = new Uint8Array(3 * 40 * 30).fill(77);
  const t = new Transformer({ randomResizedCrop: 16, normalize: unitNorm }, 3, 40, 30, true);
  assert.deepEqual(t.outShape, [3, 16, 16]);
  const out = new Float32Array(3 * 256);
  for (let s = 0; s < 20; s++) {
    t.apply(cst, 0, new Rng([2, s]), out, 0);
    assert.ok(out.every((v) => Math.round(v * 255) === 77));
  }
  const src = ramp(3, 12, 12);
  const id = new Transformer({ randomResizedCrop: { size: 12, scale: [1, 1], ratio: [1, 1] }, normalize: unitNorm }, 3, 12, 12, true);
  const o2 = new Float32Array(src.length);
  id.apply(src, 0, new Rng(4), o2, 0);
  assert.deepEqual(Array.from(o2, (v) => Math.round(v * 255)), Array.from(src));
  // a horizontal ramp stays monotone after resampling (2x upscale and 3x downscale)
  const hr = Uint8Array.from({ length: 24 * 24 }, (_, i) => (i % 24) * 10);
  for (const size of [48, 8]) {
    const tt = new Transformer({ randomResizedCrop: { size, scale: [1, 1], ratio: [1, 1] }, normalize: unitNorm }, 1, 24, 24, true);
    const o = new Float32Array(size * size);
    tt.apply(hr, 0, new Rng(1), o, 0);
    for (let x = 1; x < size; x++) assert.ok(o[x] >= o[x - 1]);
    assert.ok(Math.abs(o[size * size - 1] * 255 - (size === 48 ? 230 : 220)) <= 12);
  }
  // evaluation: the whole image resized
  const ev = new Transformer({ randomResizedCrop: 8, normalize: unitNorm }, 1, 24, 24, false);
  const oe = new Float32Array(64);
  ev.apply(hr, 0, new Rng(1), oe, 0);
  assert.ok(Math.abs(oe[0] * 255 - 10) < 6 && Math.abs(oe[7] * 255 - 220) < 6, `${oe[0] * 255} ${oe[7] * 255}`);
});

test('RandAugment: every op keeps shape and uint8 range; op semantics spot checks', () => {
  const rng = new Rng(21);
  for (const c of [1, 3]) {
    const h = 9;
    const w = 11;
    const base = Uint8Array.from({ length: c * h * w }, () => rng.int(256));
    for (const op of RAND_AUGMENT_OPS)
      for (const m of [0, 9, 30])
        for (const sign of [-1, 1]) {
          const img = base.slice();
          const spare = new Uint8Array(img.length);
          const res = applyOp(op, img, spare, c, h, w, m, 31, sign);
          assert.equal(res.length, c * h * w);
          if (op === 'Identity' || (m === 0 && ['ShearX', 'ShearY', 'TranslateX', 'TranslateY', 'Rotate', 'Brightness', 'Color', 'Contrast', 'Sharpness', 'Posterize'].includes(op)))
            assert.deepEqual(res, base, `${op} m=${m} is the identity`);
        }
    const run = (op: (typeof RAND_AUGMENT_OPS)[number], m: number, sign = 1) => applyOp(op, base.slice(), new Uint8Array(base.length), c, h, w, m, 31, sign);
    // posterize m=30 keeps 4 bits
    assert.ok(run('Posterize', 30).every((v, i) => v === (base[i] & 0xf0)));
    // solarize m=30: threshold 0 inverts everything
    assert.ok(run('Solarize', 30).every((v, i) => v === 255 - base[i]));
    // autocontrast stretches each channel to 0..255
    const ac = run('AutoContrast', 0);
    for (let ch = 0; ch < c; ch++) {
      const part = ac.subarray(ch * h * w, (ch + 1) * h * w);
      assert.equal(Math.min(...part), 0);
      assert.equal(Math.max(...part), 255);
    }
    // translate x by +t moves content right
    const t = Math.trunc((150 / 331) * w * (9 / 30));
    const tx = run('TranslateX', 9);
    assert.equal(tx[t], base[0]);
    assert.equal(tx[0], 0);
    // equalize spreads a narrow histogram
    const narrow = Uint8Array.from({ length: c * 32 * 32 }, (_, i) => 100 + (i % 20));
    const eq = applyOp('Equalize', narrow.slice(), new Uint8Array(narrow.length), c, 32, 32, 0, 31, 1);
    assert.ok(Math.max(...eq) - Math.min(...eq) > 150);
  }
  // in the pipeline: finite values, the shape, and the source untouched
  const spec: TransformSpec = { randomCrop: { size: 32, padding: 4 }, flip: true, randAugment: { n: 2, m: 9 }, cutout: 8, normalize: NORMALIZATION.cifar10 };
  const tr = new Transformer(spec, 3, 32, 32, true);
  const src = ramp(3, 32, 32);
  const copy = src.slice();
  const out = new Float32Array(3072);
  const { mean, std } = NORMALIZATION.cifar10;
  for (let s = 0; s < 200; s++) {
    tr.apply(src, 0, new Rng([8, s]), out, 0);
    out.forEach((v, i) => {
      const c = i >> 10;
      assert.ok(Number.isFinite(v) && v >= -mean[c] / std[c] - 1e-5 && v <= (1 - mean[c]) / std[c] + 1e-5, `${v} at ${i}`);
    });
  }
  assert.deepEqual(src, copy);
  assert.throws(() => new Transformer({ ...spec, randAugment: { n: 2, m: 31 } }, 3, 32, 32, true), /randAugment\.m must be in \[0, 30\]/);
  assert.throws(() => new Transformer({ randomCrop: { size: 40 }, normalize: unitNorm }, 3, 32, 32, true), /exceeds the padded image/);
  assert.throws(() => new Transformer({ normalize: { mean: [0, 0], std: [1, 1] } }, 3, 32, 32, true), /normalize\.mean needs 1 or 3 values/);
});

test('defaultTransforms: release-like recipes', () => {
  assert.deepEqual(defaultTransforms('cifar100', 'train'), { randomCrop: { size: 32, padding: 4 }, flip: true, normalize: NORMALIZATION.cifar100 });
  assert.deepEqual(defaultTransforms('cifar100', 'test'), { normalize: NORMALIZATION.cifar100 });
  assert.deepEqual(defaultTransforms('cifar10', 'train', false), { normalize: NORMALIZATION.cifar10 });
  assert.deepEqual(defaultTransforms('fashion-mnist', 'train'), { randomCrop: { size: 28, padding: 2 }, flip: true, normalize: NORMALIZATION['fashion-mnist'] });
  assert.equal(defaultTransforms('mnist', 'train').flip, undefined);
  assert.equal(defaultTransforms({ name: 'folder', height: 64, width: 64 }, 'train').randomResizedCrop, 64);
  assert.deepEqual(outputShape(defaultTransforms('cifar10', 'train'), 3, 32, 32), [3, 32, 32]);
  assert.throws(() => defaultTransforms('imagenet', 'train'), /unknown dataset/);
});

// ---------------------------------------------------------------- loader

async function collect(L: DataLoader, e: number, start = 0): Promise<{ x: Float32Array; y: number[]; index: number; shape: number[] }[]> {
  const res = [];
  for await (const b of L.epoch(e, start)) {
    res.push({ x: b.x.toTypedArray() as Float32Array, y: b.y.toArray(), index: b.index, shape: b.x.shape });
    b.x.dispose();
    b.y.dispose();
  }
  return res;
}

const heavy = (ds: Dataset): TransformSpec => ({ ...defaultTransforms(ds, 'train'), cutout: 8, randAugment: { n: 2, m: 9 } });

test('determinism: same seed gives identical batches with 0, 1 and 2 workers and any prefetch; other seeds differ', async () => {
  const ds = openDataset('synthetic:300', 'train');
  const opts = (workers: number, seed = 7, prefetch?: number): LoaderOptions => ({ batchSize: 64, seed, workers, prefetch, transforms: heavy(ds) });
  const runs = [];
  for (const [w, p] of [[0, undefined], [1, undefined], [2, undefined], [2, 1], [1, 7]] as const) {
    const L = new DataLoader(ds, opts(w, 7, p));
    runs.push(await collect(L, 2));
    await L.close();
  }
  assert.equal(runs[0].length, 5);
  assert.deepEqual(runs[0].map((b) => b.shape), [[64, 3, 32, 32], [64, 3, 32, 32], [64, 3, 32, 32], [64, 3, 32, 32], [44, 3, 32, 32]]);
  for (const r of runs.slice(1)) assert.deepEqual(r, runs[0]);
  const other = new DataLoader(ds, opts(1, 8));
  const r8 = await collect(other, 2);
  assert.notDeepEqual(r8[0].y, runs[0][0].y);
  assert.notDeepEqual(r8[0].x, runs[0][0].x);
  const e3 = await collect(other, 3);
  assert.notDeepEqual(e3[0].y, r8[0].y, 'epochs are shuffled differently');
  await other.close();
  // every sample exactly once per epoch
  const all = runs[0].flatMap((b) => b.y);
  const counts = new Array(10).fill(0);
  for (const y of all) counts[y]++;
  assert.deepEqual(counts, new Array(10).fill(30));
});

test('resume: epoch(e, k) equals the tail of epoch(e); dropLast; no-shuffle order', async () => {
  const ds = openDataset('synthetic:200', 'train');
  const L = new DataLoader(ds, { batchSize: 32, seed: 3, workers: 1, transforms: heavy(ds) });
  const full = await collect(L, 4);
  const tail = await collect(L, 4, 3);
  assert.deepEqual(tail, full.slice(3));
  assert.deepEqual(tail.map((b) => b.index), [3, 4, 5, 6]);
  assert.deepEqual(await collect(L, 4, 7), []);
  // breaking out of an epoch and starting another is fine
  for await (const b of L.epoch(4)) {
    b.x.dispose();
    b.y.dispose();
    break;
  }
  assert.deepEqual((await collect(L, 4, 5)).map((b) => b.y), full.slice(5).map((b) => b.y));
  await L.close();
  assert.throws(() => L.epoch(0), /closed/);

  const D = new DataLoader(ds, { batchSize: 32, dropLast: true, shuffle: false, augment: false, workers: 2, transforms: defaultTransforms(ds, 'train') });
  assert.equal(D.batchesPerEpoch, 6);
  const nat = await collect(D, 0);
  assert.deepEqual(nat.flatMap((b) => b.y), Array.from({ length: 192 }, (_, i) => i % 10));
  assert.deepEqual(Array.from(D.order(5)), Array.from({ length: 200 }, (_, i) => i));
  await D.close();
  const perm = Array.from(permutation(200, [3, 1, 4])).sort((a, b) => a - b);
  assert.deepEqual(perm, Array.from({ length: 200 }, (_, i) => i));
});

test('a dataset without shared storage (only get) gives the same batches inline and in workers', async () => {
  const base = openDataset('synthetic:100', 'train');
  const plain: Dataset = {
    name: 'custom',
    length: base.length,
    numClasses: 10,
    channels: 3,
    height: 32,
    width: 32,
    get: (i) => base.get(i),
  };
  const spec = heavy(base);
  const res = [];
  for (const workers of [0, 2]) {
    const L = new DataLoader(plain, { batchSize: 16, seed: 5, workers, transforms: spec });
    res.push(await collect(L, 1));
    await L.close();
  }
  assert.deepEqual(res[1], res[0]);
  const S = new DataLoader(base, { batchSize: 16, seed: 5, workers: 1, transforms: spec });
  assert.deepEqual(await collect(S, 1), res[0]);
  await S.close();
});

test('a loader that is never closed does not keep the process alive', () => {
  const here = path.dirname(fileURLToPath(import.meta.url));
  const code = `
    import { openDataset } from ${JSON.stringify(path.join(here, '../src/data/dataset.js'))};
    import { DataLoader } from ${JSON.stringify(path.join(here, '../src/data/loader.js'))};
    import { defaultTransforms } from ${JSON.stringify(path.join(here, '../src/data/transforms.js'))};
    const ds = openDataset('synthetic:64', 'train');
    const L = new DataLoader(ds, { batchSize: 8, workers: 2, prefetch: 4, transforms: defaultTransforms(ds, 'train') });
    for await (const b of L.epoch(0)) { console.log('batch', b.index); break; }
  `;
  const r = spawnSync(process.execPath, ['--input-type=module', '-e', code], { timeout: 30000, encoding: 'utf8' });
  assert.equal(r.signal, null, `the child hung: ${r.stderr}`);
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /batch 0/);
});
