#!/usr/bin/env node
/** The `repopt` command line: each command is a flag spec (help is generated from it) and a thin run. */
import { HelpRequest, UsageError, formatHelp, parseCommand, usageLine, type CommandSpec, type FlagSpec } from './flags.js';
import {
  BENCH_COMMAND, CHECK_EQUIVALENCY_COMMAND, DEMO_COMMAND, DEPLOY_COMMAND, DTYPES, EVAL_COMMAND, EXPORT_COMMAND, INSPECT_WEIGHTS_COMMAND,
  COMMAND_SPECS, MODELS_COMMAND, QUANTIZE_COMMAND, QUANT_DEMO_COMMAND, REPORT_COMMAND, SCALES_COMMAND, SEARCH_COMMAND, SETUP_COMMAND, SMOKE_COMMAND,
  STUDY_COMMAND, TRAIN_COMMAND,
} from './commands.js';
import { InterruptedError, exitCodeFor } from '../train/interrupt.js';
import { runSetup } from './setup.js';
import { distEnvFrom } from '../distributed/env.js';
import { OptionError } from '../errors.js';

type Log = (line: string) => void;

interface Command {
  spec: CommandSpec<FlagSpec>;
  run(argv: string[], log: Log): Promise<number>;
}

// The runners load libtorch; they are imported when their command runs, so help and usage errors answer at once,
// and `repopt setup` runs before the addon exists (test/package.test.ts checks it in an installed package).
async function runTrainCommand(argv: string[], command: 'search' | 'train', log: Log): Promise<number> {
  // --nproc N: this process only launches the workers (each runs this command without the launcher flags).
  const { flags } = command === 'search' ? parseCommand(SEARCH_COMMAND, argv) : parseCommand(TRAIN_COMMAND, argv);
  const { maybeLaunch } = await import('./launch.js');
  const launched = await maybeLaunch(command, argv, flags, process.argv[1], flags.out);
  if (launched !== null) return launched;
  const { runTrainingCommand } = await import('./train.js');
  const r = await runTrainingCommand(argv, command, log);
  if ((distEnvFrom()?.rank ?? 0) !== 0) return r.stopSignal ? exitCodeFor(r.stopSignal) : 0; // rank 0 reports
  if (r.stopSignal) {
    log(`interrupted (${r.stopSignal}): checkpoint saved in ${r.out}/latest.pth; continue with the same command and --resume`);
    return exitCodeFor(r.stopSignal);
  }
  if (r.alreadyFinished) {
    log(`already finished: ${r.out} (epoch ${r.state.epoch} of ${r.config.epochs}); nothing changed`);
    return 0;
  }
  const e = r.lastEval;
  log(`done: ${r.out}${e ? ` (top-1 ${(e.top1 * 100).toFixed(2)}%)` : ''}${r.stopReason ? `; stopped early: ${r.stopReason}` : ''}`);
  return 0;
}

const COMMANDS: Command[] = [
  {
    spec: MODELS_COMMAND,
    async run(argv, log) {
      const { flags: f } = parseCommand(MODELS_COMMAND, argv);
      const { listArchs } = await import('../models/index.js');
      const archs = listArchs().map((a) => ({ name: a.name, family: a.family, modes: a.modes, params: a.params ?? null, macs: a.macs ?? null }));
      if (f.json) log(JSON.stringify(archs));
      else {
        log(`${'architecture'.padEnd(24)} ${'params'.padStart(12)} ${'MACs@224'.padStart(10)}  modes`);
        for (const a of archs) {
          const macs = a.macs === null ? '-' : a.macs >= 1e9 ? `${(a.macs / 1e9).toFixed(2)}G` : `${(a.macs / 1e6).toFixed(1)}M`;
          log(`${a.name.padEnd(24)} ${(a.params?.toLocaleString('en-US') ?? '-').padStart(12)} ${macs.padStart(10)}  ${a.modes.join(', ')}`);
        }
      }
      return 0;
    },
  },
  {
    spec: DEMO_COMMAND,
    async run(argv, log) {
      const { flags: f } = parseCommand(DEMO_COMMAND, argv);
      const { runDemo } = await import('./demo.js');
      return runDemo({
        out: f.out, data: f.data, epochs: f.epochs, searchEpochs: f['search-epochs'], batchSize: f['batch-size'], threads: f.threads, seeds: f.seeds,
        command: ['repopt', 'demo', ...argv].join(' '), log,
      });
    },
  },
  {
    spec: SMOKE_COMMAND,
    async run(argv, log) {
      const { flags: f } = parseCommand(SMOKE_COMMAND, argv);
      const [{ runSmoke }, { applyThreads }] = await Promise.all([import('./smoke.js'), import('./threads.js')]);
      applyThreads(f.threads);
      const r = runSmoke({ steps: f.steps, batchSize: f['batch-size'], seed: f.seed, log });
      return r.last < r.first ? 0 : 1;
    },
  },
  {
    spec: CHECK_EQUIVALENCY_COMMAND,
    async run(argv, log) {
      const { flags: f } = parseCommand(CHECK_EQUIVALENCY_COMMAND, argv);
      const { runCheckEquivalency } = await import('./check-equivalency.js');
      return runCheckEquivalency({ dtypes: [...DTYPES[f.dtype]], json: f.json, filter: f.case, log });
    },
  },
  {
    spec: SCALES_COMMAND,
    async run(argv, log) {
      const { flags: f, args } = parseCommand(SCALES_COMMAND, argv);
      const { runScales } = await import('./scales.js');
      return runScales({ file: args[0], arch: f.arch, rule: f.rule, json: f.json, log });
    },
  },
  { spec: SEARCH_COMMAND, run: (argv, log) => runTrainCommand(argv, 'search', log) },
  { spec: TRAIN_COMMAND, run: (argv, log) => runTrainCommand(argv, 'train', log) },
  { spec: EVAL_COMMAND, run: async (argv, log) => (await import('./train.js')).runEval(argv, log) },
  { spec: DEPLOY_COMMAND, run: async (argv, log) => (await import('./deploy.js')).runDeploy(argv, log) },
  { spec: EXPORT_COMMAND, run: async (argv, log) => (await import('./deploy.js')).runExport(argv, log) },
  { spec: QUANTIZE_COMMAND, run: async (argv, log) => (await import('./deploy.js')).runQuantize(argv, log) },
  { spec: INSPECT_WEIGHTS_COMMAND, run: async (argv, log) => (await import('./deploy.js')).runInspectWeights(argv, log) },
  { spec: QUANT_DEMO_COMMAND, run: async (argv, log) => (await import('./deploy.js')).runQuantDemo(argv, log) },
  { spec: STUDY_COMMAND, run: async (argv, log) => (await import('./study.js')).runStudyCommand(argv, log) },
  { spec: REPORT_COMMAND, run: async (argv, log) => (await import('./report.js')).runReport(argv, log) },
  { spec: BENCH_COMMAND, run: async (argv, log) => (await import('./bench.js')).runBench(argv, log) },
  { spec: SETUP_COMMAND, run: async () => runSetup() },
];

function overview(): string {
  const lines = ['usage: repopt <command> [options]', '       repopt <command> --help    (every option of a command)', '', 'commands:'];
  for (const c of COMMANDS) lines.push(`  ${c.spec.name.padEnd(18)} ${c.spec.summary}`);
  lines.push('', '`repopt` is `node dist/src/cli/main.js`. Exit codes: 0 done, 1 error, 2 bad command line, 130 / 143 stopped by SIGINT / SIGTERM (the checkpoint saved; --resume continues).');
  return lines.join('\n') + '\n';
}

for (const spec of COMMAND_SPECS) if (!COMMANDS.some((c) => c.spec === spec)) throw new Error(`command '${spec.name}' has no runner`);

/** The flags that set a library option (OptionError.option). */
function flagsOf(option: string, spec: CommandSpec<FlagSpec>): string {
  const special: Record<string, string> = { model: '--arch / --blocks --widths [--strides]', ...spec.optionFlags };
  return special[option] ?? `--${option.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)}`;
}

function find(name: string): Command | undefined {
  return COMMANDS.find((c) => c.spec.name === name);
}

async function main(argv: string[]): Promise<number> {
  const [cmd, ...rest] = argv;
  if (cmd === undefined) {
    process.stderr.write(overview());
    return 2;
  }
  if (cmd === 'help' || cmd === '--help' || cmd === '-h') {
    if (rest.length === 0) {
      process.stdout.write(overview());
      return 0;
    }
    const c = find(rest[0]);
    if (!c) throw new UsageError(`unknown command '${rest[0]}'`);
    process.stdout.write(formatHelp(c.spec));
    return 0;
  }
  const c = find(cmd);
  if (!c) throw new UsageError(`unknown command '${cmd}' (commands: ${COMMANDS.map((x) => x.spec.name).join(', ')})`);
  try {
    parseCommand(c.spec, rest); // help and usage errors before the runner (and libtorch) loads
    return await c.run(rest, (l) => console.log(l));
  } catch (e) {
    // A bad option reported by the library (in its words) is a bad command line: say which flags.
    const message = e instanceof UsageError ? e.message : e instanceof OptionError ? `${flagsOf(e.option, c.spec)}: ${e.message}` : null;
    if (message === null) throw e;
    process.stderr.write(`repopt ${cmd}: ${message}\nusage: ${usageLine(c.spec)}\n(\`repopt ${cmd} --help\` lists every option)\n`);
    return 2;
  }
}

try {
  process.exitCode = await main(process.argv.slice(2));
} catch (e) {
  if (e instanceof HelpRequest) {
    process.stdout.write(e.text);
    process.exitCode = 0;
  } else if (e instanceof InterruptedError) {
    process.stderr.write(`repopt: ${e.message}\n`);
    process.exitCode = e.exitCode;
  } else if (e instanceof UsageError) {
    // Data-parallel workers other than rank 0 say what is wrong without the overview.
    process.stderr.write(`repopt: ${e.message}\n${(distEnvFrom()?.rank ?? 0) === 0 ? `\n${overview()}` : ''}`);
    process.exitCode = 2;
  } else {
    process.stderr.write(`repopt: ${(e as Error).message}\n`);
    process.exitCode = 1;
  }
}
