/** `repopt report RUN_DIR... [--out FILE.html]`: one self-contained HTML page of runs. */
import path from 'node:path';
import { loadRunModels, writeReport } from '../report/index.js';
import { REPORT_COMMAND } from './commands.js';
import { parseCommand } from './flags.js';

export async function runReport(argv: string[], log: (l: string) => void): Promise<number> {
  const { flags: f, args: dirs } = parseCommand(REPORT_COMMAND, argv);
  const out = f.out ?? (dirs.length === 1 ? path.join(dirs[0], 'report.html') : 'report.html');
  if (!f['no-weights']) await loadRunModels(dirs, log);
  const r = writeReport(dirs, out, { title: f.title, weights: !f['no-weights'], log });
  log(`report: ${r.data.runs.length} run(s), ${r.data.charts.length} charts, ${(r.bytes / 1024).toFixed(0)} KiB -> ${r.file}`);
  return 0;
}
