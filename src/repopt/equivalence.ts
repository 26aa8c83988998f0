/**
 * The equivalence checker: trains, side by side on the same random data, an
 * explicit CSLA block (its branches, constant scales, trained by the plain
 * optimizer) and the single-kernel block trained with the Grad Mult, then
 * compares the CSLA block's fused kernel with the single kernel (relative L1).
 * Backs `repopt check-equivalency` and the tests.
 */
import * as torch from '../torch/index.js';
import { F, type DType, type Tensor } from '../torch/index.js';
import { SGD, AdamW, clipGradNorm, clipGradNormCsla, type Optimizer, type OptimizerKind } from '../optim/index.js';
import { fuseKernel, freshBranchKernels, gradMult, normalizeSpec, type CslaSpec, type NormalSpec } from './csla.js';

export interface EquivalenceCase {
  name: string;
  spec: CslaSpec;
  optimizer: OptimizerKind;
  lr: number;
  momentum?: number;
  nesterov?: boolean;
  weightDecay?: number;
  /** AdamW: the release's signed Grad Mult instead of |s|. */
  signed?: boolean;
  clip?: { maxNorm: number; mode: 'plain' | 'csla' };
  /** 'equivalent' cases fail the check beyond tolerance; 'broken' ones are known not to hold. */
  expect: 'equivalent' | 'broken';
  steps?: number;
  batch?: number;
  size?: number;
}

export interface EquivalenceResult {
  name: string;
  dtype: DType;
  relL1: number;
  expect: 'equivalent' | 'broken';
  tolerance: number;
  pass: boolean;
}

export const TOLERANCE: Record<'float32' | 'float64', number> = { float32: 1e-5, float64: 1e-12 };

function relL1(a: Tensor, b: Tensor): number {
  return torch.tidy(() => a.sub(b).abs().sum().div(b.abs().sum()).item());
}

function perChannel(values: number[], dtype: DType): Tensor {
  return torch.tensor(values, { dtype: 'float64' }).to(dtype).view([1, values.length, 1, 1]);
}

/** Forward of the explicit multi-branch block. */
function cslaForward(n: NormalSpec, x: Tensor, convWs: Tensor[], idWs: Tensor[], dtype: DType): Tensor {
  let y: Tensor | null = null;
  let ci = 0;
  let ii = 0;
  for (const b of n.branches) {
    let term: Tensor;
    if (b.kind === 'conv') {
      const w = convWs[ci++];
      term = F.conv2d(x, w, null, { stride: n.stride, padding: [(b.kh - 1) / 2, (b.kw - 1) / 2], groups: n.groups });
    } else {
      term = x.mul(idWs[ii++].view([1, n.cout, 1, 1]));
    }
    term = term.mul(perChannel(Array.from(b.scale), dtype));
    y = y ? y.add(term) : term;
  }
  return y!;
}

function makeOptimizer(c: EquivalenceCase, params: [string, Tensor][], eps: number): Optimizer<{ lr: number }> {
  if (c.optimizer === 'sgd') {
    return new SGD(params, { lr: c.lr, momentum: c.momentum ?? 0, nesterov: c.nesterov ?? false, weightDecay: c.weightDecay ?? 0 });
  }
  return new AdamW(params, { lr: c.lr, weightDecay: c.weightDecay ?? 0, eps });
}

/** Runs one case in one dtype; returns the relative L1 difference of the fused kernels. */
export function runCase(c: EquivalenceCase, dtype: 'float32' | 'float64', seed = 0): EquivalenceResult {
  const n = normalizeSpec(c.spec);
  const steps = c.steps ?? 50;
  const batch = c.batch ?? 4;
  const size = c.size ?? 8;
  // Adam's eps is the one place the equivalence is approximate (eps/sqrt(v) terms);
  // in float64 it is taken negligible so the check measures the rule, not eps.
  const eps = dtype === 'float64' ? 1e-30 : 1e-8;
  torch.manualSeed(seed);
  const gen = new torch.Generator(seed + 1);
  const relDiff = torch.tidy(() => {
    const convWs = freshBranchKernels(n, dtype).map((w) => w.requiresGrad_());
    const idWs = n.branches
      .filter((b) => b.kind === 'identity')
      .map(() => torch.rand([n.cout], { dtype, generator: gen }).mul(0.5).add(0.75).requiresGrad_());
    const fused = fuseKernel(n, { convKernels: convWs, identityWeights: idWs }, dtype).detach().requiresGrad_();

    const idBranches = n.branches.filter((b) => b.kind === 'identity');
    idWs.forEach((w, i) => w.requiresGrad_(idBranches[i].trainable));
    const cslaParams: [string, Tensor][] = [
      ...convWs.map((w, i): [string, Tensor] => [`conv${i}`, w]),
      ...idWs.flatMap((w, i): [string, Tensor][] => (idBranches[i].trainable ? [[`identity${i}`, w]] : [])),
    ];

    const plain = makeOptimizer(c, cslaParams, eps);
    const rep = makeOptimizer(c, [['kernel', fused]], eps);
    const mult = gradMult(n, c.optimizer, { dtype, signed: c.signed });
    rep.setGradMults(new Map([['kernel', mult]]));
    const sgdMults = new Map([['kernel', c.optimizer === 'sgd' ? mult : gradMult(n, 'sgd', { dtype })]]);

    const pad = [(n.kh - 1) / 2, (n.kw - 1) / 2] as [number, number];
    for (let step = 0; step < steps; step++) {
      torch.tidy(() => {
        const x = torch.randn([batch, n.cin, size, size], { dtype: 'float64', generator: gen }).to(dtype);
        const lossA = cslaForward(n, x, convWs, idWs, dtype).var();
        const lossB = F.conv2d(x, fused, null, { stride: n.stride, padding: pad, groups: n.groups }).var();
        plain.zeroGrad();
        rep.zeroGrad();
        lossA.backward();
        lossB.backward();
        if (c.clip) {
          clipGradNorm(cslaParams.map(([, p]) => p), c.clip.maxNorm);
          if (c.clip.mode === 'plain') clipGradNorm([fused], c.clip.maxNorm);
          else clipGradNormCsla([['kernel', fused]], c.clip.maxNorm, sgdMults);
        }
        plain.step();
        rep.step();
      });
    }
    const reference = fuseKernel(n, { convKernels: convWs, identityWeights: idWs }, dtype);
    const d = relL1(fused.detach(), reference);
    plain.dispose();
    rep.dispose();
    return d;
  });
  const tolerance = TOLERANCE[dtype];
  const within = relDiff <= tolerance;
  return { name: c.name, dtype, relL1: relDiff, expect: c.expect, tolerance, pass: c.expect === 'equivalent' ? within : true };
}

const C = 4;
const releaseBlock: CslaSpec = {
  inChannels: C,
  outChannels: C,
  kernel: 3,
  branches: [
    { kind: 'conv', kernel: 3, scale: 0.233 },
    { kind: 'conv', kernel: 1, scale: 0.555 },
  ],
};
const mixedSign: CslaSpec = {
  inChannels: C,
  outChannels: C,
  kernel: 3,
  branches: [
    { kind: 'conv', kernel: 3, scale: [0.8, -0.5, 1.2, -0.3] },
    { kind: 'conv', kernel: 1, scale: [-0.6, 0.4, 0.9, -1.1] },
  ],
};
const perChannelPositive: CslaSpec = {
  inChannels: C,
  outChannels: C,
  kernel: 3,
  branches: [
    { kind: 'conv', kernel: 3, scale: [0.9, 1.3, 0.4, 1.1] },
    { kind: 'conv', kernel: 1, scale: [0.5, 1.6, 0.7, 0.2] },
  ],
};
const repoptVggBlock: CslaSpec = {
  inChannels: 8,
  outChannels: 8,
  kernel: 3,
  branches: [
    { kind: 'conv', kernel: 3, scale: [1.11, 0.93, 1.24, 0.61, 0.88, 1.47, 0.72, 1.05] },
    { kind: 'conv', kernel: 1, scale: [1.53, 0.41, 0.97, 1.18, 0.26, 0.84, 1.31, 0.57] },
    { kind: 'identity' },
  ],
};
const ghostBlock: CslaSpec = {
  inChannels: 8,
  outChannels: 8,
  kernel: 3,
  groups: 8,
  branches: [
    { kind: 'conv', kernel: 3, scale: [0.7, 1.2, 0.95, 1.4, 0.5, 0.85, 1.1, 0.65] },
    { kind: 'identity' },
  ],
};
const acnetBlock: CslaSpec = {
  inChannels: C,
  outChannels: C,
  kernel: 3,
  branches: [
    { kind: 'conv', kernel: 3, scale: 0.8 },
    { kind: 'conv', kernel: [1, 3], scale: 0.6 },
    { kind: 'conv', kernel: [3, 1], scale: 0.4 },
  ],
};

/** The cases of `repopt check-equivalency`. */
export const CASES: EquivalenceCase[] = [
  { name: 'plain SGD', spec: releaseBlock, optimizer: 'sgd', lr: 0.1, expect: 'equivalent' },
  { name: 'release settings: SGD momentum 0.9, wd 0.1 (scales 0.233, 0.555)', spec: releaseBlock, optimizer: 'sgd', lr: 0.1, momentum: 0.9, weightDecay: 0.1, expect: 'equivalent' },
  { name: 'release settings: AdamW, wd 0.1', spec: releaseBlock, optimizer: 'adamw', lr: 0.1, weightDecay: 0.1, expect: 'equivalent' },
  { name: 'SGD momentum 0.9 nesterov, wd 1e-2, per-channel scales', spec: perChannelPositive, optimizer: 'sgd', lr: 0.05, momentum: 0.9, nesterov: true, weightDecay: 1e-2, expect: 'equivalent' },
  { name: 'AdamW, wd 1e-2, per-channel scales', spec: perChannelPositive, optimizer: 'adamw', lr: 0.01, weightDecay: 1e-2, expect: 'equivalent' },
  { name: 'AdamW, mixed-sign scales, |s| rule', spec: mixedSign, optimizer: 'adamw', lr: 0.01, weightDecay: 1e-2, expect: 'equivalent' },
  { name: "AdamW, mixed-sign scales, release's signed rule", spec: mixedSign, optimizer: 'adamw', lr: 0.01, weightDecay: 1e-2, signed: true, expect: 'broken' },
  { name: 'SGD momentum 0.9 + clipping by plain norm', spec: perChannelPositive, optimizer: 'sgd', lr: 0.05, momentum: 0.9, clip: { maxNorm: 0.05, mode: 'plain' }, expect: 'broken' },
  { name: 'SGD momentum 0.9 + clipping by CSLA norm', spec: perChannelPositive, optimizer: 'sgd', lr: 0.05, momentum: 0.9, clip: { maxNorm: 0.05, mode: 'csla' }, expect: 'equivalent' },
  { name: 'RepOpt-VGG block: 3x3 + 1x1 + trainable identity, SGD nesterov wd', spec: repoptVggBlock, optimizer: 'sgd', lr: 0.05, momentum: 0.9, nesterov: true, weightDecay: 4e-5, expect: 'equivalent' },
  { name: 'RepOpt-VGG block, AdamW', spec: repoptVggBlock, optimizer: 'adamw', lr: 0.01, weightDecay: 0.05, expect: 'equivalent' },
  { name: 'Ghost block: depthwise 3x3 + trainable identity, SGD momentum', spec: ghostBlock, optimizer: 'sgd', lr: 0.05, momentum: 0.9, weightDecay: 1e-4, expect: 'equivalent' },
  { name: 'ACNet block: 3x3 + 1x3 + 3x1, SGD momentum', spec: acnetBlock, optimizer: 'sgd', lr: 0.05, momentum: 0.9, expect: 'equivalent' },
];
