/**
 * Typed access to ATen operators through the dispatcher.
 * `defOp("aten::add.Tensor")` resolves the operator handle once (lazily) and
 * returns a function taking the schema's positional arguments; `undefined`
 * takes the schema's default. Tensors are passed as native handles.
 */
import { native } from './native.js';

function resolve(qualified: string): number {
  const dot = qualified.indexOf('.', qualified.indexOf('::') + 2);
  const name = dot < 0 ? qualified : qualified.slice(0, dot);
  const overload = dot < 0 ? '' : qualified.slice(dot + 1);
  return native.opHandle(name, overload);
}

export type RawOp = (...args: unknown[]) => unknown;

export function defOp(qualified: string): RawOp {
  let id = -1;
  return (...args: unknown[]) => {
    if (id < 0) id = resolve(qualified);
    return native.call(id, args);
  };
}

/** The schema string of an operator, e.g. for error messages and docs. */
export function schemaOf(qualified: string): string {
  return native.opSchema(resolve(qualified));
}
