/// <reference lib="esnext.disposable" preserve="true" />
/**
 * Graceful stops on SIGINT (Ctrl-C) and SIGTERM (cluster schedulers, `docker
 * stop`, `kill`), shared by every long-running command.
 *
 *   const stop = catchStopSignals();          // handlers installed while any scope is open
 *   try {
 *     for (...) { step(); await turnEventLoop(); if (stop.signal) { save(); break; } }
 *   } finally { stop.close(); }
 *   // then exit with exitCodeFor(signal): 130 for SIGINT, 143 for SIGTERM, as shells expect
 *
 * The first signal only records itself (work stops at the next step boundary,
 * where the caller saves); a second one exits at once with its own code
 * (checkpoints are written atomically, so nothing is left half-written).
 * Outside any scope Node's default action applies: the signal ends the process.
 *
 * Signal handlers are JavaScript callbacks: they run only when the event loop
 * turns. Synchronous libtorch steps fed by promises that are already resolved,
 * or by worker messages (Node drains up to 1000 of them per loop turn, running
 * our microtasks, hence whole training steps, in between), never let it turn.
 * So every training or evaluation loop calls turnEventLoop() once per step.
 */
import { spawn } from 'node:child_process';
import os from 'node:os';

export type StopSignal = 'SIGINT' | 'SIGTERM';

export const STOP_SIGNALS: readonly StopSignal[] = ['SIGINT', 'SIGTERM'];

/** The exit status a shell reports for a process ended by `signal`: 128 + its number (130, 143). */
export function exitCodeFor(signal: StopSignal): number {
  return 128 + os.constants.signals[signal];
}

/** Thrown by loops that have no result to return when stopped (e.g. QAT). */
export class InterruptedError extends Error {
  constructor(readonly signal: StopSignal, message = `interrupted by ${signal}`) {
    super(message);
    this.name = 'InterruptedError';
  }
  get exitCode(): number {
    return exitCodeFor(this.signal);
  }
}

export interface StopScope extends Disposable {
  /** The first stop signal received while a scope was open, or null. */
  readonly signal: StopSignal | null;
  /** Closes the scope; the handlers go when the last scope closes. Safe to call twice. */
  close(): void;
}

let openScopes = 0;
let received: StopSignal | null = null;
let notice = '';

function onSignal(signal: StopSignal): void {
  if (received) {
    process.stderr.write(`\n${signal} again: quitting now\n`);
    process.exit(exitCodeFor(signal));
  }
  received = signal;
  process.stderr.write(`\n${signal}: ${notice} (send it again to quit now)\n`);
}

/**
 * Opens a scope in which SIGINT and SIGTERM request a stop instead of ending
 * the process. Scopes nest (a command and the trainer it calls share one
 * request); the request is forgotten when the outermost scope closes.
 */
export function catchStopSignals(o: { notice?: string } = {}): StopScope {
  if (openScopes++ === 0) {
    received = null;
    for (const s of STOP_SIGNALS) process.on(s, onSignal);
  }
  const previousNotice = notice;
  notice = o.notice ?? (notice || 'stopping at the next step boundary');
  let open = true;
  const close = () => {
    if (!open) return;
    open = false;
    notice = previousNotice;
    if (--openScopes === 0) {
      for (const s of STOP_SIGNALS) process.off(s, onSignal);
      received = null;
    }
  };
  return {
    get signal() {
      return received;
    },
    close,
    [Symbol.dispose]: close,
  };
}

export { turnEventLoop } from '../torch/event-loop.js';

export interface ChildRunOptions {
  /** Each line of the child's stdout and stderr; without it the child writes to this process's stdout / stderr. */
  onLine?: (line: string, stream: 'stdout' | 'stderr') => void;
  /** The message of the InterruptedError when a stop signal ends the child. */
  interrupted: (signal: StopSignal, code: number | string | null) => string;
  /** The message of the Error when it fails otherwise (`stderr`: what it wrote there, when piped). */
  failed: (code: number | string | null, stderr: string) => string;
}

/**
 * Runs a long stage (a training run) as a child process in its own process group, so a terminal's
 * Ctrl-C reaches only this process, which passes each SIGINT / SIGTERM on exactly once: the child
 * saves at its next step and exits 130 / 143 (a second signal makes it quit at once), and the promise
 * rejects with an InterruptedError. This process exiting abnormally never leaves the child behind.
 */
export function runChildStage(argv: string[], o: ChildRunOptions): Promise<void> {
  return new Promise((resolve, reject) => {
    const piped = o.onLine !== undefined;
    const child = spawn(process.execPath, argv, { stdio: ['ignore', piped ? 'pipe' : 'inherit', piped ? 'pipe' : 'inherit'], detached: true });
    let received: StopSignal | null = null;
    const forward = (signal: StopSignal) => {
      received ??= signal;
      child.kill(signal);
    };
    const orphanGuard = () => child.kill('SIGTERM');
    for (const s of STOP_SIGNALS) process.on(s, forward);
    process.on('exit', orphanGuard);
    let stderr = '';
    const lines = (stream: NodeJS.ReadableStream | null, name: 'stdout' | 'stderr') => {
      let buf = '';
      stream?.on('data', (d: Buffer) => {
        buf += d.toString();
        const parts = buf.split('\n');
        buf = parts.pop()!;
        for (const l of parts) {
          if (name === 'stderr') stderr += `${l}\n`;
          if (l.trim()) o.onLine!(l, name);
        }
      });
    };
    if (piped) {
      lines(child.stdout, 'stdout');
      lines(child.stderr, 'stderr');
    }
    child.on('exit', (code, signal) => {
      for (const s of STOP_SIGNALS) process.off(s, forward);
      process.off('exit', orphanGuard);
      const stoppedBy = received ?? STOP_SIGNALS.find((s) => code === exitCodeFor(s) || signal === s);
      if (code === 0 && !received) resolve();
      else if (stoppedBy) reject(new InterruptedError(stoppedBy, o.interrupted(stoppedBy, code ?? signal)));
      else reject(new Error(o.failed(code ?? signal, stderr)));
    });
  });
}
