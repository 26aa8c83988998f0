/** Deployment: fusion into the plain conv3x3+bias network, INT8 quantization (PTQ, QAT), ONNX export and checking. */
export * from './fuse.js';
export * from './quant.js';
export * from './onnx.js';
