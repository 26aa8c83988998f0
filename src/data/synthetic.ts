/**
 * A synthetic classification set for smoke runs and benchmarks: each class is
 * a fixed random image template; samples are the template plus Gaussian noise.
 * Learnable, deterministic for a seed, and needs no download.
 */
import * as torch from '../torch/index.js';
import type { Tensor } from '../torch/index.js';

export interface SyntheticOptions {
  numClasses?: number;
  channels?: number;
  size?: number;
  noise?: number;
  seed?: number;
}

export class SyntheticImages {
  readonly numClasses: number;
  readonly channels: number;
  readonly size: number;
  readonly noise: number;
  readonly #templates: Tensor;
  readonly #gen: torch.Generator;

  constructor(opts: SyntheticOptions = {}) {
    this.numClasses = opts.numClasses ?? 10;
    this.channels = opts.channels ?? 3;
    this.size = opts.size ?? 32;
    this.noise = opts.noise ?? 1.0;
    this.#gen = new torch.Generator(opts.seed ?? 0);
    this.#templates = torch.keep(torch.randn([this.numClasses, this.channels, this.size, this.size], { generator: this.#gen }));
  }

  /** A batch {x: [N, C, H, W] float32, y: [N] int64}. */
  batch(n: number): { x: Tensor; y: Tensor } {
    const y = torch.randint(0, this.numClasses, [n], { generator: this.#gen });
    const x = torch.tidy(() =>
      this.#templates.indexSelect(0, y).add(torch.randn([n, this.channels, this.size, this.size], { generator: this.#gen }).mul(this.noise)),
    );
    return { x, y };
  }

  dispose(): void {
    this.#templates.dispose();
  }
}
