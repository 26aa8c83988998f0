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
