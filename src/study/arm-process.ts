/**
 * One training run of the study in its own process (as the demo runs its stages), so that each run's
 * peak memory is its own and a crash ends one run, not the study: `node arm-process.js JSON`, where
 * JSON is the run's `runTraining` options. Prints the run's summary lines; exit 0 when it finished,
 * 130 / 143 when SIGINT / SIGTERM stopped it (its checkpoint saved: the study resumes it).
 */
import { runTraining } from '../train/run.js';
import { exitCodeFor } from '../train/interrupt.js';
import type { TrainingRunOptions } from '../train/run-options.js';

const options = JSON.parse(process.argv[2] ?? '{}') as TrainingRunOptions;
try {
  const r = await runTraining({ ...options, log: (l) => console.log(l) });
  if (r.stopSignal) process.exitCode = exitCodeFor(r.stopSignal);
} catch (e) {
  console.error((e as Error).message);
  process.exitCode = 1;
}
