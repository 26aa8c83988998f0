/**
 * A small VGG-style net (stem conv3x3 3->C stride 1, `depth` conv3x3 C->C, each
 * with BN and ReLU, global average pool, linear): the foundation's smoke run
 * and benchmark network. Mirrored in bench/train_step.py for PyTorch.
 */
import type { Tensor } from '../torch/index.js';
import { F } from '../torch/index.js';
import { BatchNorm2d, Conv2d, Linear, Module, Sequential } from '../nn/index.js';

class ConvBNReLU extends Module {
  readonly conv: Conv2d;
  readonly bn: BatchNorm2d;
  constructor(cin: number, cout: number) {
    super();
    this.conv = this.registerModule('conv', new Conv2d(cin, cout, 3, { padding: 1, bias: false }));
    this.bn = this.registerModule('bn', new BatchNorm2d(cout));
  }
  forward(x: Tensor): Tensor {
    return this.bn.forwardRelu(this.conv.forward(x));
  }
}

export class SmallVGG extends Module {
  readonly features: Sequential;
  readonly linear: Linear;
  constructor(opts: { inChannels?: number; width?: number; depth?: number; numClasses?: number } = {}) {
    super();
    const c = opts.width ?? 32;
    const layers: Module[] = [new ConvBNReLU(opts.inChannels ?? 3, c)];
    for (let i = 0; i < (opts.depth ?? 4); i++) layers.push(new ConvBNReLU(c, c));
    this.features = this.registerModule('features', new Sequential(...layers));
    this.linear = this.registerModule('linear', new Linear(c, opts.numClasses ?? 10));
  }
  forward(x: Tensor): Tensor {
    return this.linear.forward(F.adaptiveAvgPool2d(this.features.forward(x), 1).flatten(1));
  }
}

