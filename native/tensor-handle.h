// Tensor handles shared by the addon's source files: a JS value holding a
// tensor is an N-API external of a TensorBox (created in repopt.cc).
#pragma once

#include <napi.h>

#include <ATen/core/Tensor.h>

namespace repopt {

struct TensorBox {
  at::Tensor tensor;
  int64_t reportedBytes = 0;
};

// The tensor of a handle; a JS TypeError for a non-tensor, an Error after dispose().
const at::Tensor& TensorOf(const Napi::Value& v, const char* what = "argument");

// A new handle owning `t` (null for an undefined tensor).
Napi::Value WrapTensor(Napi::Env env, at::Tensor t);

// Adds the distributed (c10d) functions to the addon's exports (distributed.cc).
void InitDistributed(Napi::Env env, Napi::Object exports);

// Adds the fused CPU kernels (BatchNorm [+ ReLU] in training) to the addon's exports (kernels.cc).
void InitKernels(Napi::Env env, Napi::Object exports);

}  // namespace repopt
