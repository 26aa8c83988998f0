/** Seeding: the global generator (`manualSeed`) and independent seeded generators. */
import { native, type GeneratorHandle } from './native.js';
import { Tensor } from './tensor.js';

export function manualSeed(seed: number | bigint): void {
  native.manualSeed(seed);
}

/** A CPU random generator of its own (like `torch.Generator().manual_seed(seed)`). */
export class Generator {
  readonly handle: GeneratorHandle;
  constructor(seed: number | bigint = 0) {
    this.handle = native.newGenerator(seed);
  }
  /** The generator's state as a uint8 tensor (for checkpoints). */
  getState(): Tensor {
    return new Tensor(native.generatorState(this.handle));
  }
  setState(state: Tensor): void {
    native.setGeneratorState(this.handle, state.handle);
  }
}
