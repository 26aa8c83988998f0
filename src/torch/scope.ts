/**
 * Deterministic release of native memory.
 * `tidy(fn)` frees every tensor created inside `fn` except those it returns
 * (found in the returned value, arrays and plain objects included), which move
 * to the enclosing scope. `keep(t)` exempts a tensor from the current scope.
 * Tensors outside any scope are freed by `dispose()`, `using`, or at GC.
 */
import { native } from './native.js';

export interface Disposable {
  dispose(): void;
}

const stack: Set<Disposable>[] = [];

export function track<T extends Disposable>(t: T): T {
  if (stack.length) stack[stack.length - 1].add(t);
  return t;
}

export function keep<T extends Disposable>(t: T): T {
  if (stack.length) stack[stack.length - 1].delete(t);
  return t;
}

function collect(value: unknown, out: Set<unknown>, depth = 0): void {
  if (value === null || typeof value !== 'object' || depth > 8) return;
  if (out.has(value)) return;
  out.add(value);
  if (Array.isArray(value)) {
    for (const v of value) collect(v, out, depth + 1);
  } else if (value instanceof Map) {
    for (const v of value.values()) collect(v, out, depth + 1);
  } else if (Object.getPrototypeOf(value) === Object.prototype) {
    for (const v of Object.values(value)) collect(v, out, depth + 1);
  }
}

function close(scope: Set<Disposable>, result: unknown): void {
  const keepers = new Set<unknown>();
  collect(result, keepers);
  const parent = stack.length ? stack[stack.length - 1] : undefined;
  for (const t of scope) {
    if (keepers.has(t)) parent?.add(t);
    else t.dispose();
  }
}

export function tidy<T>(fn: () => T): T {
  const scope = new Set<Disposable>();
  stack.push(scope);
  let result: T;
  try {
    result = fn();
  } catch (e) {
    stack.pop();
    close(scope, undefined);
    throw e;
  }
  stack.pop();
  if (result instanceof Promise) {
    close(scope, undefined);
    throw new Error('tidy() takes a synchronous function; await outside it');
  }
  close(scope, result);
  return result;
}

/** Runs `fn` with autograd recording off (like `torch.no_grad()`). */
export function noGrad<T>(fn: () => T): T {
  const prev = native.gradEnabled();
  native.setGradEnabled(false);
  try {
    return fn();
  } finally {
    native.setGradEnabled(prev);
  }
}

export function enableGrad<T>(fn: () => T): T {
  const prev = native.gradEnabled();
  native.setGradEnabled(true);
  try {
    return fn();
  } finally {
    native.setGradEnabled(prev);
  }
}

export function isGradEnabled(): boolean {
  return native.gradEnabled();
}

/** Number of native tensors alive (for leak checks). */
export function liveTensors(): number {
  return native.liveTensors();
}
