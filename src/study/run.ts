/**
 * `runStudy` (`repopt study`, issue 25): where does RepOpt-VGG's structural prior pay off? Plain VGG,
 * RepVGG, QARepVGG and RepOpt-VGG (from searched and from initial scales) at two depths, several seeds
 * each, on real data; then INT8 / low-bit post-training quantization of every run, the search budget,
 * a side-by-side speed benchmark per arm, and a verdict per comparison (study.json, summary.md,
 * report.html). Resumable: a finished run is never trained again, an interrupted one continues.
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { openDataset } from '../data/dataset.js';
import { familyOf } from '../models/family.js';
import { InterruptedError, STOP_SIGNALS, exitCodeFor, type StopSignal } from '../train/interrupt.js';
import { planRuns, seedDir, type PlannedRun, type StudyOptions } from './plan.js';

const ARM_PROCESS = path.join(path.dirname(fileURLToPath(import.meta.url)), 'arm-process.js');

/** Whether a run finished: its final checkpoint (and, for a search, its scales) exist. */
export function runDone(r: PlannedRun): boolean {
  return fs.existsSync(path.join(r.dir, 'final.pth')) && (!r.arm.startsWith('search') || fs.existsSync(path.join(r.dir, 'scales.pth')));
}

/** The paper's initial constant scales of a depth's hs model (what a search starts from), for the no-search arm. */
function writeInitialScales(o: StudyOptions, r: PlannedRun, file: string): void {
  const ds = openDataset(o.data, 'train');
  const m = r.options.model as { blocks: number[]; widths: number[]; strides: number[] };
  const spec = { ...m, inChannels: ds.channels, numClasses: ds.numClasses };
  const family = familyOf(spec);
  const model = family.create(spec, 'hs');
  try {
    const scales = family.extractScales(model);
    try {
      fs.mkdirSync(path.dirname(file), { recursive: true });
      family.saveScales(file, scales, model, family.label(spec));
    } finally {
      for (const t of scales.values()) t.dispose();
    }
  } finally {
    model.dispose();
  }
}

/**
 * Runs one training run in a child process, passing SIGINT / SIGTERM on once (the child saves at its
 * next step); its output lines go to `log` with the run's key in front.
 */
function trainInChild(r: PlannedRun, resume: boolean, log: (l: string) => void): Promise<void> {
  const options = { ...r.options, out: r.dir, resume, quiet: true };
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [ARM_PROCESS, JSON.stringify(options)], { stdio: ['ignore', 'pipe', 'pipe'], detached: true });
    let received: StopSignal | null = null;
    const forward = (signal: StopSignal) => {
      received ??= signal;
      child.kill(signal);
    };
    const orphanGuard = () => child.kill('SIGTERM');
    for (const s of STOP_SIGNALS) process.on(s, forward);
    process.on('exit', orphanGuard);
    let err = '';
    const lines = (stream: NodeJS.ReadableStream, onLine: (l: string) => void) => {
      let buf = '';
      stream.on('data', (d: Buffer) => {
        buf += d.toString();
        const parts = buf.split('\n');
        buf = parts.pop()!;
        for (const l of parts) if (l.trim()) onLine(l);
      });
    };
    lines(child.stdout!, (l) => log(`  [${r.key}] ${l}`));
    lines(child.stderr!, (l) => {
      err += `${l}\n`;
      log(`  [${r.key}] ${l}`);
    });
    child.on('exit', (code, signal) => {
      for (const s of STOP_SIGNALS) process.off(s, forward);
      process.off('exit', orphanGuard);
      const stoppedBy = received ?? STOP_SIGNALS.find((s) => code === exitCodeFor(s) || signal === s);
      if (code === 0 && !received) resolve();
      else if (stoppedBy) reject(new InterruptedError(stoppedBy, `study interrupted by ${stoppedBy} during ${r.key}; its checkpoint is saved, run the study again to continue`));
      else reject(new Error(`${r.key} failed (exit ${code ?? signal}): ${err.trim().split('\n').pop() ?? ''}`));
    });
  });
}

export interface TrainingPhase {
  runs: PlannedRun[];
  trained: number;
  skipped: number;
  minutes: number;
}

/** Trains every planned run that is not finished yet, in order, with progress lines. */
export async function trainStudyRuns(o: StudyOptions): Promise<TrainingPhase> {
  const log = o.log ?? console.log;
  const runs = planRuns(o);
  const t0 = performance.now();
  let trained = 0;
  let skipped = 0;
  for (const [i, r] of runs.entries()) {
    const tag = `[${i + 1}/${runs.length}] ${r.key}`;
    if (runDone(r)) {
      skipped++;
      continue;
    }
    if (r.arm === 'repopt-init') {
      const file = path.join(seedDir(o.out, r.depth, r.seed), 'initial-scales.pth');
      if (!fs.existsSync(file)) writeInitialScales(o, r, file);
    }
    if (r.needs && !fs.existsSync(r.needs)) throw new Error(`${r.key} needs ${r.needs}, which its search did not write`);
    const resume = fs.existsSync(path.join(r.dir, 'latest.pth'));
    const t = performance.now();
    const elapsed = (t - t0) / 60000;
    log(`${tag}: ${resume ? 'resuming' : 'training'} (${trained} trained so far in ${elapsed.toFixed(1)} min, ${skipped} already done)`);
    await trainInChild(r, resume, log);
    trained++;
    log(`${tag}: done in ${((performance.now() - t) / 60000).toFixed(1)} min`);
  }
  return { runs, trained, skipped, minutes: (performance.now() - t0) / 60000 };
}
