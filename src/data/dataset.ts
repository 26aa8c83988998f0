/**
 * Datasets for training: CIFAR-10/100 binaries, MNIST/Fashion-MNIST IDX files,
 * folders of images (one sub-folder per class) and a synthetic set.
 *
 *   const ds = openDataset('cifar100:/data/cifar-100-binary', 'train');
 *   const { pixels, label } = ds.get(0);   // uint8 CHW, fine label
 *
 * All of them are read (or decoded) into memory once, into SharedArrayBuffers, so
 * the loader's worker threads read them without copies (`storage`).
 */
import { readCifar10, readCifar100, readIdxPair, makeSynthetic } from './formats.js';
import { readFolder } from './folder.js';

export interface Dataset {
  readonly name: string; // 'cifar10', 'cifar100', 'mnist', 'fashion-mnist', 'folder', 'synthetic'
  readonly length: number;
  readonly numClasses: number;
  readonly channels: number; // 1 or 3
  readonly height: number;
  readonly width: number; // for folders: the size images are resized to
  readonly classNames?: string[];
  /** Sample i as uint8 CHW pixels (a copy) and its label. */
  get(i: number): { pixels: Uint8Array; label: number };
  /** Extension: the split it was opened for (the loader augments unless 'test'). */
  readonly split?: 'train' | 'test';
  /**
   * Extension: all samples at once, pixels [length, C, H, W] uint8 and labels,
   * ideally on SharedArrayBuffers (the loader shares them with its workers).
   */
  readonly storage?: { pixels: Uint8Array; labels: Int32Array };
}

/** Default folders for MNIST and Fashion-MNIST (Debian's dataset packages). */
export const DEFAULT_DIRS: Record<string, string> = {
  'fashion-mnist': '/usr/share/datasets/fashion-mnist',
  mnist: '/usr/share/datasets/mnist',
};

/**
 * Opens a dataset from a spec string:
 *   cifar10:DIR            data_batch_1..5.bin / test_batch.bin (DIR or DIR/cifar-10-batches-bin)
 *   cifar100:DIR           train.bin / test.bin, fine labels (DIR or DIR/cifar-100-binary)
 *   mnist[:DIR]            IDX files, plain or .gz (default DIR /usr/share/datasets/mnist)
 *   fashion-mnist[:DIR]    IDX files, plain or .gz (default DIR /usr/share/datasets/fashion-mnist)
 *   folder:DIR             DIR/<class>/*.{jpg,jpeg,png,webp}; DIR/train and DIR/test (or val) when present;
 *                          decoded once (sharp) to RGB imageSize x imageSize (default 32), aspect not kept
 *   synthetic[:N]          N samples (default 10000) of 3x32x32, 10 classes: class templates + noise
 */
export function openDataset(spec: string, split: 'train' | 'test', opts: { imageSize?: number } = {}): Dataset {
  if (split !== 'train' && split !== 'test') throw new Error(`openDataset: split must be 'train' or 'test', got '${split}'`);
  const colon = spec.indexOf(':');
  const kind = (colon < 0 ? spec : spec.slice(0, colon)).toLowerCase();
  const arg = colon < 0 ? '' : spec.slice(colon + 1);
  switch (kind) {
    case 'cifar10':
      if (!arg) throw new Error(`openDataset: '${spec}' needs a folder: cifar10:DIR`);
      return readCifar10(arg, split);
    case 'cifar100':
      if (!arg) throw new Error(`openDataset: '${spec}' needs a folder: cifar100:DIR`);
      return readCifar100(arg, split);
    case 'mnist':
    case 'fashion-mnist':
    case 'fashionmnist':
    case 'fashion_mnist': {
      const name = kind === 'mnist' ? 'mnist' : 'fashion-mnist';
      return readIdxPair(name, arg || DEFAULT_DIRS[name], split);
    }
    case 'folder':
      if (!arg) throw new Error(`openDataset: '${spec}' needs a folder: folder:DIR`);
      return readFolder(arg, split, opts.imageSize ?? 32);
    case 'synthetic': {
      const n = arg ? Number(arg) : 10000;
      if (!Number.isInteger(n) || n <= 0) throw new Error(`openDataset: synthetic:N needs a positive integer N, got '${arg}'`);
      return makeSynthetic(n, split);
    }
    default:
      throw new Error(`openDataset: unknown dataset '${kind}' in '${spec}' (known: cifar10:DIR, cifar100:DIR, mnist[:DIR], fashion-mnist[:DIR], folder:DIR, synthetic[:N])`);
  }
}
