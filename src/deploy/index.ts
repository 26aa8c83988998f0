/** Deployment: fusion into plain networks, their inference graph, INT8 quantization (PTQ, QAT), ONNX export and checking, per-layer sensitivity and partial INT8, studies of checkpoints. */
export * from './fuse.js';
export * from './graph.js';
export * from './quant.js';
export * from './onnx.js';
export * from './study.js';
export * from './sensitivity.js';
export * from './web.js';
