#!/usr/bin/env node
/** The `repopt` command line. */
import { runSmoke } from './smoke.js';
import { runCheckEquivalency } from './check-equivalency.js';
import { runScales } from './scales.js';
import { runTraining, runEval } from './train.js';
import { runDeploy, runExport, runInspectWeights, runQuantDemo, runQuantize } from './deploy.js';
import { runDemo } from './demo.js';
import { listArchs } from '../models/index.js';
import { runBench } from './bench.js';
import { UsageError, parseFlags } from './flags.js';
import { InterruptedError, exitCodeFor } from '../train/interrupt.js';

const USAGE = `usage: repopt <command> [options]

commands:
  models [--json]                                 the architectures, with params and MACs (target, 1000 classes, 224x224)
  demo [--out DIR] [--epochs N] [--search-epochs N] [--batch-size N] [--data SPEC]
                                                  Fashion-MNIST: Hyper-Search, RepOpt-VGG vs RepVGG vs plain, a table
  smoke [--steps N] [--batch-size N] [--seed N]   train a small conv net on synthetic data
  check-equivalency [--dtype f32|f64|both] [--case TEXT] [--json]
                                                  CSLA branches vs one kernel + Grad Mult, side by side
  scales FILE --arch ARCH [--rule sgd|adamw] [--json]
                                                  a scale file's re-parameterised kernels, scales and Grad Mults
  search --data SPEC (--arch A | --blocks B --widths W) [training options]
                                                  Hyper-Search: train the hs model, write OUT/scales.pth
  train --data SPEC (--arch A | --blocks B --widths W) [--mode target|repvgg|plain] [--scales FILE]
                                                  RepOpt training (target + Grad Mults) or a baseline
  eval --checkpoint FILE --data SPEC              top-1 / top-5 / loss on the test split
  deploy --checkpoint FILE --out FILE.pth         fuse branches / fold BN into the plain conv3x3+bias network
  export --checkpoint FILE --format onnx --out FILE.onnx [--int8 --calib SPEC [--calib-images N]
         [--observer minmax|percentile|mse] [--per-tensor] [--fp32-first] [--fp32-last]]
                                                  ONNX (opset 13, dynamic batch) of the deployed net, checked in ONNX Runtime
  quantize --checkpoint FILE --data SPEC [--calib-images N] [--observers LIST] [--weight-scales channel|tensor|both]
         [--weight-bits 8,6,5] [--fp32-first] [--fp32-last] [--qat-epochs N [--qat-bits B]] [--weights] [--json]
                                                  FP32 vs INT8 top-1 per observer, ONNX Runtime agreement, optional QAT
  inspect-weights --checkpoint FILE [--json]      per-layer weight std (overall, centre tap, surrounding taps)
  quant-demo [--data SPEC] [--epochs N] [--out DIR]
                                                  Fashion-MNIST: RepOpt-VGG vs RepVGG, FP32 and INT8 side by side
  bench [--arch A | --blocks B --widths W] [--image-size N] [--mode M | --modes M,M] [--batch N] [--optimizer repsgd|sgd]
        [--channels-last] [--max-batch --mem-cap MIB] [--opt-overhead] [--peak] [--json]
                                                  training-step speed and peak memory (see bench/README.md)
  (deploy, export, quantize, inspect-weights take the model from config.json beside the checkpoint, or
   --arch A | --blocks B --widths W [--strides S])

training options: --epochs N --batch-size N --lr X [--lr-per-256] --optimizer sgd|adamw --momentum X
  --nesterov --wd X [--wd-all] --schedule cosine|constant --warmup EPOCHS --label-smoothing X
  --ema DECAY --clip NORM --seed N --threads N --workers N --no-augment --no-shuffle --no-eval
  --init FILE.pth --identity-init searched|one --signed-adamw --strides 2,2,2,2,2 --image-size N
  --out DIR --resume --save-every STEPS --save-every-min MINUTES --log-every N --quiet
signals: SIGINT (Ctrl-C) or SIGTERM saves latest.pth at the next step and exits 130 / 143; a second one quits at once
data SPEC: cifar10:DIR  cifar100:DIR  mnist[:DIR]  fashion-mnist[:DIR]  folder:DIR  synthetic[:N]
`;


async function main(argv: string[]): Promise<number> {
  const [cmd, ...rest] = argv;
  switch (cmd) {
    case 'smoke': {
      const f = parseFlags(rest, { steps: 'number', 'batch-size': 'number', seed: 'number' });
      const r = runSmoke({
        steps: (f.steps as number) ?? 100,
        batchSize: (f['batch-size'] as number) ?? 32,
        seed: (f.seed as number) ?? 0,
        log: (l) => console.log(l),
      });
      return r.last < r.first ? 0 : 1;
    }
    case 'check-equivalency': {
      const f = parseFlags(rest, { dtype: 'string', case: 'string', json: 'boolean' });
      const d = (f.dtype as string | undefined) ?? 'both';
      const dtypes = ({ f32: ['float32'], float32: ['float32'], f64: ['float64'], float64: ['float64'], both: ['float32', 'float64'] } as const)[d];
      if (!dtypes) throw new UsageError(`--dtype must be f32, f64 or both, got '${d}'`);
      return runCheckEquivalency({ dtypes: [...dtypes], json: f.json === true, filter: f.case as string | undefined, log: (l) => console.log(l) });
    }
    case 'scales': {
      const [file, ...more] = rest;
      if (!file || file.startsWith('--')) throw new UsageError('scales needs a scale file');
      const f = parseFlags(more, { arch: 'string', rule: 'string', json: 'boolean' });
      if (!f.arch) throw new UsageError('scales needs --arch ARCH');
      const rule = (f.rule as string | undefined) ?? 'sgd';
      if (rule !== 'sgd' && rule !== 'adamw') throw new UsageError(`--rule must be sgd or adamw, got '${rule}'`);
      return runScales({ file, arch: f.arch as string, rule, json: f.json === true, log: (l) => console.log(l) });
    }
    case 'search':
    case 'train': {
      const r = await runTraining(rest, cmd, (l) => console.log(l));
      if (r.result.stopSignal) {
        console.log(`interrupted (${r.result.stopSignal}): checkpoint saved in ${r.out}/latest.pth; continue with the same command and --resume`);
        return exitCodeFor(r.result.stopSignal);
      }
      const e = r.result.lastEval;
      console.log(`done: ${r.out}${e ? ` (top-1 ${(e.top1 * 100).toFixed(2)}%)` : ''}`);
      return 0;
    }
    case 'models': {
      const f = parseFlags(rest, { json: 'boolean' });
      const archs = listArchs().map((a) => ({ name: a.name, family: a.family, modes: a.modes, params: a.params ?? null, macs: a.macs ?? null }));
      if (f.json) console.log(JSON.stringify(archs));
      else {
        console.log(`${'architecture'.padEnd(24)} ${'params'.padStart(12)} ${'MACs@224'.padStart(10)}  modes`);
        for (const a of archs) {
          const macs = a.macs === null ? '-' : a.macs >= 1e9 ? `${(a.macs / 1e9).toFixed(2)}G` : `${(a.macs / 1e6).toFixed(1)}M`;
          console.log(`${a.name.padEnd(24)} ${(a.params?.toLocaleString('en-US') ?? '-').padStart(12)} ${macs.padStart(10)}  ${a.modes.join(', ')}`);
        }
      }
      return 0;
    }
    case 'demo': {
      const f = parseFlags(rest, { out: 'string', data: 'string', epochs: 'number', 'search-epochs': 'number', 'batch-size': 'number', threads: 'number' });
      return runDemo({
        out: (f.out as string | undefined) ?? 'runs/demo',
        data: (f.data as string | undefined) ?? 'fashion-mnist',
        epochs: (f.epochs as number | undefined) ?? 2,
        searchEpochs: (f['search-epochs'] as number | undefined) ?? 1,
        batchSize: (f['batch-size'] as number | undefined) ?? 64,
        threads: f.threads as number | undefined,
        log: (l) => console.log(l),
      });
    }
    case 'eval':
      return runEval(rest, (l) => console.log(l));
    case 'deploy':
      return runDeploy(rest, (l) => console.log(l));
    case 'export':
      return runExport(rest, (l) => console.log(l));
    case 'quantize':
      return runQuantize(rest, (l) => console.log(l));
    case 'inspect-weights':
      return runInspectWeights(rest, (l) => console.log(l));
    case 'quant-demo':
      return runQuantDemo(rest, (l) => console.log(l));
    case 'bench':
      return runBench(rest, (l) => console.log(l));
    case undefined:
    case 'help':
    case '--help':
    case '-h':
      process.stdout.write(USAGE);
      return cmd === undefined ? 2 : 0;
    default:
      throw new UsageError(`unknown command '${cmd}'`);
  }
}

try {
  process.exitCode = await main(process.argv.slice(2));
} catch (e) {
  if (e instanceof InterruptedError) {
    process.stderr.write(`repopt: ${e.message}\n`);
    process.exitCode = e.exitCode;
  } else if (e instanceof UsageError) {
    process.stderr.write(`repopt: ${e.message}\n\n${USAGE}`);
    process.exitCode = 2;
  } else {
    process.stderr.write(`repopt: ${(e as Error).message}\n`);
    process.exitCode = 1;
  }
}
