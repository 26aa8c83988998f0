/**
 * How a module describes its inference forward as graph operations (for INT8 and ONNX export, which
 * live in src/deploy/graph.ts): the types only, so that models can implement `exportGraph` without
 * importing the deploy layer. `GraphBuilder` (deploy) implements `GraphOps`.
 */
import type { BatchNorm2d, Conv2d, Linear } from './layers.js';
import type { Module } from './module.js';

/** The name of a value in the graph (`input`, `stage0`, `blocks.0.0.ghost1.relu`, ...). */
export type GraphValue = string;

type Pair = [number, number];

/** The operations a module's `exportGraph` may record (each takes an optional value name relative to its scope). */
export interface GraphOps {
  readonly scope: string;
  child(name: string): GraphOps;
  /** Describes child module `m` (registered as `name`) applied to `x`. */
  module(m: Module, x: GraphValue, name: string): GraphValue;
  conv(m: Conv2d, x: GraphValue, name?: string): GraphValue;
  linear(m: Linear, x: GraphValue, name?: string): GraphValue;
  batchNorm(m: BatchNorm2d, x: GraphValue, name?: string): GraphValue;
  relu(x: GraphValue, name?: string): GraphValue;
  sigmoid(x: GraphValue, name?: string): GraphValue;
  hardsigmoid(x: GraphValue, name?: string): GraphValue;
  add(a: GraphValue, b: GraphValue, name?: string): GraphValue;
  mul(a: GraphValue, b: GraphValue, name?: string): GraphValue;
  concat(xs: GraphValue[], name?: string): GraphValue;
  flatten(x: GraphValue, name?: string): GraphValue;
  globalAvgPool(x: GraphValue, name?: string): GraphValue;
  avgPool(x: GraphValue, kernel: number | Pair, opts?: { stride?: number | Pair; padding?: number | Pair }, name?: string): GraphValue;
  maxPool(x: GraphValue, kernel: number | Pair, opts?: { stride?: number | Pair; padding?: number | Pair }, name?: string): GraphValue;
}

/** A module that describes its inference forward as graph operations. */
export interface GraphExportable {
  exportGraph(g: GraphOps, x: GraphValue): GraphValue;
}
