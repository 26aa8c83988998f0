/**
 * Channels-last (NHWC) weights, as PyTorch's `model.to(memory_format=torch.channels_last)`:
 * libtorch's oneDNN convolutions then run NHWC end to end (activations follow the weights'
 * format) instead of reordering NCHW tensors to a blocked layout on every call. Values are
 * unchanged; only the strides of the 4-d parameters (and their gradients, momentum buffers)
 * change.
 */
import * as torch from '../torch/index.js';
import { defOp } from '../torch/ops.js';
import { native, type Handle } from '../torch/native.js';
import type { Module } from './module.js';

const setSource = defOp('aten::set_.source_Tensor');

/** Re-lays out every 4-d parameter and buffer of `m` as channels-last, in place (same tensors). */
export function toChannelsLast_(m: Module): Module {
  torch.noGrad(() => {
    for (const [, p] of [...m.namedParameters(), ...m.namedBuffers()]) {
      if (p.ndim !== 4 || p.isContiguous('channelsLast')) continue;
      torch.tidy(() => {
        const cl = p.toChannelsLast();
        native.dispose(setSource(p.handle, cl.handle) as Handle);
      });
    }
  });
  return m;
}
