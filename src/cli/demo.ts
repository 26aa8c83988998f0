/**
 * `repopt demo`: the paper's comparison, end to end, on Fashion-MNIST in about
 * ten minutes on two cores. Hyper-Search of a small RepOpt-VGG, RepOpt training
 * of its target model from the searched scales, and the RepVGG and plain
 * baselines with the same budget; then a table of accuracy, training speed,
 * peak memory and parameters at training and inference time. Each run is its
 * own process (as a rank will be), so peak memory is per run.
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { readJsonl } from '../train/log.js';
import { vggBlockLayout } from '../models/repoptvgg.js';
import { DeployVGG } from '../deploy/fuse.js';
import { InterruptedError, STOP_SIGNALS, exitCodeFor, type StopSignal } from '../train/interrupt.js';

export interface DemoOptions {
  out: string;
  data: string;
  epochs: number;
  searchEpochs: number;
  batchSize: number;
  threads?: number;
  log: (line: string) => void;
}

const ARCH = { blocks: [2, 2, 2, 1], widths: [0.25, 0.25, 0.25, 0.25], strides: [1, 1, 2, 2, 2] };
const CLI = path.join(path.dirname(fileURLToPath(import.meta.url)), 'main.js');

function archFlags(): string[] {
  return ['--blocks', ARCH.blocks.join(','), '--widths', ARCH.widths.join(','), '--strides', ARCH.strides.join(',')];
}

/** Parameters of the deployed net (every block one 3x3 conv with bias, then the classifier). */
export function deployedParams(inChannels: number, numClasses: number): number {
  const layout = vggBlockLayout({ numBlocks: ARCH.blocks, widthMultiplier: ARCH.widths }, { inChannels, strides: ARCH.strides });
  const net = new DeployVGG({ layout, numClasses });
  const n = net.numParameters();
  net.dispose();
  return n;
}

/**
 * Runs one stage as a child process. The child gets its own process group, so
 * a terminal's Ctrl-C reaches only the demo, which passes each SIGINT/SIGTERM on
 * exactly once: the child saves at its next step and exits 130/143 (a second
 * signal makes it quit at once), then the demo stops with the same code.
 */
function run(args: string[], log: (l: string) => void): Promise<void> {
  log(`$ repopt ${args.join(' ')}`);
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [CLI, ...args], { stdio: ['ignore', 'inherit', 'inherit'], detached: true });
    let received: StopSignal | null = null;
    const forward = (signal: StopSignal) => {
      received ??= signal;
      child.kill(signal);
    };
    const orphanGuard = () => child.kill('SIGTERM'); // the demo exiting abnormally must not leave a run behind
    for (const s of STOP_SIGNALS) process.on(s, forward);
    process.on('exit', orphanGuard);
    child.on('exit', (code, signal) => {
      for (const s of STOP_SIGNALS) process.off(s, forward);
      process.off('exit', orphanGuard);
      const stoppedBy = received ?? STOP_SIGNALS.find((s) => code === exitCodeFor(s) || signal === s);
      if (code === 0 && !received) resolve();
      else if (stoppedBy) reject(new InterruptedError(stoppedBy, `repopt ${args[0]} interrupted by ${stoppedBy} (exit code ${code ?? signal}); its checkpoint is saved, rerun the demo to continue`));
      else reject(new Error(`repopt ${args[0]} exited with code ${code ?? signal}`));
    });
  });
}

interface RunRow {
  name: string;
  mode: string;
  top1: number;
  imgPerSec: number;
  peakRss: number;
  params: number;
}

function readEnd(dir: string, name: string, mode: string): RunRow {
  const end = readJsonl(path.join(dir, 'log.jsonl')).filter((r) => r.type === 'end').pop();
  if (!end) throw new Error(`${dir}: the run has no end record`);
  return {
    name,
    mode,
    top1: end.valTop1 as number,
    imgPerSec: end.trainImgPerSec as number,
    peakRss: end.peakRssBytes as number,
    params: end.params as number,
  };
}

export async function runDemo(o: DemoOptions): Promise<number> {
  const fmnist = o.data.startsWith('fashion-mnist') ? (o.data.split(':')[1] ?? '/usr/share/datasets/fashion-mnist') : null;
  if (fmnist && !fs.existsSync(path.join(fmnist, 'train-images-idx3-ubyte.gz')) && !fs.existsSync(path.join(fmnist, 'train-images-idx3-ubyte'))) {
    throw new Error(`Fashion-MNIST not found in ${fmnist}; install it with: apt-get install dataset-fashion-mnist`);
  }
  const common = ['--data', o.data, ...archFlags(), '--batch-size', String(o.batchSize), '--momentum', '0.9', '--nesterov', '--wd', '1e-4', '--label-smoothing', '0.1', '--warmup', '0.2', '--lr', '0.1'];
  if (o.threads) common.push('--threads', String(o.threads));
  const resumeIf = (dir: string) => (fs.existsSync(path.join(dir, 'latest.pth')) ? ['--resume'] : []);
  const done = (dir: string) => fs.existsSync(path.join(dir, 'final.pth'));
  const t0 = performance.now();
  o.log(`repopt demo: RepOpt-VGG (blocks ${ARCH.blocks}, widths ${ARCH.widths}, strides ${ARCH.strides}) on ${o.data}; outputs in ${o.out}`);

  const dirs = {
    hs: path.join(o.out, 'search'),
    repopt: path.join(o.out, 'repopt'),
    repvgg: path.join(o.out, 'repvgg'),
    plain: path.join(o.out, 'plain'),
  };
  o.log(`\n[1/4] Hyper-Search: the hs model (trainable scales), plain SGD, ${o.searchEpochs} epoch(s)`);
  if (!done(dirs.hs) || !fs.existsSync(path.join(dirs.hs, 'scales.pth'))) {
    await run(['search', ...common, '--epochs', String(o.searchEpochs), '--out', dirs.hs, ...resumeIf(dirs.hs)], o.log);
  }
  const scales = path.join(dirs.hs, 'scales.pth');
  const steps: [string, string, string[]][] = [
    ['[2/4] RepOpt-VGG: the plain target model trained with RepOptimizer (Grad Mults from the searched scales)', dirs.repopt, ['--mode', 'target', '--scales', scales]],
    ['[3/4] RepVGG baseline: multi-branch training (3x3 + 1x1 + identity, each with BN)', dirs.repvgg, ['--mode', 'repvgg']],
    ['[4/4] Plain baseline: the same target model with ordinary SGD', dirs.plain, ['--mode', 'plain']],
  ];
  for (const [title, dir, extra] of steps) {
    o.log(`\n${title}, ${o.epochs} epoch(s)`);
    if (!done(dir)) await run(['train', ...common, ...extra, '--epochs', String(o.epochs), '--out', dir, ...resumeIf(dir)], o.log);
  }

  const rows = [
    readEnd(dirs.repopt, 'RepOpt-VGG', 'target + RepSGD'),
    readEnd(dirs.repvgg, 'RepVGG', 'repvgg + SGD'),
    readEnd(dirs.plain, 'plain VGG', 'target + SGD'),
  ];
  const search = readEnd(dirs.hs, 'Hyper-Search', 'hs + SGD');
  const config = JSON.parse(fs.readFileSync(path.join(dirs.repopt, 'config.json'), 'utf8')) as { model: { inChannels: number; numClasses: number } };
  const deploy = deployedParams(config.model.inChannels, config.model.numClasses);
  const mb = (b: number) => `${(b / 2 ** 20).toFixed(0)} MiB`;
  const lines = [
    '',
    `| model | training | top-1 (test) | train img/s | peak RSS | params (train) | params (inference) |`,
    `|---|---|---|---|---|---|---|`,
    ...rows.map((r) => `| ${r.name} | ${r.mode} | ${(r.top1 * 100).toFixed(2)}% | ${r.imgPerSec.toFixed(0)} | ${mb(r.peakRss)} | ${r.params.toLocaleString('en-US')} | ${deploy.toLocaleString('en-US')} |`),
    '',
    `Hyper-Search model: top-1 ${(search.top1 * 100).toFixed(2)}% (not predictive of the target's accuracy), ${search.imgPerSec.toFixed(0)} img/s.`,
    `RepOpt-VGG vs RepVGG: ${(rows[0].imgPerSec / rows[1].imgPerSec).toFixed(2)}x training throughput, ${(rows[1].peakRss / rows[0].peakRss).toFixed(2)}x less peak memory, ` +
      `${((rows[0].top1 - rows[1].top1) * 100).toFixed(2)} points of top-1; vs plain: ${((rows[0].top1 - rows[2].top1) * 100).toFixed(2)} points.`,
    `Inference: all three deploy to the same plain net (${deploy.toLocaleString('en-US')} params): BN folds into the convs, RepVGG's branches fuse into one 3x3.`,
    `Total time ${((performance.now() - t0) / 60000).toFixed(1)} min. Outputs: ${o.out}/{search,repopt,repvgg,plain}/ (log.jsonl, latest.pth, best.pth, final.pth; search/scales.pth + scales.json).`,
  ];
  for (const l of lines) o.log(l);
  fs.writeFileSync(path.join(o.out, 'summary.md'), lines.join('\n') + '\n');
  return 0;
}
