/** In-memory datasets on SharedArrayBuffers. */
import type { Dataset } from './dataset.js';

export interface DatasetInfo {
  name: string;
  split: 'train' | 'test';
  numClasses: number;
  channels: number;
  height: number;
  width: number;
  classNames?: string[];
}

/** A dataset held in memory as one [N, C, H, W] uint8 block plus labels. */
export class InMemoryDataset implements Dataset {
  readonly name: string;
  readonly split: 'train' | 'test';
  readonly length: number;
  readonly numClasses: number;
  readonly channels: number;
  readonly height: number;
  readonly width: number;
  readonly classNames?: string[];
  readonly storage: { pixels: Uint8Array; labels: Int32Array };
  readonly #sampleSize: number;

  constructor(info: DatasetInfo, pixels: Uint8Array, labels: Int32Array) {
    this.name = info.name;
    this.split = info.split;
    this.numClasses = info.numClasses;
    this.channels = info.channels;
    this.height = info.height;
    this.width = info.width;
    if (info.classNames) this.classNames = info.classNames;
    this.length = labels.length;
    this.#sampleSize = info.channels * info.height * info.width;
    if (pixels.length !== this.length * this.#sampleSize)
      throw new Error(`${info.name}: ${pixels.length} pixel bytes do not make ${this.length} samples of ${info.channels}x${info.height}x${info.width}`);
    for (let i = 0; i < labels.length; i++)
      if (!(labels[i] >= 0 && labels[i] < info.numClasses)) throw new Error(`${info.name}: label ${labels[i]} of sample ${i} is out of range [0, ${info.numClasses})`);
    this.storage = { pixels, labels };
  }

  get(i: number): { pixels: Uint8Array; label: number } {
    if (!Number.isInteger(i) || i < 0 || i >= this.length) throw new RangeError(`${this.name}: sample index ${i} out of range [0, ${this.length})`);
    const s = this.#sampleSize;
    return { pixels: this.storage.pixels.slice(i * s, (i + 1) * s), label: this.storage.labels[i] };
  }
}

/** A Uint8Array on a SharedArrayBuffer. */
export function sharedBytes(n: number): Uint8Array {
  return new Uint8Array(new SharedArrayBuffer(n));
}

/** An Int32Array on a SharedArrayBuffer. */
export function sharedInt32(n: number): Int32Array {
  return new Int32Array(new SharedArrayBuffer(4 * n));
}
