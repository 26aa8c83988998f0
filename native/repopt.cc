// The native layer of repopt: a thin N-API binding over libtorch.
//
// Every ATen operator is reached through libtorch's dispatcher by schema name
// (`opHandle("aten::conv2d", "")` once, then `call(id, args)`), with arguments
// converted to IValues by the operator's own schema. The TypeScript layer gives
// those calls typed signatures, so no C++ wrapper is written per operator.
// Besides that, this file only holds what is not an operator: tensor creation
// from and copy to JS buffers, autograd entry points, grad mode, threads,
// seeding and deterministic release. libtorch errors become JS Errors carrying
// libtorch's message; the process never aborts on bad input.

#include "tensor-handle.h"
#include "cpu-allocator.h"

#include <napi.h>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/CPUGeneratorImpl.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/grad_mode.h>

#include <dlfcn.h>

#include <atomic>
#include <cstring>
#include <string>
#include <vector>

namespace repopt {

// ---------------------------------------------------------------- handles

struct GeneratorBox {
  at::Generator generator;
};

std::atomic<int64_t> g_liveTensors{0};

int64_t LogicalBytes(const at::Tensor& t) {
  return t.defined() ? static_cast<int64_t>(t.numel()) * static_cast<int64_t>(t.element_size()) : 0;
}

// Releases a box's tensor now (dispose) or at GC (finalizer); idempotent. Only "basic" Node-API calls
// (no JS), so the finalizer runs synchronously inside V8's collection (NAPI_EXPERIMENTAL, binding.gyp):
// a collection frees native tensors at once, in any loop a user writes, instead of queueing their
// release for a later turn of the event loop that a loop with no await never gives.
void Release(Napi::BasicEnv env, TensorBox* box) {
  if (box->tensor.defined()) {
    box->tensor.reset();
    g_liveTensors--;
    if (box->reportedBytes != 0) {
      int64_t ignored;
      napi_adjust_external_memory(env, -box->reportedBytes, &ignored);
      box->reportedBytes = 0;
    }
  }
}

Napi::Value WrapTensor(Napi::Env env, at::Tensor t) {
  if (!t.defined()) return env.Null();
  auto* box = new TensorBox{std::move(t), 0};
  g_liveTensors++;
  box->reportedBytes = LogicalBytes(box->tensor);
  if (box->reportedBytes != 0) {
    int64_t ignored;
    napi_adjust_external_memory(env, box->reportedBytes, &ignored);
  }
  return Napi::External<TensorBox>::New(env, box, [](Napi::BasicEnv e, TensorBox* b) {
    Release(e, b);
    delete b;
  });
}

TensorBox* BoxOf(const Napi::Value& v, const char* what) {
  if (!v.IsExternal()) {
    throw Napi::TypeError::New(v.Env(), std::string("expected a Tensor for ") + what);
  }
  return v.As<Napi::External<TensorBox>>().Data();
}

const at::Tensor& TensorOf(const Napi::Value& v, const char* what) {
  TensorBox* box = BoxOf(v, what);
  if (!box->tensor.defined()) {
    throw Napi::Error::New(v.Env(), std::string("Tensor used after dispose() (") + what + ")");
  }
  return box->tensor;
}

}  // namespace repopt

namespace {

using namespace repopt;

// ---------------------------------------------------------------- operators

std::vector<c10::OperatorHandle> g_ops;

int64_t ToInt(const Napi::Value& v, const std::string& name) {
  if (v.IsNumber()) {
    double d = v.As<Napi::Number>().DoubleValue();
    if (d != static_cast<double>(static_cast<int64_t>(d))) {
      throw Napi::TypeError::New(v.Env(), "argument '" + name + "' must be an integer, got " + std::to_string(d));
    }
    return static_cast<int64_t>(d);
  }
  if (v.IsBigInt()) {
    bool lossless;
    return v.As<Napi::BigInt>().Int64Value(&lossless);
  }
  if (v.IsBoolean()) return v.As<Napi::Boolean>().Value() ? 1 : 0;
  throw Napi::TypeError::New(v.Env(), "argument '" + name + "' must be an integer");
}

double ToDouble(const Napi::Value& v, const std::string& name) {
  if (v.IsNumber()) return v.As<Napi::Number>().DoubleValue();
  if (v.IsBigInt()) {
    bool lossless;
    return static_cast<double>(v.As<Napi::BigInt>().Int64Value(&lossless));
  }
  throw Napi::TypeError::New(v.Env(), "argument '" + name + "' must be a number");
}

at::Scalar ToScalar(const Napi::Value& v, const std::string& name) {
  if (v.IsBoolean()) return at::Scalar(v.As<Napi::Boolean>().Value());
  if (v.IsBigInt()) {
    bool lossless;
    return at::Scalar(static_cast<int64_t>(v.As<Napi::BigInt>().Int64Value(&lossless)));
  }
  if (v.IsNumber()) {
    // JS has one number type: integral values become int Scalars (so integer
    // tensors stay integral, as `x + 2` does in PyTorch), the rest doubles.
    double d = v.As<Napi::Number>().DoubleValue();
    if (std::isfinite(d) && d == std::floor(d) && std::fabs(d) < 9007199254740992.0) {
      return at::Scalar(static_cast<int64_t>(d));
    }
    return at::Scalar(d);
  }
  if (v.IsExternal()) {
    // A one-element tensor passed where a Scalar is expected.
    return TensorOf(v, name.c_str()).item();
  }
  throw Napi::TypeError::New(v.Env(), "argument '" + name + "' must be a number or boolean");
}

c10::IValue ToIValue(const Napi::Value& v, const c10::TypePtr& type, const c10::Argument& arg);

c10::IValue ToList(const Napi::Value& v, const c10::TypePtr& elem, const c10::Argument& arg) {
  Napi::Env env = v.Env();
  const std::string& name = arg.name();
  auto kind = elem->kind();
  // PyTorch broadcasts a single int to a fixed-size list (stride=1 -> [1, 1]).
  if (!v.IsArray()) {
    if ((kind == c10::TypeKind::IntType || kind == c10::TypeKind::SymIntType) && arg.N().has_value() &&
        (v.IsNumber() || v.IsBigInt())) {
      c10::List<int64_t> out;
      int64_t x = ToInt(v, name);
      for (int32_t i = 0; i < *arg.N(); i++) out.push_back(x);
      return out;
    }
    throw Napi::TypeError::New(env, "argument '" + name + "' must be an array");
  }
  auto arr = v.As<Napi::Array>();
  uint32_t n = arr.Length();
  switch (kind) {
    case c10::TypeKind::IntType:
    case c10::TypeKind::SymIntType: {
      c10::List<int64_t> out;
      out.reserve(n);
      for (uint32_t i = 0; i < n; i++) out.push_back(ToInt(arr.Get(i), name));
      return out;
    }
    case c10::TypeKind::FloatType: {
      c10::List<double> out;
      out.reserve(n);
      for (uint32_t i = 0; i < n; i++) out.push_back(ToDouble(arr.Get(i), name));
      return out;
    }
    case c10::TypeKind::BoolType: {
      c10::List<bool> out;
      out.reserve(n);
      for (uint32_t i = 0; i < n; i++) out.push_back(arr.Get(i).ToBoolean().Value());
      return out;
    }
    case c10::TypeKind::NumberType: {
      c10::List<at::Scalar> out;
      out.reserve(n);
      for (uint32_t i = 0; i < n; i++) out.push_back(ToScalar(arr.Get(i), name));
      return out;
    }
    case c10::TypeKind::TensorType: {
      c10::List<at::Tensor> out;
      out.reserve(n);
      for (uint32_t i = 0; i < n; i++) out.push_back(TensorOf(arr.Get(i), name.c_str()));
      return out;
    }
    case c10::TypeKind::OptionalType: {
      auto inner = elem->expectRef<c10::OptionalType>().getElementType();
      if (inner->kind() == c10::TypeKind::TensorType) {
        c10::List<c10::optional<at::Tensor>> out;
        out.reserve(n);
        for (uint32_t i = 0; i < n; i++) {
          Napi::Value e = arr.Get(i);
          if (e.IsNull() || e.IsUndefined()) {
            out.push_back(c10::nullopt);
          } else {
            out.push_back(TensorOf(e, name.c_str()));
          }
        }
        return out;
      }
      break;
    }
    default:
      break;
  }
  throw Napi::TypeError::New(env, "argument '" + name + "': unsupported list type " + elem->str());
}

c10::IValue ToIValue(const Napi::Value& v, const c10::TypePtr& type, const c10::Argument& arg) {
  Napi::Env env = v.Env();
  const std::string& name = arg.name();
  switch (type->kind()) {
    case c10::TypeKind::TensorType:
      return TensorOf(v, name.c_str());
    case c10::TypeKind::OptionalType:
      if (v.IsNull() || v.IsUndefined()) return c10::IValue();
      return ToIValue(v, type->expectRef<c10::OptionalType>().getElementType(), arg);
    case c10::TypeKind::IntType:
    case c10::TypeKind::SymIntType:
    case c10::TypeKind::ScalarTypeType:
    case c10::TypeKind::LayoutType:
    case c10::TypeKind::MemoryFormatType:
      return ToInt(v, name);
    case c10::TypeKind::FloatType:
      return ToDouble(v, name);
    case c10::TypeKind::BoolType:
      if (!v.IsBoolean()) throw Napi::TypeError::New(env, "argument '" + name + "' must be a boolean");
      return v.As<Napi::Boolean>().Value();
    case c10::TypeKind::NumberType:
      return ToScalar(v, name);
    case c10::TypeKind::StringType:
      if (!v.IsString()) throw Napi::TypeError::New(env, "argument '" + name + "' must be a string");
      return v.As<Napi::String>().Utf8Value();
    case c10::TypeKind::DeviceObjType:
      if (!v.IsString()) throw Napi::TypeError::New(env, "argument '" + name + "' must be a device string");
      return c10::Device(v.As<Napi::String>().Utf8Value());
    case c10::TypeKind::GeneratorType:
      if (!v.IsExternal()) throw Napi::TypeError::New(env, "argument '" + name + "' must be a Generator");
      return v.As<Napi::External<GeneratorBox>>().Data()->generator;
    case c10::TypeKind::ListType:
      return ToList(v, type->expectRef<c10::ListType>().getElementType(), arg);
    default:
      throw Napi::TypeError::New(env, "argument '" + name + "': unsupported type " + type->str());
  }
}

Napi::Value FromIValue(Napi::Env env, const c10::IValue& iv) {
  if (iv.isTensor()) return WrapTensor(env, iv.toTensor());
  if (iv.isNone()) return env.Null();
  if (iv.isInt()) return Napi::Number::New(env, static_cast<double>(iv.toInt()));
  if (iv.isDouble()) return Napi::Number::New(env, iv.toDouble());
  if (iv.isBool()) return Napi::Boolean::New(env, iv.toBool());
  if (iv.isString()) return Napi::String::New(env, iv.toStringRef());
  if (iv.isTensorList()) {
    auto list = iv.toTensorList();
    auto out = Napi::Array::New(env, list.size());
    for (size_t i = 0; i < list.size(); i++) out.Set(static_cast<uint32_t>(i), WrapTensor(env, list.get(i)));
    return out;
  }
  if (iv.isTuple()) {
    const auto& elems = iv.toTupleRef().elements();
    auto out = Napi::Array::New(env, elems.size());
    for (size_t i = 0; i < elems.size(); i++) out.Set(static_cast<uint32_t>(i), FromIValue(env, elems[i]));
    return out;
  }
  if (iv.isList()) {
    auto list = iv.toListRef();
    auto out = Napi::Array::New(env, list.size());
    for (size_t i = 0; i < list.size(); i++) out.Set(static_cast<uint32_t>(i), FromIValue(env, list[i]));
    return out;
  }
  if (iv.isDevice()) return Napi::String::New(env, iv.toDevice().str());
  throw Napi::Error::New(env, std::string("unsupported return type ") + iv.tagKind());
}

// opHandle(name, overload) -> id. Unknown operators are an error naming them.
Napi::Value OpHandle(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string name = info[0].As<Napi::String>().Utf8Value();
  std::string overload = info[1].As<Napi::String>().Utf8Value();
  auto handle = c10::Dispatcher::singleton().findSchema({name, overload});
  if (!handle.has_value()) {
    throw Napi::Error::New(env, "unknown operator " + name + (overload.empty() ? "" : "." + overload));
  }
  g_ops.push_back(*handle);
  return Napi::Number::New(env, static_cast<double>(g_ops.size() - 1));
}

Napi::Value OpSchema(const Napi::CallbackInfo& info) {
  uint32_t id = info[0].As<Napi::Number>().Uint32Value();
  if (id >= g_ops.size()) throw Napi::RangeError::New(info.Env(), "bad operator id");
  std::ostringstream s;
  s << g_ops[id].schema();
  return Napi::String::New(info.Env(), s.str());
}

// call(id, args): args positional; undefined takes the schema's default.
Napi::Value Call(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint32_t id = info[0].As<Napi::Number>().Uint32Value();
  if (id >= g_ops.size()) throw Napi::RangeError::New(env, "bad operator id");
  const c10::OperatorHandle& op = g_ops[id];
  const c10::FunctionSchema& schema = op.schema();
  const auto& args = schema.arguments();
  auto jsArgs = info[1].As<Napi::Array>();
  uint32_t given = jsArgs.Length();
  if (given > args.size()) {
    throw Napi::TypeError::New(env, schema.name() + ": too many arguments (" + std::to_string(given) + " > " +
                                        std::to_string(args.size()) + ")");
  }
  GUARD_BEGIN
  torch::jit::Stack stack;
  stack.reserve(args.size());
  for (size_t i = 0; i < args.size(); i++) {
    const c10::Argument& arg = args[i];
    Napi::Value v = i < given ? jsArgs.Get(static_cast<uint32_t>(i)) : env.Undefined();
    if (v.IsUndefined()) {
      if (arg.default_value().has_value()) {
        stack.push_back(*arg.default_value());
        continue;
      }
      if (arg.type()->kind() == c10::TypeKind::OptionalType) {
        stack.emplace_back();
        continue;
      }
      throw Napi::TypeError::New(env, schema.name() + ": missing argument '" + arg.name() + "'");
    }
    stack.push_back(ToIValue(v, arg.type(), arg));
  }
  op.callBoxed(&stack);
  if (stack.empty()) return env.Undefined();
  if (stack.size() == 1) return FromIValue(env, stack[0]);
  auto out = Napi::Array::New(env, stack.size());
  for (size_t i = 0; i < stack.size(); i++) out.Set(static_cast<uint32_t>(i), FromIValue(env, stack[i]));
  return out;
  GUARD_END(env)
}

// ---------------------------------------------------------------- data in and out

at::ScalarType DtypeArg(const Napi::Value& v) {
  int64_t code = v.As<Napi::Number>().Int64Value();
  if (code < 0 || code >= static_cast<int64_t>(at::ScalarType::NumOptions)) {
    throw Napi::RangeError::New(v.Env(), "unknown dtype code " + std::to_string(code));
  }
  return static_cast<at::ScalarType>(code);
}

std::vector<int64_t> ShapeArg(const Napi::Value& v) {
  auto arr = v.As<Napi::Array>();
  std::vector<int64_t> shape(arr.Length());
  for (uint32_t i = 0; i < arr.Length(); i++) {
    shape[i] = ToInt(arr.Get(i), "shape");
    if (shape[i] < 0) throw Napi::RangeError::New(v.Env(), "negative dimension in shape");
  }
  return shape;
}

// fromBuffer(typedArrayOrBuffer, shape, dtype): copies the bytes into a new tensor.
Napi::Value FromBuffer(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const uint8_t* data;
  size_t length;
  if (info[0].IsTypedArray()) {
    auto ta = info[0].As<Napi::TypedArray>();
    auto ab = ta.ArrayBuffer();
    data = static_cast<const uint8_t*>(ab.Data()) + ta.ByteOffset();
    length = ta.ByteLength();
  } else if (info[0].IsArrayBuffer()) {
    auto ab = info[0].As<Napi::ArrayBuffer>();
    data = static_cast<const uint8_t*>(ab.Data());
    length = ab.ByteLength();
  } else {
    throw Napi::TypeError::New(env, "fromBuffer: expected a TypedArray or ArrayBuffer");
  }
  auto shape = ShapeArg(info[1]);
  auto dtype = DtypeArg(info[2]);
  GUARD_BEGIN
  at::Tensor t = at::empty(shape, at::TensorOptions().dtype(dtype));
  size_t need = static_cast<size_t>(t.numel()) * c10::elementSize(dtype);
  if (need != length) {
    throw Napi::RangeError::New(env, "fromBuffer: shape [" + c10::Join(", ", shape) + "] needs " +
                                         std::to_string(need) + " bytes, got " + std::to_string(length));
  }
  if (need) std::memcpy(t.data_ptr(), data, need);
  return WrapTensor(env, t);
  GUARD_END(env)
}

// toBuffer(t): a copy of the (contiguous) data as an ArrayBuffer.
Napi::Value ToBuffer(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  GUARD_BEGIN
  at::Tensor t = TensorOf(info[0], "self").detach().contiguous();
  size_t n = static_cast<size_t>(t.numel()) * t.element_size();
  auto ab = Napi::ArrayBuffer::New(env, n);
  if (n) std::memcpy(ab.Data(), t.data_ptr(), n);
  return ab;
  GUARD_END(env)
}

// ---------------------------------------------------------------- tensor facts

Napi::Value Shape(const Napi::CallbackInfo& info) {
  const at::Tensor& t = TensorOf(info[0], "self");
  auto sizes = t.sizes();
  auto out = Napi::Array::New(info.Env(), sizes.size());
  for (size_t i = 0; i < sizes.size(); i++) out.Set(static_cast<uint32_t>(i), static_cast<double>(sizes[i]));
  return out;
}

Napi::Value Strides(const Napi::CallbackInfo& info) {
  const at::Tensor& t = TensorOf(info[0], "self");
  auto strides = t.strides();
  auto out = Napi::Array::New(info.Env(), strides.size());
  for (size_t i = 0; i < strides.size(); i++) out.Set(static_cast<uint32_t>(i), static_cast<double>(strides[i]));
  return out;
}

Napi::Value Dtype(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), static_cast<int>(TensorOf(info[0], "self").scalar_type()));
}

Napi::Value RequiresGrad(const Napi::CallbackInfo& info) {
  return Napi::Boolean::New(info.Env(), TensorOf(info[0], "self").requires_grad());
}

Napi::Value IsLeaf(const Napi::CallbackInfo& info) {
  return Napi::Boolean::New(info.Env(), TensorOf(info[0], "self").is_leaf());
}

// The name of the autograd node that made the tensor (PyTorch's grad_fn), or null for a leaf or a
// tensor made without grad.
Napi::Value GradFnName(const Napi::CallbackInfo& info) {
  const at::Tensor& t = TensorOf(info[0], "self");
  const auto& fn = t.grad_fn();
  if (!fn) return info.Env().Null();
  return Napi::String::New(info.Env(), fn->name());
}

Napi::Value IsContiguous(const Napi::CallbackInfo& info) {
  const at::Tensor& t = TensorOf(info[0], "self");
  bool channelsLast = info.Length() > 1 && info[1].ToBoolean().Value();
  return Napi::Boolean::New(info.Env(), t.is_contiguous(channelsLast ? at::MemoryFormat::ChannelsLast
                                                                     : at::MemoryFormat::Contiguous));
}

Napi::Value IsDisposed(const Napi::CallbackInfo& info) {
  return Napi::Boolean::New(info.Env(), !BoxOf(info[0], "self")->tensor.defined());
}

// Identity of the underlying storage, so savers can keep shared storages shared.
Napi::Value StorageId(const Napi::CallbackInfo& info) {
  const at::Tensor& t = TensorOf(info[0], "self");
  return Napi::BigInt::New(info.Env(), static_cast<uint64_t>(reinterpret_cast<uintptr_t>(t.storage().unsafeGetStorageImpl())));
}

// ---------------------------------------------------------------- autograd

Napi::Value SetRequiresGrad(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  GUARD_BEGIN
  TensorOf(info[0], "self").requires_grad_(info[1].ToBoolean().Value());
  return env.Undefined();
  GUARD_END(env)
}

// backward(tensors[], grads[] | null, retainGraph, createGraph)
Napi::Value Backward(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  GUARD_BEGIN
  auto ts = info[0].As<Napi::Array>();
  std::vector<at::Tensor> tensors, grads;
  for (uint32_t i = 0; i < ts.Length(); i++) tensors.push_back(TensorOf(ts.Get(i), "tensors"));
  if (info[1].IsArray()) {
    auto gs = info[1].As<Napi::Array>();
    for (uint32_t i = 0; i < gs.Length(); i++) {
      Napi::Value g = gs.Get(i);
      grads.push_back(g.IsNull() || g.IsUndefined() ? at::Tensor() : TensorOf(g, "grad_tensors"));
    }
  }
  bool retain = info[2].ToBoolean().Value();
  bool create = info[3].ToBoolean().Value();
  torch::autograd::backward(tensors, grads, retain, create);
  return env.Undefined();
  GUARD_END(env)
}

Napi::Value Grad(const Napi::CallbackInfo& info) {
  return WrapTensor(info.Env(), TensorOf(info[0], "self").grad());
}

Napi::Value SetGrad(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  GUARD_BEGIN
  const at::Tensor& t = TensorOf(info[0], "self");
  if (info[1].IsNull() || info[1].IsUndefined()) {
    t.mutable_grad().reset();
  } else {
    t.mutable_grad() = TensorOf(info[1], "grad");
  }
  return env.Undefined();
  GUARD_END(env)
}

Napi::Value GradEnabled(const Napi::CallbackInfo& info) {
  return Napi::Boolean::New(info.Env(), c10::GradMode::is_enabled());
}

Napi::Value SetGradEnabled(const Napi::CallbackInfo& info) {
  c10::GradMode::set_enabled(info[0].ToBoolean().Value());
  return info.Env().Undefined();
}

// ---------------------------------------------------------------- runtime

Napi::Value Dispose(const Napi::CallbackInfo& info) {
  Release(info.Env(), BoxOf(info[0], "self"));
  return info.Env().Undefined();
}

Napi::Value LiveTensors(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), static_cast<double>(g_liveTensors.load()));
}

// OpenBLAS (Debian's libtorch does its matrix products there: linear layers, matmul) keeps its own
// pthread pool, one thread per core, which at::set_num_threads does not touch (it sets OpenMP and
// MKL): with 1 intra-op thread requested, every matmul still ran on all cores and its idle workers
// spun (measured: CPU time 1.1-1.3x the wall time of a 1-thread training step). Found at run time so
// that other BLAS builds (no such symbol) are unaffected.
using BlasThreadsSetter = void (*)(int);
using BlasThreadsGetter = int (*)();

void SetBlasThreads(int n) {
  static auto set = reinterpret_cast<BlasThreadsSetter>(dlsym(RTLD_DEFAULT, "openblas_set_num_threads"));
  if (set) set(n);
}

Napi::Value SetNumThreads(const Napi::CallbackInfo& info) {
  int n = info[0].As<Napi::Number>().Int32Value();
  if (n < 1) throw Napi::RangeError::New(info.Env(), "setNumThreads: need at least 1 thread");
  at::set_num_threads(n);
  SetBlasThreads(n);
  return info.Env().Undefined();
}

Napi::Value BlasNumThreads(const Napi::CallbackInfo& info) {
  static auto get = reinterpret_cast<BlasThreadsGetter>(dlsym(RTLD_DEFAULT, "openblas_get_num_threads"));
  return Napi::Number::New(info.Env(), get ? get() : -1);
}

Napi::Value GetNumThreads(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), at::get_num_threads());
}

Napi::Value ManualSeed(const Napi::CallbackInfo& info) {
  uint64_t seed = static_cast<uint64_t>(ToInt(info[0], "seed"));
  auto gen = at::detail::getDefaultCPUGenerator();
  std::lock_guard<std::mutex> lock(gen.mutex());
  gen.set_current_seed(seed);
  return info.Env().Undefined();
}

Napi::Value NewGenerator(const Napi::CallbackInfo& info) {
  uint64_t seed = static_cast<uint64_t>(ToInt(info[0], "seed"));
  auto* box = new GeneratorBox{at::make_generator<at::CPUGeneratorImpl>(seed)};
  return Napi::External<GeneratorBox>::New(info.Env(), box, [](Napi::Env, GeneratorBox* b) { delete b; });
}

Napi::Value GeneratorState(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  GUARD_BEGIN
  auto& gen = info[0].As<Napi::External<GeneratorBox>>().Data()->generator;
  std::lock_guard<std::mutex> lock(gen.mutex());
  return WrapTensor(env, gen.get_state());
  GUARD_END(env)
}

Napi::Value SetGeneratorState(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  GUARD_BEGIN
  auto& gen = info[0].As<Napi::External<GeneratorBox>>().Data()->generator;
  std::lock_guard<std::mutex> lock(gen.mutex());
  gen.set_state(TensorOf(info[1], "state"));
  return env.Undefined();
  GUARD_END(env)
}

Napi::Value ParallelInfo(const Napi::CallbackInfo& info) {
  return Napi::String::New(info.Env(), at::get_parallel_info());
}

Napi::Value CpuCacheStats(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto s = repopt::CpuCacheStatsNow();
  Napi::Object o = Napi::Object::New(env);
  o.Set("installed", Napi::Boolean::New(env, repopt::InstallCpuCache()));
  o.Set("liveBytes", Napi::Number::New(env, static_cast<double>(s.liveBytes)));
  o.Set("cachedBytes", Napi::Number::New(env, static_cast<double>(s.cachedBytes)));
  o.Set("hits", Napi::Number::New(env, static_cast<double>(s.hits)));
  o.Set("misses", Napi::Number::New(env, static_cast<double>(s.misses)));
  return o;
}

Napi::Value TrimCpuCache(const Napi::CallbackInfo& info) {
  repopt::TrimCpuCache();
  return info.Env().Undefined();
}

Napi::Value EmptyCpuCache(const Napi::CallbackInfo& info) {
  repopt::EmptyCpuCache();
  return info.Env().Undefined();
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  // Tensors are used from the JS thread only; the default of one interop
  // thread is enough and intra-op threads default to all cores.
  at::set_num_threads(static_cast<int>(std::max(1u, std::thread::hardware_concurrency())));
  repopt::InstallCpuCache();
#define FN(name, fn) exports.Set(name, Napi::Function::New(env, fn, name))
  FN("opHandle", OpHandle);
  FN("opSchema", OpSchema);
  FN("call", Call);
  FN("fromBuffer", FromBuffer);
  FN("toBuffer", ToBuffer);
  FN("shape", Shape);
  FN("strides", Strides);
  FN("dtype", Dtype);
  FN("requiresGrad", RequiresGrad);
  FN("isLeaf", IsLeaf);
  FN("gradFnName", GradFnName);
  FN("isContiguous", IsContiguous);
  FN("isDisposed", IsDisposed);
  FN("storageId", StorageId);
  FN("setRequiresGrad", SetRequiresGrad);
  FN("backward", Backward);
  FN("grad", Grad);
  FN("setGrad", SetGrad);
  FN("gradEnabled", GradEnabled);
  FN("setGradEnabled", SetGradEnabled);
  FN("dispose", Dispose);
  FN("liveTensors", LiveTensors);
  FN("setNumThreads", SetNumThreads);
  FN("getNumThreads", GetNumThreads);
  FN("manualSeed", ManualSeed);
  FN("newGenerator", NewGenerator);
  FN("generatorState", GeneratorState);
  FN("setGeneratorState", SetGeneratorState);
  FN("parallelInfo", ParallelInfo);
  FN("cpuCacheStats", CpuCacheStats);
  FN("blasNumThreads", BlasNumThreads);
  FN("trimCpuCache", TrimCpuCache);
  FN("emptyCpuCache", EmptyCpuCache);
#undef FN
  repopt::InitDistributed(env, exports);
  repopt::InitKernels(env, exports);
  return exports;
}

}  // namespace

NODE_API_MODULE(repopt, Init)
