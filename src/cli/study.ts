/** `repopt study`: flags to `runStudy` options (src/study), and the exit code. */
import { parseCommand } from './flags.js';
import { STUDY_COMMAND } from './commands.js';
import { DEEP, SHALLOW, STUDY_DEFAULTS, type StudyOptions } from '../study/plan.js';
import { runStudy } from '../study/run.js';

/** --quick: the whole pipeline on tiny synthetic data (a test runs it). */
export const QUICK: Partial<StudyOptions> = {
  data: 'synthetic:256',
  depths: [
    { name: 'shallow', blocks: [1, 1, 1, 1], widths: [0.25, 0.25, 0.25, 0.25], strides: [2, 1, 2, 2, 2] },
    { name: 'deep', blocks: [2, 2, 2, 1], widths: [0.25, 0.25, 0.25, 0.25], strides: [2, 1, 2, 2, 2] },
  ],
  seeds: 2,
  budgetSearchEpochs: [2],
  batchSize: 32,
  calibImages: 64,
  onnxImages: 32,
  benchRounds: 1,
};

export async function runStudyCommand(argv: string[], log: (l: string) => void): Promise<number> {
  const { flags: f, given } = parseCommand(STUDY_COMMAND, argv);
  const depths = f.depths.map((d) => (d === 'shallow' ? SHALLOW : DEEP));
  const o: StudyOptions = {
    ...STUDY_DEFAULTS,
    depths,
    out: f.out,
    data: f.data,
    seeds: f.seeds,
    epochs: f.epochs,
    searchEpochs: f['search-epochs'],
    budgetSearchEpochs: f['budget-search-epochs'].filter((e) => e > 0),
    arms: f.arms,
    batchSize: f['batch-size'],
    lr: f.lr,
    benchRounds: f['bench-rounds'],
    quantTestImages: f['quant-test-images'],
    reportOnly: f['report-only'],
    threads: f.threads,
    command: ['repopt', 'study', ...argv].join(' '),
    log,
  };
  if (f.quick) {
    for (const [k, v] of Object.entries(QUICK)) if (!(given as ReadonlySet<string>).has(k.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`))) (o as unknown as Record<string, unknown>)[k] = v;
  }
  await runStudy(o);
  return 0;
}
