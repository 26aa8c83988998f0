/**
 * `repopt train|search --nproc N`: starts N local worker processes, as
 * `torchrun --nproc_per_node N` does, each with torchrun's variables (RANK,
 * LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE, GROUP_RANK, MASTER_ADDR, MASTER_PORT).
 * Several machines: the same command on each with --nnodes, --node-rank,
 * --master-addr and --master-port.
 *
 * Workers run in their own process group, so a terminal's Ctrl-C reaches only
 * the launcher, which forwards exactly one SIGINT per Ctrl-C to each worker (the
 * first stops training at a step boundary with one checkpoint; a second quits).
 * Rank 0 keeps the terminal (its progress bar); other ranks' lines are prefixed
 * with their rank. When a worker fails, the others fail at their next collective
 * (Gloo sees the closed connection); any still running after a grace period are
 * killed, and the launcher exits with the first failure's code. Workers exit if
 * the launcher dies (they watch its IPC channel).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import net from 'node:net';
import os from 'node:os';
import readline from 'node:readline';

export interface LaunchOptions {
  /** Worker processes on this machine. */
  nproc: number;
  nnodes: number;
  nodeRank: number;
  masterAddr: string;
  /** Default: a free port when nnodes = 1, else 29500 (torchrun's). */
  masterPort?: number;
  /** The worker's command line after `node`: script and arguments. */
  args: string[];
  /** Seconds the others get to exit after a worker failed, before being killed (default 10). */
  graceSec?: number;
  log?: (line: string) => void;
}

/** The variable a worker sees when `repopt` itself launched it (it then watches the launcher). */
export const LAUNCHED_ENV = 'REPOPT_LAUNCHED';

/** A TCP port that was free a moment ago (the OS's choice). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const port = (srv.address() as net.AddressInfo).port;
      srv.close(() => resolve(port));
    });
  });
}

/** Threads per worker when the user gives none: the cores shared out (at least one). */
export function threadsPerWorker(localWorldSize: number): number {
  return Math.max(1, Math.floor(os.availableParallelism() / localWorldSize));
}

export function checkLaunchOptions(o: LaunchOptions): void {
  const int = (v: number, what: string, min: number) => {
    if (!Number.isInteger(v) || v < min) throw new RangeError(`${what} must be an integer >= ${min}, got ${v}`);
  };
  int(o.nproc, '--nproc', 1);
  int(o.nnodes, '--nnodes', 1);
  int(o.nodeRank, '--node-rank', 0);
  if (o.nodeRank >= o.nnodes) throw new RangeError(`--node-rank ${o.nodeRank} must be below --nnodes ${o.nnodes}`);
  if (o.masterPort !== undefined && (!Number.isInteger(o.masterPort) || o.masterPort < 1 || o.masterPort > 65535)) {
    throw new RangeError(`--master-port must be in 1..65535, got ${o.masterPort}`);
  }
}

/** Runs the workers to completion; resolves with the exit code the launcher should return. */
export async function launchWorkers(o: LaunchOptions): Promise<number> {
  checkLaunchOptions(o);
  const log = o.log ?? ((l: string) => process.stderr.write(`${l}\n`));
  const masterPort = o.masterPort ?? (o.nnodes === 1 ? await freePort() : 29500);
  const worldSize = o.nproc * o.nnodes;
  const children: ChildProcess[] = [];
  let firstFailure: { rank: number; code: number } | null = null;
  let killTimer: NodeJS.Timeout | null = null;

  const exits = [];
  for (let local = 0; local < o.nproc; local++) {
    const rank = o.nodeRank * o.nproc + local;
    const env = {
      ...process.env,
      RANK: String(rank),
      LOCAL_RANK: String(local),
      WORLD_SIZE: String(worldSize),
      LOCAL_WORLD_SIZE: String(o.nproc),
      GROUP_RANK: String(o.nodeRank),
      MASTER_ADDR: o.masterAddr,
      MASTER_PORT: String(masterPort),
      [LAUNCHED_ENV]: '1',
    };
    const keepsTerminal = local === 0; // rank 0 on node 0: the progress bar
    const child = spawn(process.execPath, [...process.execArgv, ...o.args], {
      env,
      detached: true, // own process group: Ctrl-C reaches the launcher, which forwards it once
      stdio: keepsTerminal ? ['ignore', 'inherit', 'inherit', 'ipc'] : ['ignore', 'pipe', 'pipe', 'ipc'],
    });
    if (!keepsTerminal) {
      for (const stream of [child.stdout!, child.stderr!]) {
        const out = stream === child.stdout ? process.stdout : process.stderr;
        readline.createInterface({ input: stream, crlfDelay: Infinity }).on('line', (line) => out.write(`[rank ${rank}] ${line}\n`));
      }
    }
    children.push(child);
    exits.push(
      new Promise<void>((resolve) => {
        child.on('error', (e) => {
          log(`repopt: could not start rank ${rank}: ${e.message}`);
          if (!firstFailure) firstFailure = { rank, code: 1 };
          resolve();
        });
        child.on('exit', (code, signal) => {
          const status = code ?? 128 + (signal ? os.constants.signals[signal] : 0);
          if (status !== 0 && status !== 130 && status !== 143 && !firstFailure) {
            firstFailure = { rank, code: status };
            const grace = o.graceSec ?? 10;
            if (children.some((c) => c.exitCode === null && c.signalCode === null && c !== child)) {
              log(`repopt: rank ${rank} exited with ${signal ?? `code ${code}`}; the other ranks stop at their next collective (killed after ${grace} s)`);
              killTimer = setTimeout(() => {
                for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
              }, grace * 1000);
              killTimer.unref();
            }
          }
          resolve();
        });
      }),
    );
  }

  const forward = (signal: NodeJS.Signals) => () => {
    for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill(signal);
  };
  const onInt = forward('SIGINT');
  const onTerm = forward('SIGTERM');
  process.on('SIGINT', onInt);
  process.on('SIGTERM', onTerm);
  try {
    await Promise.all(exits);
  } finally {
    process.off('SIGINT', onInt);
    process.off('SIGTERM', onTerm);
    if (killTimer) clearTimeout(killTimer);
  }
  const failure = firstFailure as { rank: number; code: number } | null;
  if (failure) return failure.code;
  const codes = children.map((c) => c.exitCode ?? 128 + (c.signalCode ? os.constants.signals[c.signalCode] : 0));
  return codes.find((c) => c !== 0) ?? 0;
}

/** In a worker started by launchWorkers: exit if the launcher goes away (its IPC channel closes). */
export function watchLauncher(): void {
  if (process.env[LAUNCHED_ENV] !== '1' || !process.send) return;
  process.on('disconnect', () => {
    process.stderr.write('repopt: the launcher exited; stopping this worker\n');
    process.exit(1);
  });
  process.channel?.unref();
}
