/**
 * `repopt train|search --nproc N [--nnodes M --node-rank R --master-addr A --master-port P]`:
 * the launcher side (light: no libtorch). The workers get the same command line
 * without the launcher flags, and torchrun's variables in their environment.
 */
import { UsageError } from './flags.js';
import { LAUNCH_FLAG_NAMES } from './commands.js';
import { distEnvFrom } from '../distributed/env.js';
import { launchWorkers } from '../distributed/launch.js';
import { LOCK_ENV, holdRunFolder } from '../train/lock.js';

export interface LaunchFlags {
  nproc?: number;
  nnodes?: number;
  'node-rank'?: number;
  'master-addr'?: string;
  'master-port'?: number;
}

/** argv without the launcher flags (and their values): what each worker runs. */
export function withoutLaunchFlags(argv: readonly string[]): string[] {
  const names = new Set<string>(LAUNCH_FLAG_NAMES);
  const rest: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const name = a.startsWith('--') ? a.slice(2).split('=')[0] : '';
    if (names.has(name)) {
      if (!a.includes('=')) i++; // its value
    } else rest.push(a);
  }
  return rest;
}

/**
 * Starts the workers when the flags ask for more than one process; null: train in this process. With `out`
 * the launcher holds the run folder's lock for the job, so a second job is refused before any worker starts.
 */
export async function maybeLaunch(command: 'search' | 'train', argv: readonly string[], f: LaunchFlags, script: string, out?: string): Promise<number | null> {
  const nproc = f.nproc ?? 1;
  const nnodes = f.nnodes ?? 1;
  const launching = nproc > 1 || nnodes > 1;
  if (!launching) {
    if (f['node-rank'] !== undefined || f['master-addr'] !== undefined || f['master-port'] !== undefined) {
      throw new UsageError('--node-rank, --master-addr and --master-port go with --nproc N and/or --nnodes M');
    }
    return null;
  }
  if (distEnvFrom()) throw new UsageError('--nproc/--nnodes in a process that already has WORLD_SIZE set (launched by torchrun?): use one launcher');
  const nodeRank = f['node-rank'] ?? 0;
  if (nodeRank >= nnodes) throw new UsageError(`--node-rank ${nodeRank} must be below --nnodes ${nnodes}`);
  // Rank 0 writes the run's files: its node's launcher holds the folder.
  const held = out !== undefined && nodeRank === 0 ? holdRunFolder(out) : null;
  if (held) process.env[LOCK_ENV] = held.lock.file;
  try {
    return await launchWorkers({
      nproc,
      nnodes,
      nodeRank,
      masterAddr: f['master-addr'] ?? '127.0.0.1',
      masterPort: f['master-port'],
      args: [script, command, ...withoutLaunchFlags(argv)],
    });
  } finally {
    held?.release();
    delete process.env[LOCK_ENV];
  }
}
