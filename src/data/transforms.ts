/**
 * Per-sample image transforms on raw CHW pixels, in plain typed-array loops
 * (no tensors: they run inside the loader's worker threads).
 *
 * Order of a pipeline (each step only when its option is set):
 *   1. randomResizedCrop | randomCrop  (geometry; uint8)
 *   2. centerCrop                      (deterministic)
 *   3. flip                            (horizontal, p = 0.5)
 *   4. randAugment                     (n ops of magnitude m; uint8, as torchvision applies it to PIL images)
 *   5. ToTensor + normalize            (x/255, then (x - mean) / std, float32 exactly as torchvision computes it)
 *   6. cutout                          (one square hole set to 0 after normalisation, as in DeVries & Taylor)
 *
 * With `augment = false` the random steps are replaced by their deterministic
 * counterparts so that the output shape does not change: randomCrop becomes a
 * centre crop of the padded image (identity when size = image size), randomResizedCrop
 * a resize of the whole image, and flip, randAugment and cutout are skipped.
 */
import { Rng } from './rng.js';

export interface Normalization {
  mean: number[];
  std: number[];
}

export interface TransformSpec {
  /** torchvision RandomCrop(size, padding): zero padding, uniform offset. */
  randomCrop?: { size: number; padding?: number };
  /** Horizontal flip with probability 0.5. */
  flip?: boolean;
  /** torchvision RandomResizedCrop(size, scale=(0.08, 1), ratio=(3/4, 4/3)), bilinear (PIL-style, antialiased when shrinking). */
  randomResizedCrop?: number | { size: number; scale?: [number, number]; ratio?: [number, number] };
  /** Centre crop to size x size (applied in evaluation too). */
  centerCrop?: number;
  /** Cutout: one square hole of this side, centre uniform over the image, clipped at the border. */
  cutout?: number;
  /**
   * RandAugment (torchvision semantics): n ops drawn uniformly from RAND_AUGMENT_OPS,
   * magnitude m in 0..bins-1 (bins default 31, torchvision's default; m = 9 is the usual choice).
   */
  randAugment?: { n: number; m: number; bins?: number };
  /** Per-channel mean and std (one value or one per channel); applied after x/255. */
  normalize: Normalization;
}

/** Normalisation constants per dataset. */
export const NORMALIZATION: Record<string, Normalization> = {
  cifar100: {
    mean: [0.5070751592371323, 0.48654887331495095, 0.4409178433670343],
    std: [0.2673342858792401, 0.2564384629170883, 0.27615047132568404],
  },
  cifar10: { mean: [0.4914, 0.4822, 0.4465], std: [0.247, 0.2435, 0.2616] },
  'fashion-mnist': { mean: [0.286], std: [0.353] },
  mnist: { mean: [0.1307], std: [0.3081] },
  folder: { mean: [0.5, 0.5, 0.5], std: [0.5, 0.5, 0.5] },
  synthetic: { mean: [0.5, 0.5, 0.5], std: [0.5, 0.5, 0.5] },
};

/** What defaultTransforms needs to know about a dataset. */
export interface DatasetLike {
  name: string;
  height?: number;
  width?: number;
}

/**
 * The release-like recipe for a dataset:
 *  - cifar10 / cifar100 / synthetic: RandomCrop(32, padding=4) + horizontal flip
 *  - fashion-mnist: RandomCrop(28, padding=2) + horizontal flip (clothes are left/right symmetric classes)
 *  - mnist: RandomCrop(28, padding=2), no flip (digits are not)
 *  - folder: RandomResizedCrop(imageSize) + flip
 * and the dataset's normalisation. `augment = false` (or split 'test') gives normalisation only.
 */
export function defaultTransforms(dataset: string | DatasetLike, split: 'train' | 'test', augment = split === 'train'): TransformSpec {
  const name = typeof dataset === 'string' ? dataset : dataset.name;
  const norm = NORMALIZATION[name];
  if (!norm) throw new Error(`defaultTransforms: unknown dataset '${name}' (known: ${Object.keys(NORMALIZATION).join(', ')})`);
  const normalize = { mean: [...norm.mean], std: [...norm.std] };
  if (!augment || split === 'test') return { normalize };
  const size = typeof dataset === 'string' ? undefined : dataset.height;
  switch (name) {
    case 'cifar10':
    case 'cifar100':
    case 'synthetic':
      return { randomCrop: { size: size ?? 32, padding: 4 }, flip: true, normalize };
    case 'fashion-mnist':
      return { randomCrop: { size: size ?? 28, padding: 2 }, flip: true, normalize };
    case 'mnist':
      return { randomCrop: { size: size ?? 28, padding: 2 }, normalize };
    case 'folder':
      return { randomResizedCrop: size ?? 32, flip: true, normalize };
    default:
      return { normalize };
  }
}

/** The RandAugment ops implemented (torchvision's full list for RandAugment). */
export const RAND_AUGMENT_OPS = [
  'Identity',
  'ShearX',
  'ShearY',
  'TranslateX',
  'TranslateY',
  'Rotate',
  'Brightness',
  'Color',
  'Contrast',
  'Sharpness',
  'Posterize',
  'Solarize',
  'AutoContrast',
  'Equalize',
] as const;
export type RandAugmentOp = (typeof RAND_AUGMENT_OPS)[number];

/** The output [C, H, W] of a spec for an input of [C, H, W]. */
export function outputShape(spec: TransformSpec, c: number, h: number, w: number): [number, number, number] {
  let oh = h;
  let ow = w;
  const rrc = rrcParams(spec);
  if (rrc) oh = ow = rrc.size;
  else if (spec.randomCrop) oh = ow = spec.randomCrop.size;
  if (spec.centerCrop !== undefined) oh = ow = spec.centerCrop;
  return [c, oh, ow];
}

function rrcParams(spec: TransformSpec): { size: number; scale: [number, number]; ratio: [number, number] } | null {
  const r = spec.randomResizedCrop;
  if (r === undefined) return null;
  if (typeof r === 'number') return { size: r, scale: [0.08, 1], ratio: [3 / 4, 4 / 3] };
  return { size: r.size, scale: r.scale ?? [0.08, 1], ratio: r.ratio ?? [3 / 4, 4 / 3] };
}

/** Checks a spec against an input shape; throws a clear Error. */
export function validateSpec(spec: TransformSpec, c: number, h: number, w: number): void {
  const bad = (m: string) => {
    throw new Error(`transforms: ${m}`);
  };
  if (!spec || !spec.normalize) bad('normalize {mean, std} is required');
  const { mean, std } = spec.normalize;
  for (const [k, v] of [['mean', mean], ['std', std]] as const) {
    if (!Array.isArray(v) || (v.length !== 1 && v.length !== c)) bad(`normalize.${k} needs 1 or ${c} values, got ${JSON.stringify(v)}`);
    if (v.some((x) => typeof x !== 'number' || !Number.isFinite(x))) bad(`normalize.${k} has a non-finite value`);
  }
  if (std.some((x) => x === 0)) bad('normalize.std has a zero');
  const posInt = (x: unknown) => typeof x === 'number' && Number.isInteger(x) && x > 0;
  if (spec.randomCrop) {
    const { size, padding = 0 } = spec.randomCrop;
    if (!posInt(size)) bad(`randomCrop.size must be a positive integer, got ${size}`);
    if (!(Number.isInteger(padding) && padding >= 0)) bad(`randomCrop.padding must be a non-negative integer, got ${padding}`);
    if (size > h + 2 * padding || size > w + 2 * padding) bad(`randomCrop.size ${size} exceeds the padded image ${h + 2 * padding}x${w + 2 * padding}`);
  }
  if (spec.randomCrop && spec.randomResizedCrop !== undefined) bad('randomCrop and randomResizedCrop are exclusive');
  const rrc = rrcParams(spec);
  if (rrc) {
    if (!posInt(rrc.size)) bad(`randomResizedCrop size must be a positive integer, got ${rrc.size}`);
    if (!(rrc.scale[0] > 0 && rrc.scale[0] <= rrc.scale[1])) bad(`randomResizedCrop.scale must be 0 < lo <= hi, got ${rrc.scale}`);
    if (!(rrc.ratio[0] > 0 && rrc.ratio[0] <= rrc.ratio[1])) bad(`randomResizedCrop.ratio must be 0 < lo <= hi, got ${rrc.ratio}`);
  }
  const [, oh, ow] = outputShape({ ...spec, centerCrop: undefined }, c, h, w);
  if (spec.centerCrop !== undefined && (!posInt(spec.centerCrop) || spec.centerCrop > oh || spec.centerCrop > ow))
    bad(`centerCrop must be a positive integer <= ${Math.min(oh, ow)}, got ${spec.centerCrop}`);
  if (spec.cutout !== undefined && !(Number.isInteger(spec.cutout) && spec.cutout >= 0)) bad(`cutout must be a non-negative integer, got ${spec.cutout}`);
  if (spec.randAugment) {
    const { n, m, bins = 31 } = spec.randAugment;
    if (!(Number.isInteger(n) && n >= 0)) bad(`randAugment.n must be a non-negative integer, got ${n}`);
    if (!(Number.isInteger(bins) && bins >= 2)) bad(`randAugment.bins must be an integer >= 2, got ${bins}`);
    if (!(typeof m === 'number' && m >= 0 && m <= bins - 1)) bad(`randAugment.m must be in [0, ${bins - 1}], got ${m}`);
    if (c !== 1 && c !== 3) bad(`randAugment needs 1 or 3 channels, got ${c}`);
  }
}

/**
 * A compiled pipeline for inputs of [C, H, W] uint8; holds its scratch buffers
 * (one per thread). `apply` writes C*outH*outW float32 values at `out[outOffset]`.
 */
export class Transformer {
  readonly c: number;
  readonly h: number;
  readonly w: number;
  readonly outShape: [number, number, number];
  readonly augment: boolean;
  readonly spec: TransformSpec;
  readonly #lut: Float32Array; // [C][256] normalised values
  readonly #rrc: ReturnType<typeof rrcParams>;
  #bufA: Uint8Array;
  #bufB: Uint8Array;
  #tmp: Float32Array = new Float32Array(0);

  constructor(spec: TransformSpec, c: number, h: number, w: number, augment: boolean) {
    validateSpec(spec, c, h, w);
    this.spec = spec;
    this.c = c;
    this.h = h;
    this.w = w;
    this.augment = augment;
    this.outShape = outputShape(spec, c, h, w);
    this.#lut = normalizationLut(spec.normalize, c);
    this.#rrc = rrcParams(spec);
    const maxPix = c * Math.max(h * w, this.outShape[1] * this.outShape[2], spec.randomCrop ? spec.randomCrop.size ** 2 : 0);
    this.#bufA = new Uint8Array(maxPix);
    this.#bufB = new Uint8Array(maxPix);
  }

  get outSize(): number {
    return this.outShape[0] * this.outShape[1] * this.outShape[2];
  }

  /**
   * Transforms the sample at src[srcOffset .. + C*H*W]. `rng` drives the random steps
   * (unused when augment is false). The source is never modified.
   */
  apply(src: Uint8Array, srcOffset: number, rng: Rng, out: Float32Array, outOffset: number): void {
    const { c, spec, augment } = this;
    let h = this.h;
    let w = this.w;
    let cur = src;
    let off = srcOffset;
    let spareA = this.#bufA;
    let spareB = this.#bufB;
    // makes `dst` current; the other scratch buffer becomes the next target
    const advance = (dst: Uint8Array) => {
      cur = dst;
      off = 0;
      if (dst === spareA) [spareA, spareB] = [spareB, spareA];
    };

    // 1. geometry (random draws: crop parameters, then the flip bit)
    const rrc = this.#rrc;
    let flipPending = false;
    if (rrc) {
      const box: [number, number, number, number] = augment ? rrcBox(h, w, rrc.scale, rrc.ratio, rng) : [0, 0, h, w];
      flipPending = augment && !!spec.flip && rng.bernoulli(0.5);
      if (!(box[2] === h && box[3] === w && rrc.size === h && rrc.size === w)) {
        this.#resample(cur, off, c, h, w, box, rrc.size, rrc.size, spareA);
        advance(spareA);
        h = w = rrc.size;
      }
    } else if (spec.randomCrop) {
      const { size, padding = 0 } = spec.randomCrop;
      let oy = (h + 2 * padding - size) >> 1;
      let ox = (w + 2 * padding - size) >> 1;
      if (augment) {
        oy = rng.int(h + 2 * padding - size + 1);
        ox = rng.int(w + 2 * padding - size + 1);
      }
      const flip = augment && !!spec.flip && rng.bernoulli(0.5);
      const fuse = spec.centerCrop === undefined;
      if (!(size === h && size === w && oy === padding && ox === padding && !(flip && fuse))) {
        cropPad(cur, off, c, h, w, oy - padding, ox - padding, size, size, flip && fuse, spareA);
        advance(spareA);
        h = w = size;
      }
      flipPending = flip && !fuse;
    } else {
      flipPending = augment && !!spec.flip && rng.bernoulli(0.5);
    }
    // 2. centre crop (with a pending flip fused in), 3. flip
    if (spec.centerCrop !== undefined && (spec.centerCrop !== h || spec.centerCrop !== w)) {
      const s = spec.centerCrop;
      cropPad(cur, off, c, h, w, (h - s) >> 1, (w - s) >> 1, s, s, flipPending, spareA);
      advance(spareA);
      h = w = s;
      flipPending = false;
    }
    if (flipPending) {
      cropPad(cur, off, c, h, w, 0, 0, h, w, true, spareA);
      advance(spareA);
    }
    // 4. RandAugment, in place on a private copy
    if (augment && spec.randAugment && spec.randAugment.n > 0) {
      if (cur === src) {
        spareA.set(src.subarray(off, off + c * h * w));
        advance(spareA);
      }
      const other = cur === spareA ? spareB : spareA;
      cur = randAugment(cur, other, c, h, w, spec.randAugment, rng);
      off = 0;
    }
    // 5. ToTensor + normalise through the per-channel table
    lutInto(this.#lut, cur, off, c, h * w, out, outOffset);
    // 6. cutout
    if (augment && spec.cutout) cutout(out, outOffset, c, h, w, spec.cutout, rng);
  }

  #resample(src: Uint8Array, so: number, c: number, h: number, w: number, box: [number, number, number, number], oh: number, ow: number, dst: Uint8Array): void {
    const [by, bx, bh, bw] = box;
    const hx = resampleWeights(w, bx, bw, ow);
    const hy = resampleWeights(h, by, bh, oh);
    // rows needed by the vertical pass
    let r0 = h;
    let r1 = 0;
    for (let o = 0; o < oh; o++) {
      r0 = Math.min(r0, hy.start[o]);
      r1 = Math.max(r1, hy.start[o] + hy.count[o]);
    }
    const rows = r1 - r0;
    const need = c * rows * ow;
    if (this.#tmp.length < need) this.#tmp = new Float32Array(need);
    const tmp = this.#tmp;
    const K = hx.k;
    for (let ch = 0; ch < c; ch++) {
      for (let r = 0; r < rows; r++) {
        const srow = so + ch * h * w + (r0 + r) * w;
        const trow = (ch * rows + r) * ow;
        for (let o = 0; o < ow; o++) {
          const s = hx.start[o];
          const n = hx.count[o];
          let acc = 0;
          for (let t = 0; t < n; t++) acc += hx.weight[o * K + t] * src[srow + s + t];
          tmp[trow + o] = acc;
        }
      }
    }
    const KY = hy.k;
    for (let ch = 0; ch < c; ch++) {
      for (let o = 0; o < oh; o++) {
        const s = hy.start[o] - r0;
        const n = hy.count[o];
        const drow = (ch * oh + o) * ow;
        for (let x = 0; x < ow; x++) {
          let acc = 0;
          for (let t = 0; t < n; t++) acc += hy.weight[o * KY + t] * tmp[(ch * rows + s + t) * ow + x];
          const v = Math.round(acc);
          dst[drow + x] = v < 0 ? 0 : v > 255 ? 255 : v;
        }
      }
    }
  }
}

function lutInto(lut: Float32Array, src: Uint8Array, off: number, c: number, hw: number, out: Float32Array, outOffset: number): void {
  for (let ch = 0; ch < c; ch++) {
    const base = ch * 256;
    const so = off + ch * hw;
    const oo = outOffset + ch * hw;
    for (let i = 0; i < hw; i++) out[oo + i] = lut[base + src[so + i]];
  }
}

/** float32 (v/255 - mean)/std for v in 0..255, computed with torchvision's float32 roundings. */
export function normalizationLut(norm: Normalization, c: number): Float32Array {
  const lut = new Float32Array(256 * c);
  for (let ch = 0; ch < c; ch++) {
    const m = Math.fround(norm.mean.length === 1 ? norm.mean[0] : norm.mean[ch]);
    const s = Math.fround(norm.std.length === 1 ? norm.std[0] : norm.std[ch]);
    for (let v = 0; v < 256; v++) lut[ch * 256 + v] = Math.fround(Math.fround(Math.fround(v / 255) - m) / s);
  }
  return lut;
}

/**
 * Copies the size (oh x ow) window at (y0, x0) of src (zero outside it), mirrored
 * horizontally when flip: dst[c, i, j] = src[c, y0 + i, x0 + (flip ? ow-1-j : j)].
 */
export function cropPad(src: Uint8Array, so: number, c: number, h: number, w: number, y0: number, x0: number, oh: number, ow: number, flip: boolean, dst: Uint8Array): void {
  // the columns of the window inside the image
  const jLo = Math.max(0, -x0); // first j whose source column is inside (no flip)
  const jHi = Math.min(ow, w - x0); // one past the last
  for (let ch = 0; ch < c; ch++) {
    for (let i = 0; i < oh; i++) {
      const d = (ch * oh + i) * ow;
      const sy = y0 + i;
      if (sy < 0 || sy >= h || jHi <= jLo) {
        dst.fill(0, d, d + ow);
        continue;
      }
      const s = so + (ch * h + sy) * w + x0;
      if (!flip) {
        for (let j = 0; j < jLo; j++) dst[d + j] = 0;
        for (let j = jLo; j < jHi; j++) dst[d + j] = src[s + j];
        for (let j = jHi; j < ow; j++) dst[d + j] = 0;
      } else {
        for (let j = 0; j < ow; j++) {
          const sj = ow - 1 - j;
          dst[d + j] = sj >= jLo && sj < jHi ? src[s + sj] : 0;
        }
      }
    }
  }
}

/** torchvision RandomResizedCrop.get_params: [top, left, height, width]. */
export function rrcBox(h: number, w: number, scale: [number, number], ratio: [number, number], rng: Rng): [number, number, number, number] {
  const area = h * w;
  const logLo = Math.log(ratio[0]);
  const logHi = Math.log(ratio[1]);
  for (let attempt = 0; attempt < 10; attempt++) {
    const targetArea = area * rng.uniform(scale[0], scale[1]);
    const aspect = Math.exp(rng.uniform(logLo, logHi));
    const cw = Math.round(Math.sqrt(targetArea * aspect));
    const chh = Math.round(Math.sqrt(targetArea / aspect));
    if (cw > 0 && cw <= w && chh > 0 && chh <= h) {
      const i = rng.int(h - chh + 1);
      const j = rng.int(w - cw + 1);
      return [i, j, chh, cw];
    }
  }
  // fallback: central crop with the ratio clamped
  const inRatio = w / h;
  let cw: number;
  let chh: number;
  if (inRatio < ratio[0]) {
    cw = w;
    chh = Math.round(cw / ratio[0]);
  } else if (inRatio > ratio[1]) {
    chh = h;
    cw = Math.round(chh * ratio[1]);
  } else {
    cw = w;
    chh = h;
  }
  return [(h - chh) >> 1, (w - cw) >> 1, chh, cw];
}

interface AxisWeights {
  start: Int32Array;
  count: Int32Array;
  weight: Float64Array; // [out][k]
  k: number;
}

/** PIL's bilinear resampling weights (triangle filter, widened when shrinking) for a box [b0, b0+bn) of an axis of length n. */
function resampleWeights(n: number, b0: number, bn: number, out: number): AxisWeights {
  const scale = bn / out;
  const fscale = Math.max(scale, 1);
  const support = fscale; // bilinear support 1, scaled
  const k = Math.ceil(support) * 2 + 1;
  const start = new Int32Array(out);
  const count = new Int32Array(out);
  const weight = new Float64Array(out * k);
  const ss = 1 / fscale;
  for (let o = 0; o < out; o++) {
    const center = b0 + (o + 0.5) * scale;
    let xmin = Math.trunc(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    let xmax = Math.trunc(center + support + 0.5);
    if (xmax > n) xmax = n;
    let cnt = Math.min(xmax - xmin, k);
    let total = 0;
    for (let t = 0; t < cnt; t++) {
      const x = Math.abs((t + xmin - center + 0.5) * ss);
      const wv = x < 1 ? 1 - x : 0;
      weight[o * k + t] = wv;
      total += wv;
    }
    if (total > 0) for (let t = 0; t < cnt; t++) weight[o * k + t] /= total;
    else {
      // degenerate: nearest pixel
      xmin = Math.min(n - 1, Math.max(0, Math.floor(center)));
      cnt = 1;
      weight[o * k] = 1;
    }
    start[o] = xmin;
    count[o] = cnt;
  }
  return { start, count, weight, k };
}

/** Zeroes one square hole of side `size` centred uniformly (DeVries & Taylor's Cutout). */
export function cutout(out: Float32Array, off: number, c: number, h: number, w: number, size: number, rng: Rng): void {
  const cy = rng.int(h);
  const cx = rng.int(w);
  const half = size >> 1;
  const y1 = Math.max(0, cy - half);
  const y2 = Math.min(h, cy + half + (size & 1));
  const x1 = Math.max(0, cx - half);
  const x2 = Math.min(w, cx + half + (size & 1));
  for (let ch = 0; ch < c; ch++)
    for (let y = y1; y < y2; y++) {
      const r = off + (ch * h + y) * w;
      out.fill(0, r + x1, r + x2);
    }
}

// ---------------------------------------------------------------------------
// RandAugment on uint8 CHW (C = 1 or 3), torchvision's ops and magnitude bins.

function linspaceAt(a: number, b: number, bins: number, m: number): number {
  return a + ((b - a) * m) / (bins - 1);
}

/**
 * Applies `n` random ops of magnitude bin `m` to img (in place when possible);
 * returns the buffer holding the result (img or spare).
 */
export function randAugment(img: Uint8Array, spare: Uint8Array, c: number, h: number, w: number, opts: { n: number; m: number; bins?: number }, rng: Rng): Uint8Array {
  const bins = opts.bins ?? 31;
  let cur = img;
  let other = spare;
  for (let k = 0; k < opts.n; k++) {
    const op = RAND_AUGMENT_OPS[rng.int(RAND_AUGMENT_OPS.length)];
    const sign = rng.bernoulli(0.5) ? -1 : 1;
    const res = applyOp(op, cur, other, c, h, w, opts.m, bins, sign);
    if (res !== cur) {
      other = cur;
      cur = res;
    }
  }
  return cur;
}

/** One RandAugment op at magnitude bin m (sign for the signed ops); returns the buffer with the result. */
export function applyOp(op: RandAugmentOp, img: Uint8Array, spare: Uint8Array, c: number, h: number, w: number, m: number, bins: number, sign: number): Uint8Array {
  const n = c * h * w;
  switch (op) {
    case 'Identity':
      return img;
    case 'ShearX': {
      const s = sign * linspaceAt(0, 0.3, bins, m);
      affineNearest(img, spare, c, h, w, 1, s, 0, 0, 1, 0);
      return spare;
    }
    case 'ShearY': {
      const s = sign * linspaceAt(0, 0.3, bins, m);
      affineNearest(img, spare, c, h, w, 1, 0, 0, s, 1, 0);
      return spare;
    }
    case 'TranslateX': {
      const t = Math.trunc(sign * linspaceAt(0, (150 / 331) * w, bins, m));
      affineNearest(img, spare, c, h, w, 1, 0, -t, 0, 1, 0);
      return spare;
    }
    case 'TranslateY': {
      const t = Math.trunc(sign * linspaceAt(0, (150 / 331) * h, bins, m));
      affineNearest(img, spare, c, h, w, 1, 0, 0, 0, 1, -t);
      return spare;
    }
    case 'Rotate': {
      // counter-clockwise by deg about the image centre; inverse map output -> source
      const deg = sign * linspaceAt(0, 30, bins, m);
      const t = (deg * Math.PI) / 180;
      const cos = Math.cos(t);
      const sin = Math.sin(t);
      const cx = w / 2;
      const cy = h / 2;
      // src = R(-t)' about centre, y pointing down: sx = cos*dx - sin*dy, sy = sin*dx + cos*dy
      affineNearest(img, spare, c, h, w, cos, -sin, cx - cos * cx + sin * cy, sin, cos, cy - sin * cx - cos * cy);
      return spare;
    }
    case 'Brightness': {
      const f = 1 + sign * linspaceAt(0, 0.9, bins, m);
      for (let i = 0; i < n; i++) img[i] = clampTrunc(f * img[i]);
      return img;
    }
    case 'Color': {
      if (c !== 3) return img;
      const f = 1 + sign * linspaceAt(0, 0.9, bins, m);
      const hw = h * w;
      for (let i = 0; i < hw; i++) {
        const g = gray(img[i], img[hw + i], img[2 * hw + i]);
        const gb = (1 - f) * g;
        img[i] = clampTrunc(f * img[i] + gb);
        img[hw + i] = clampTrunc(f * img[hw + i] + gb);
        img[2 * hw + i] = clampTrunc(f * img[2 * hw + i] + gb);
      }
      return img;
    }
    case 'Contrast': {
      const f = 1 + sign * linspaceAt(0, 0.9, bins, m);
      const hw = h * w;
      let sum = 0;
      if (c === 3) for (let i = 0; i < hw; i++) sum += gray(img[i], img[hw + i], img[2 * hw + i]);
      else for (let i = 0; i < hw; i++) sum += img[i];
      const mb = (1 - f) * (sum / hw);
      for (let i = 0; i < n; i++) img[i] = clampTrunc(f * img[i] + mb);
      return img;
    }
    case 'Sharpness': {
      if (h < 3 || w < 3) return img;
      const f = 1 + sign * linspaceAt(0, 0.9, bins, m);
      // degenerate: 3x3 smoothing [[1,1,1],[1,5,1],[1,1,1]]/13 inside, the border unchanged
      spare.set(img.subarray(0, n));
      for (let ch = 0; ch < c; ch++) {
        const base = ch * h * w;
        for (let y = 1; y < h - 1; y++)
          for (let x = 1; x < w - 1; x++) {
            const p = base + y * w + x;
            const s = img[p - w - 1] + img[p - w] + img[p - w + 1] + img[p - 1] + 5 * img[p] + img[p + 1] + img[p + w - 1] + img[p + w] + img[p + w + 1];
            spare[p] = Math.round(s / 13);
          }
      }
      for (let i = 0; i < n; i++) img[i] = clampTrunc(f * img[i] + (1 - f) * spare[i]);
      return img;
    }
    case 'Posterize': {
      const bits = 8 - Math.round(m / ((bins - 1) / 4));
      const mask = (0xff << (8 - bits)) & 0xff;
      for (let i = 0; i < n; i++) img[i] &= mask;
      return img;
    }
    case 'Solarize': {
      const thr = linspaceAt(255, 0, bins, m);
      for (let i = 0; i < n; i++) if (img[i] >= thr) img[i] = 255 - img[i];
      return img;
    }
    case 'AutoContrast': {
      const hw = h * w;
      for (let ch = 0; ch < c; ch++) {
        const base = ch * hw;
        let lo = 255;
        let hi = 0;
        for (let i = 0; i < hw; i++) {
          const v = img[base + i];
          if (v < lo) lo = v;
          if (v > hi) hi = v;
        }
        if (hi <= lo) continue;
        const scale = 255 / (hi - lo);
        for (let i = 0; i < hw; i++) img[base + i] = clampTrunc((img[base + i] - lo) * scale);
      }
      return img;
    }
    case 'Equalize': {
      const hw = h * w;
      const hist = new Int32Array(256);
      const lut = new Uint8Array(256);
      for (let ch = 0; ch < c; ch++) {
        const base = ch * hw;
        hist.fill(0);
        for (let i = 0; i < hw; i++) hist[img[base + i]]++;
        // torchvision _scale_channel: step from all non-zero bins but the last
        let last = 255;
        while (last > 0 && hist[last] === 0) last--;
        const step = Math.floor((hw - hist[last]) / 255);
        if (step === 0) continue;
        let cum = Math.floor(step / 2);
        for (let v = 0; v < 256; v++) {
          const q = Math.floor(cum / step);
          lut[v] = q > 255 ? 255 : q;
          cum += hist[v];
        }
        for (let i = 0; i < hw; i++) img[base + i] = lut[img[base + i]];
      }
      return img;
    }
  }
}

function gray(r: number, g: number, b: number): number {
  return Math.trunc(0.2989 * r + 0.587 * g + 0.114 * b);
}

function clampTrunc(v: number): number {
  return v <= 0 ? 0 : v >= 255 ? 255 : Math.trunc(v);
}

/**
 * dst(x, y) = src(a*x + b*y + c, d*x + e*y + f) on pixel centres, nearest neighbour, 0 outside.
 */
function affineNearest(src: Uint8Array, dst: Uint8Array, ch: number, h: number, w: number, a: number, b: number, c: number, d: number, e: number, f: number): void {
  const hw = h * w;
  for (let y = 0; y < h; y++) {
    const yc = y + 0.5;
    for (let x = 0; x < w; x++) {
      const xc = x + 0.5;
      const sx = Math.floor(a * xc + b * yc + c);
      const sy = Math.floor(d * xc + e * yc + f);
      const p = y * w + x;
      if (sx >= 0 && sx < w && sy >= 0 && sy < h) {
        const q = sy * w + sx;
        for (let k = 0; k < ch; k++) dst[k * hw + p] = src[k * hw + q];
      } else for (let k = 0; k < ch; k++) dst[k * hw + p] = 0;
    }
  }
}
