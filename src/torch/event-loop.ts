/** The event loop's turn, in a module of its own: importing it loads no libtorch (the CLI's help and setup must not). */
/**
 * Lets the event loop run one full turn (signal handlers, timers, I/O, deferred N-API finalizers)
 * and resumes in its check phase. Costs microseconds: training and evaluation loops call it once
 * per step, and so does the data loader's iterator before each batch.
 */
export function turnEventLoop(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}
