/**
 * Weight initialisers with PyTorch's formulas (torch.nn.init). They draw from
 * the global generator in the same order as PyTorch, so a model built after
 * `manualSeed(s)` has PyTorch's exact initial weights for the same seed.
 */
import * as torch from '../torch/index.js';
import type { Tensor } from '../torch/index.js';

export function fans(t: Tensor): { fanIn: number; fanOut: number } {
  const s = t.shape;
  if (s.length < 2) throw new Error(`fan in/out need at least 2 dimensions, got shape [${s.join(', ')}]`);
  const receptive = s.slice(2).reduce((a, b) => a * b, 1);
  return { fanIn: s[1] * receptive, fanOut: s[0] * receptive };
}

export type Nonlinearity = 'linear' | 'relu' | 'leaky_relu' | 'tanh' | 'sigmoid';

export function gain(nonlinearity: Nonlinearity, param = 0.01): number {
  switch (nonlinearity) {
    case 'linear':
    case 'sigmoid':
      return 1;
    case 'tanh':
      return 5 / 3;
    case 'relu':
      return Math.SQRT2;
    case 'leaky_relu':
      return Math.sqrt(2 / (1 + param * param));
  }
}

function inPlace(t: Tensor, fn: () => void): Tensor {
  torch.noGrad(fn);
  return t;
}

export function uniform_(t: Tensor, a = 0, b = 1): Tensor {
  return inPlace(t, () => t.uniform_(a, b));
}
export function normal_(t: Tensor, mean = 0, std = 1): Tensor {
  return inPlace(t, () => t.normal_(mean, std));
}
export function constant_(t: Tensor, v: number): Tensor {
  return inPlace(t, () => t.fill_(v));
}
export function zeros_(t: Tensor): Tensor {
  return constant_(t, 0);
}
export function ones_(t: Tensor): Tensor {
  return constant_(t, 1);
}

export interface KaimingOptions {
  a?: number;
  mode?: 'fanIn' | 'fanOut';
  nonlinearity?: Nonlinearity;
}

/** PyTorch's kaiming_uniform_ (defaults: a=0, fan_in, leaky_relu). */
export function kaimingUniform_(t: Tensor, opts: KaimingOptions = {}): Tensor {
  const { fanIn, fanOut } = fans(t);
  const g = gain(opts.nonlinearity ?? 'leaky_relu', opts.a ?? 0);
  const bound = Math.sqrt(3) * (g / Math.sqrt(opts.mode === 'fanOut' ? fanOut : fanIn));
  return uniform_(t, -bound, bound);
}

export function kaimingNormal_(t: Tensor, opts: KaimingOptions = {}): Tensor {
  const { fanIn, fanOut } = fans(t);
  const g = gain(opts.nonlinearity ?? 'leaky_relu', opts.a ?? 0);
  return normal_(t, 0, g / Math.sqrt(opts.mode === 'fanOut' ? fanOut : fanIn));
}

export function xavierUniform_(t: Tensor, g = 1): Tensor {
  const { fanIn, fanOut } = fans(t);
  const bound = g * Math.sqrt(6 / (fanIn + fanOut));
  return uniform_(t, -bound, bound);
}

/** The default init of PyTorch's Conv and Linear layers: kaiming_uniform(a=sqrt(5)) + uniform bias. */
export function defaultLayerInit_(weight: Tensor, bias: Tensor | null): void {
  kaimingUniform_(weight, { a: Math.sqrt(5) });
  if (bias) {
    const { fanIn } = fans(weight);
    const bound = fanIn > 0 ? 1 / Math.sqrt(fanIn) : 0;
    uniform_(bias, -bound, bound);
  }
}
