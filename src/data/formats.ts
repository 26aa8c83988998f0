/**
 * Readers for the binary dataset formats. Every problem with a file is an Error
 * naming the file and what is wrong.
 */
import { existsSync, readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import { gunzipSync } from 'node:zlib';
import { InMemoryDataset, sharedBytes, sharedInt32 } from './memory.js';
import { Rng, STREAM, hashWords, mix32 } from './rng.js';

const CIFAR10_NAMES = ['airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship', 'truck'];
const CIFAR100_NAMES = (
  'apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly camel can castle ' +
  'caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup dinosaur dolphin elephant flatfish ' +
  'forest fox girl hamster house kangaroo keyboard lamp lawn_mower leopard lion lizard lobster man maple_tree motorcycle ' +
  'mountain mouse mushroom oak_tree orange orchid otter palm_tree pear pickup_truck pine_tree plain plate poppy porcupine ' +
  'possum rabbit raccoon ray road rocket rose sea seal shark shrew skunk skyscraper snail snake spider squirrel streetcar ' +
  'sunflower sweet_pepper table tank telephone television tiger tractor train trout tulip turtle wardrobe whale willow_tree ' +
  'wolf woman worm'
).split(' ');
const FASHION_NAMES = ['T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal', 'Shirt', 'Sneaker', 'Bag', 'Ankle boot'];
const MNIST_NAMES = ['0', '1', '2', '3', '4', '5', '6', '7', '8', '9'];

const CIFAR_PIXELS = 3 * 32 * 32;

function readFile(file: string, what: string): Buffer {
  try {
    if (!statSync(file).isFile()) throw new Error('not a regular file');
    return readFileSync(file);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    const why = code === 'ENOENT' ? 'file not found' : (e as Error).message;
    throw new Error(`${what}: cannot read ${file}: ${why}`);
  }
}

/** DIR or its conventional sub-folder, whichever holds `probe`. */
function resolveDir(dir: string, sub: string, probe: string, what: string): string {
  if (existsSync(path.join(dir, probe))) return dir;
  if (existsSync(path.join(dir, sub, probe))) return path.join(dir, sub);
  if (!existsSync(dir)) throw new Error(`${what}: folder ${dir} does not exist`);
  throw new Error(`${what}: ${path.join(dir, probe)} not found (nor in ${path.join(dir, sub)})`);
}

function labelNames(file: string, expect: number): string[] | null {
  if (!existsSync(file)) return null;
  const names = readFileSync(file, 'utf8').split(/\r?\n/).map((s) => s.trim()).filter((s) => s.length > 0);
  return names.length === expect ? names : null;
}

/** Reads CIFAR binary records (`labelBytes` label bytes then 3072 CHW pixels) from files into one dataset. */
function readCifarRecords(
  name: 'cifar10' | 'cifar100',
  files: string[],
  labelBytes: number,
  labelIndex: number,
  numClasses: number,
  split: 'train' | 'test',
  classNames: string[],
): InMemoryDataset {
  const what = name === 'cifar10' ? 'CIFAR-10' : 'CIFAR-100';
  const rec = labelBytes + CIFAR_PIXELS;
  const bufs = files.map((f) => {
    const b = readFile(f, name);
    if (b.length === 0) throw new Error(`${name}: ${f} is empty`);
    if (b.length % rec !== 0)
      throw new Error(
        `${name}: ${f}: size ${b.length} bytes is not a multiple of the record size ${rec} (${labelBytes} label byte${labelBytes > 1 ? 's' : ''} + ${CIFAR_PIXELS} pixel bytes); ` +
          `the file is truncated or not a ${what} binary file`,
      );
    return b;
  });
  const n = bufs.reduce((s, b) => s + b.length / rec, 0);
  const pixels = sharedBytes(n * CIFAR_PIXELS);
  const labels = sharedInt32(n);
  let k = 0;
  bufs.forEach((b, fi) => {
    const m = b.length / rec;
    for (let r = 0; r < m; r++, k++) {
      const o = r * rec;
      if (labelBytes === 2 && b[o] >= 20)
        throw new Error(`${name}: ${files[fi]}: record ${r}: coarse label ${b[o]} is out of range [0, 20); not a ${what} binary file?`);
      const y = b[o + labelIndex];
      if (y >= numClasses) throw new Error(`${name}: ${files[fi]}: record ${r}: label ${y} is out of range [0, ${numClasses}); not a ${what} binary file?`);
      labels[k] = y;
      pixels.set(b.subarray(o + labelBytes, o + rec), k * CIFAR_PIXELS);
    }
  });
  return new InMemoryDataset({ name, split, numClasses, channels: 3, height: 32, width: 32, classNames }, pixels, labels);
}

export function readCifar10(dir: string, split: 'train' | 'test'): InMemoryDataset {
  const names = split === 'train' ? [1, 2, 3, 4, 5].map((i) => `data_batch_${i}.bin`) : ['test_batch.bin'];
  const d = resolveDir(dir, 'cifar-10-batches-bin', names[0], 'cifar10');
  const classNames = labelNames(path.join(d, 'batches.meta.txt'), 10) ?? CIFAR10_NAMES;
  return readCifarRecords('cifar10', names.map((f) => path.join(d, f)), 1, 0, 10, split, classNames);
}

export function readCifar100(dir: string, split: 'train' | 'test'): InMemoryDataset {
  const file = split === 'train' ? 'train.bin' : 'test.bin';
  const d = resolveDir(dir, 'cifar-100-binary', file, 'cifar100');
  const classNames = labelNames(path.join(d, 'fine_label_names.txt'), 100) ?? CIFAR100_NAMES;
  return readCifarRecords('cifar100', [path.join(d, file)], 2, 1, 100, split, classNames);
}

/** Reads an IDX file of unsigned bytes with `ndim` dimensions (plain or gzip, found as NAME or NAME.gz). */
export function readIdx(dir: string, base: string, ndim: number, what: string): { file: string; dims: number[]; data: Uint8Array } {
  const plain = path.join(dir, base);
  const gz = plain + '.gz';
  const file = existsSync(plain) ? plain : existsSync(gz) ? gz : null;
  if (!file) {
    if (!existsSync(dir)) throw new Error(`${what}: folder ${dir} does not exist`);
    throw new Error(`${what}: neither ${plain} nor ${gz} found`);
  }
  let b: Uint8Array = readFile(file, what);
  if (b.length >= 2 && b[0] === 0x1f && b[1] === 0x8b) {
    try {
      b = gunzipSync(b);
    } catch (e) {
      throw new Error(`${what}: ${file}: cannot decompress (gzip): ${(e as Error).message}; the file is truncated or corrupt`);
    }
  } else if (file.endsWith('.gz') && b.length > 0 && b[0] !== 0) {
    throw new Error(`${what}: ${file}: not a gzip file (bad gzip magic bytes ${hex(b, 2)})`);
  }
  if (b.length < 4) throw new Error(`${what}: ${file}: only ${b.length} bytes, too short for an IDX header`);
  const magic = ((b[0] << 24) | (b[1] << 16) | (b[2] << 8) | b[3]) >>> 0;
  const want = 0x800 + ndim;
  if (b[0] !== 0 || b[1] !== 0 || b[2] !== 0x08 || b[3] !== ndim)
    throw new Error(
      `${what}: ${file}: wrong magic number 0x${magic.toString(16).padStart(8, '0')} (expected 0x${want.toString(16).padStart(8, '0')}: ` +
        `unsigned bytes, ${ndim} dimension${ndim > 1 ? 's' : ''}); not an IDX ${ndim === 1 ? 'label' : 'image'} file`,
    );
  const head = 4 + 4 * ndim;
  if (b.length < head) throw new Error(`${what}: ${file}: truncated IDX header (${b.length} bytes, need ${head})`);
  const dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
  const dims: number[] = [];
  for (let i = 0; i < ndim; i++) dims.push(dv.getUint32(4 + 4 * i, false));
  const count = dims.reduce((a, x) => a * x, 1);
  const body = b.length - head;
  if (body !== count)
    throw new Error(
      `${what}: ${file}: header says ${dims.join('x')} = ${count} bytes of data but the file has ${body}` +
        (body < count ? ' (truncated)' : ' (trailing bytes)'),
    );
  return { file, dims, data: b.subarray(head) };
}

function hex(b: Uint8Array, n: number): string {
  return Array.from(b.subarray(0, n), (x) => x.toString(16).padStart(2, '0')).join(' ');
}

/** MNIST / Fashion-MNIST from the four IDX files. */
export function readIdxPair(name: 'mnist' | 'fashion-mnist', dir: string, split: 'train' | 'test'): InMemoryDataset {
  const prefix = split === 'train' ? 'train' : 't10k';
  const img = readIdx(dir, `${prefix}-images-idx3-ubyte`, 3, name);
  const lab = readIdx(dir, `${prefix}-labels-idx1-ubyte`, 1, name);
  const [n, h, w] = img.dims;
  if (n === 0 || h === 0 || w === 0) throw new Error(`${name}: ${img.file}: empty image set (${img.dims.join('x')})`);
  if (lab.dims[0] !== n) throw new Error(`${name}: ${img.file} has ${n} images but ${lab.file} has ${lab.dims[0]} labels`);
  const labels = sharedInt32(n);
  for (let i = 0; i < n; i++) {
    const y = lab.data[i];
    if (y >= 10) throw new Error(`${name}: ${lab.file}: label ${y} of item ${i} is out of range [0, 10)`);
    labels[i] = y;
  }
  const pixels = sharedBytes(n * h * w);
  pixels.set(img.data);
  const classNames = name === 'mnist' ? MNIST_NAMES : FASHION_NAMES;
  return new InMemoryDataset({ name, split, numClasses: 10, channels: 1, height: h, width: w, classNames }, pixels, labels);
}

/**
 * The synthetic set: 10 classes, 3x32x32. Each class has a fixed smooth template
 * (a random 4x4 colour grid, bilinearly upsampled); a sample is its template plus
 * triangular noise (std ~26 grey levels). Label of sample i is i mod 10; the train and
 * test splits share the templates and draw independent noise. Fully deterministic.
 */
export function makeSynthetic(n: number, split: 'train' | 'test'): InMemoryDataset {
  const C = 3;
  const S = 32;
  const K = 10;
  const G = 4;
  const templates = new Float32Array(K * C * S * S);
  const trng = new Rng([0, STREAM.synthetic, 0]);
  for (let k = 0; k < K; k++)
    for (let c = 0; c < C; c++) {
      const grid = Array.from({ length: G * G }, () => 32 + 192 * trng.next());
      for (let y = 0; y < S; y++) {
        const gy = Math.min(G - 1, Math.max(0, ((y + 0.5) * G) / S - 0.5));
        const y0 = Math.floor(gy);
        const y1 = Math.min(G - 1, y0 + 1);
        const fy = gy - y0;
        for (let x = 0; x < S; x++) {
          const gx = Math.min(G - 1, Math.max(0, ((x + 0.5) * G) / S - 0.5));
          const x0 = Math.floor(gx);
          const x1 = Math.min(G - 1, x0 + 1);
          const fx = gx - x0;
          const v =
            (1 - fy) * ((1 - fx) * grid[y0 * G + x0] + fx * grid[y0 * G + x1]) + fy * ((1 - fx) * grid[y1 * G + x0] + fx * grid[y1 * G + x1]);
          templates[((k * C + c) * S + y) * S + x] = v;
        }
      }
    }
  const sz = C * S * S;
  const pixels = sharedBytes(n * sz);
  const labels = sharedInt32(n);
  const splitKey = split === 'train' ? 1 : 2;
  for (let i = 0; i < n; i++) {
    const y = i % K;
    labels[i] = y;
    const t = y * sz;
    const o = i * sz;
    const key = hashWords([0, STREAM.synthetic, splitKey, i]);
    for (let p = 0; p < sz; p++) {
      // lowbias32 of (key + p * golden): one independent 32-bit draw per pixel
      const r = mix32(key + Math.imul(p + 1, 0x9e3779b9));
      const noise = ((r & 0xffff) + (r >>> 16)) / 65536 - 1; // triangular on (-1, 1), std 0.41
      const v = Math.round(templates[t + p] + 64 * noise);
      pixels[o + p] = v < 0 ? 0 : v > 255 ? 255 : v;
    }
  }
  const classNames = Array.from({ length: K }, (_, k) => `class${k}`);
  return new InMemoryDataset({ name: 'synthetic', split, numClasses: K, channels: C, height: S, width: S, classNames }, pixels, labels);
}
