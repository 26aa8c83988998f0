// Tensor handles shared by the addon's source files: a JS value holding a
// tensor is an N-API external of a TensorBox (created in repopt.cc).
#pragma once

#include <napi.h>

#include <ATen/core/Tensor.h>

// A native entry point's body between GUARD_BEGIN and GUARD_END(env): libtorch errors become JS
// Errors with libtorch's message (no C++ backtrace); JS errors pass through unchanged.
#define GUARD_BEGIN try {
#define GUARD_END(env)                                       \
  }                                                          \
  catch (const Napi::Error&) {                               \
    throw;                                                   \
  }                                                          \
  catch (const c10::Error& e) {                              \
    throw Napi::Error::New(env, e.what_without_backtrace()); \
  }                                                          \
  catch (const std::exception& e) {                          \
    throw Napi::Error::New(env, e.what());                   \
  }

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
