// Data-parallel collectives on libtorch's distributed engine (c10d).
//
// Rendezvous through c10d's TCPStore (rank 0 serves it), a Gloo process group
// (NCCL instead when the addon is compiled with -DUSE_C10D_NCCL against a CUDA
// build of libtorch), and the collectives the trainer needs: allreduce and
// broadcast over many tensors in flat buckets (as DistributedDataParallel's
// reducer does), and barrier. Tensors are the addon's own handles.
//
// Everything that waits on other processes runs on libuv's thread pool and
// returns a Promise, so the JS thread (signal handlers, timers) stays free while
// a peer is slow. c10d's errors, Gloo's I/O errors (a peer that died) and
// timeouts reject the Promise with their message. Every wait is bounded by the
// group's timeout: nothing waits forever.

#include "tensor-handle.h"

#include <ATen/ATen.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/csrc/autograd/grad_mode.h>
#include <torch/csrc/autograd/utils/lambda_post_hook.h>
#include <torch/csrc/autograd/variable.h>
#include <torch/csrc/distributed/c10d/ProcessGroup.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#ifdef USE_C10D_GLOO
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#endif
#ifdef USE_C10D_NCCL
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace repopt {
namespace {

struct Group {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::ProcessGroup> pg;
  int rank = 0;
  int size = 1;
  std::chrono::milliseconds timeout{0};
  std::string backend;
  // Set when a collective failed: peers may be gone, so tearing the group down
  // (which joins Gloo's threads) could block; the finalizer then leaks it.
  std::atomic<bool> failed{false};
};

struct GroupBox {
  std::shared_ptr<Group> group;
};

// Runs `work` on libuv's thread pool; resolves with `done()` or rejects with the error's message.
class Task final : public Napi::AsyncWorker {
 public:
  Task(Napi::Env env, std::string what, std::shared_ptr<Group> group, std::function<void()> work,
       std::function<Napi::Value(Napi::Env)> done)
      : Napi::AsyncWorker(env, "repopt.distributed"),
        deferred_(Napi::Promise::Deferred::New(env)),
        what_(std::move(what)),
        group_(std::move(group)),
        work_(std::move(work)),
        done_(std::move(done)) {}

  Napi::Promise Promise() const { return deferred_.Promise(); }

 protected:
  void Execute() override {
    try {
      at::NoGradGuard noGrad;
      work_();
      return;
    } catch (const c10::Error& e) {
      Fail(e.what_without_backtrace());
    } catch (const std::exception& e) {
      Fail(e.what());
    } catch (...) {
      Fail("unknown error");
    }
  }
  void OnOK() override { deferred_.Resolve(done_ ? done_(Env()) : Env().Undefined()); }
  void OnError(const Napi::Error& e) override { deferred_.Reject(e.Value()); }

 private:
  void Fail(const std::string& message) {
    if (group_) group_->failed = true;
    SetError(what_ + ": " + message);
  }

  Napi::Promise::Deferred deferred_;
  std::string what_;
  std::shared_ptr<Group> group_;
  std::function<void()> work_;
  std::function<Napi::Value(Napi::Env)> done_;
};

Napi::Value Run(Napi::Env env, std::string what, std::shared_ptr<Group> group, std::function<void()> work,
                std::function<Napi::Value(Napi::Env)> done = nullptr) {
  auto* task = new Task(env, std::move(what), std::move(group), std::move(work), std::move(done));
  Napi::Promise promise = task->Promise();
  task->Queue();  // the worker deletes itself when done
  return promise;
}

std::shared_ptr<Group> GroupOf(const Napi::Value& v) {
  if (!v.IsExternal()) throw Napi::TypeError::New(v.Env(), "expected a process group");
  auto* box = v.As<Napi::External<GroupBox>>().Data();
  if (!box->group) throw Napi::Error::New(v.Env(), "process group used after destroy()");
  return box->group;
}

std::vector<at::Tensor> TensorsOf(const Napi::Value& v) {
  if (!v.IsArray()) throw Napi::TypeError::New(v.Env(), "expected an array of tensors");
  auto arr = v.As<Napi::Array>();
  std::vector<at::Tensor> out;
  out.reserve(arr.Length());
  for (uint32_t i = 0; i < arr.Length(); i++) out.push_back(TensorOf(arr.Get(i), "tensors"));
  return out;
}

std::string StringField(const Napi::Object& o, const char* key, const std::string& dflt = "") {
  Napi::Value v = o.Get(key);
  if (v.IsUndefined() || v.IsNull()) return dflt;
  if (!v.IsString()) throw Napi::TypeError::New(o.Env(), std::string("option '") + key + "' must be a string");
  return v.As<Napi::String>().Utf8Value();
}

int64_t IntField(const Napi::Object& o, const char* key) {
  Napi::Value v = o.Get(key);
  if (!v.IsNumber()) throw Napi::TypeError::New(o.Env(), std::string("option '") + key + "' must be a number");
  double d = v.As<Napi::Number>().DoubleValue();
  if (d != static_cast<double>(static_cast<int64_t>(d))) {
    throw Napi::TypeError::New(o.Env(), std::string("option '") + key + "' must be an integer");
  }
  return static_cast<int64_t>(d);
}

// Consecutive runs of tensors with the same dtype and device, each at most `capBytes`
// (a tensor larger than the cap is a bucket of its own).
std::vector<std::vector<size_t>> Buckets(const std::vector<at::Tensor>& ts, int64_t capBytes) {
  std::vector<std::vector<size_t>> out;
  int64_t bytes = 0;
  for (size_t i = 0; i < ts.size(); i++) {
    int64_t b = ts[i].numel() * static_cast<int64_t>(ts[i].element_size());
    bool fresh = out.empty() || bytes + b > capBytes || ts[i].scalar_type() != ts[out.back().front()].scalar_type() ||
                 ts[i].device() != ts[out.back().front()].device();
    if (fresh) {
      out.emplace_back();
      bytes = 0;
    }
    out.back().push_back(i);
    bytes += b;
  }
  return out;
}

// One flat buffer per bucket: the tensor itself when it is alone and contiguous
// (reduced in place), otherwise a concatenated copy that is scattered back after.
struct Flat {
  at::Tensor buffer;
  bool copied = false;
};

Flat Flatten(const std::vector<at::Tensor>& ts, const std::vector<size_t>& idx) {
  if (idx.size() == 1 && ts[idx[0]].is_contiguous()) return {ts[idx[0]], false};
  std::vector<at::Tensor> views;
  views.reserve(idx.size());
  for (size_t i : idx) views.push_back(ts[i].reshape({-1}));
  return {at::cat(views), true};
}

void Unflatten(const std::vector<at::Tensor>& ts, const std::vector<size_t>& idx, const Flat& flat) {
  if (!flat.copied) return;
  int64_t offset = 0;
  for (size_t i : idx) {
    int64_t n = ts[i].numel();
    ts[i].copy_(flat.buffer.narrow(0, offset, n).view(ts[i].sizes()));
    offset += n;
  }
}

void Wait(const std::shared_ptr<Group>& g, const c10::intrusive_ptr<c10d::Work>& work) {
  // Bounded even if the backend's own timeout did not fire.
  work->wait(g->timeout);
}

c10d::ReduceOp ReduceOpOf(const std::string& op, Napi::Env env) {
  if (op == "sum") return c10d::ReduceOp::SUM;
  if (op == "max") return c10d::ReduceOp::MAX;
  if (op == "min") return c10d::ReduceOp::MIN;
  if (op == "product") return c10d::ReduceOp::PRODUCT;
  throw Napi::TypeError::New(env, "reduce op must be sum, max, min or product, got '" + op + "'");
}

// ------------------------------------------- a differentiable allreduce-sum

// A blocking sum over the ranks of one small tensor, on the calling thread (bounded by
// the group's timeout). For statistics inside forward and backward (SyncBatchNorm):
// the caller needs the result before it can go on, so there is nothing to overlap.
void AllreduceSumNow(const std::shared_ptr<Group>& g, const at::Tensor& t, const std::string& where) {
  try {
    if (g->failed) throw std::runtime_error("an earlier collective of this process group failed");
    std::vector<at::Tensor> one{t};
    c10d::AllreduceOptions opts;
    opts.reduceOp = c10d::ReduceOp::SUM;
    Wait(g, g->pg->allreduce(one, opts));
  } catch (const c10::Error& e) {
    g->failed = true;
    throw std::runtime_error(where + " (rank " + std::to_string(g->rank) + " of " + std::to_string(g->size) + "): " + e.what_without_backtrace());
  } catch (const std::exception& e) {
    g->failed = true;
    throw std::runtime_error(where + " (rank " + std::to_string(g->rank) + " of " + std::to_string(g->size) + "): " + e.what());
  }
}

// The adjoint of y = sum over ranks of x is dx = sum over ranks of dy: backward all-reduces
// the incoming gradient. Every rank builds the same graph, and libtorch's CPU engine runs
// a graph's nodes on the calling thread in an order fixed by the graph (ready nodes by
// creation order), so the ranks meet in these allreduces in the same order.
struct AllreduceSumBackward final : public torch::autograd::Node {
  std::shared_ptr<Group> group;
  std::vector<int64_t> sizes;
  at::TensorOptions options;

  torch::autograd::variable_list apply(torch::autograd::variable_list&& grads) override {
    // Every rank must take part, even one whose gradient is undefined (zero) here.
    at::Tensor g = grads[0].defined() ? grads[0].clone(at::MemoryFormat::Contiguous) : at::zeros(sizes, options);
    AllreduceSumNow(group, g, "allreduce in backward");
    return {g};
  }
  std::string name() const override { return "AllreduceSumBackward"; }
  void release_variables() override {}
};

// distAllreduceSumGrad(group, tensor) -> tensor: the sum over the ranks (a new tensor; the input is
// untouched), differentiable: with grad mode on and a tensor that requires grad, the result
// carries an AllreduceSumBackward node. Blocks the calling thread (bounded by the group's timeout).
Napi::Value AllreduceSumGrad(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto group = GroupOf(info[0]);
  const at::Tensor& x = TensorOf(info[1], "tensor");
  if (!at::isFloatingType(x.scalar_type())) throw Napi::TypeError::New(env, "distAllreduceSumGrad: expected a floating-point tensor");
  try {
    at::Tensor y;
    {
      at::NoGradGuard noGrad;
      y = x.detach().clone(at::MemoryFormat::Contiguous);
      AllreduceSumNow(group, y, "allreduce in forward");
    }
    if (torch::autograd::compute_requires_grad(x)) {
      auto fn = std::shared_ptr<AllreduceSumBackward>(new AllreduceSumBackward(), torch::autograd::deleteNode);
      fn->group = group;
      fn->sizes = x.sizes().vec();
      fn->options = x.options();
      fn->set_next_edges(torch::autograd::collect_next_edges(x));
      torch::autograd::set_history(y, fn);
    }
    return WrapTensor(env, y);
  } catch (const c10::Error& e) {
    throw Napi::Error::New(env, e.what_without_backtrace());
  } catch (const std::exception& e) {
    throw Napi::Error::New(env, e.what());
  }
}

// distFailed(group) -> boolean: a collective of this group failed (its peers may be gone).
Napi::Value Failed(const Napi::CallbackInfo& info) {
  return Napi::Boolean::New(info.Env(), GroupOf(info[0])->failed);
}

// ------------------------------------------- gradient allreduce overlapped with backward

// DistributedDataParallel's reducer, reduced to what the trainer needs: parameters in buckets
// (reverse registration order, about the order backward produces their gradients; a small first
// bucket so communication starts early), a post hook on every parameter's AccumulateGrad node
// that marks its gradient ready, and each bucket's allreduce launched (asynchronously, on Gloo's
// threads) as soon as it and every earlier bucket are complete, so communication overlaps the rest
// of backward. Buckets launch strictly in index order, so every rank issues the same collectives
// in the same order. finish() waits for them and copies the averages back into the gradients.
struct Reducer {
  std::shared_ptr<Group> group;
  std::vector<at::Tensor> params;
  std::vector<std::shared_ptr<torch::autograd::Node>> accumulators;  // the hooks live on them
  std::vector<std::vector<size_t>> buckets;
  std::vector<size_t> bucketOf;
  double divisor = 1;
  bool enabled = true;
  std::mutex mu;
  // This backward's state, reset by finish().
  std::vector<bool> ready;
  std::vector<size_t> pending;
  std::vector<Flat> flats;
  std::vector<c10::intrusive_ptr<c10d::Work>> works;
  size_t launched = 0;
  double launchSeconds = 0;  // time the hooks spent flattening and launching (on the backward thread)

  void Reset() {
    ready.assign(params.size(), false);
    pending.clear();
    for (const auto& b : buckets) pending.push_back(b.size());
    flats.assign(buckets.size(), Flat{});
    works.assign(buckets.size(), c10::intrusive_ptr<c10d::Work>());
    launched = 0;
  }

  // On the backward thread, from AccumulateGrad's post hook: the gradient of parameter i is final.
  void MarkReady(size_t i) {
    std::lock_guard<std::mutex> lock(mu);
    if (!enabled) return;
    if (ready[i]) {
      throw std::runtime_error("a parameter's gradient was produced twice before the gradients were averaged (two backward passes in one step?)");
    }
    ready[i] = true;
    pending[bucketOf[i]]--;
    while (launched < buckets.size() && pending[launched] == 0) Launch(launched++);
  }

  void Launch(size_t b) {
    auto t0 = std::chrono::steady_clock::now();
    try {
      if (group->failed) throw std::runtime_error("an earlier collective of this process group failed");
      std::vector<at::Tensor> grads;
      for (size_t i : buckets[b]) grads.push_back(params[i].grad());
      std::vector<size_t> all(grads.size());
      for (size_t k = 0; k < all.size(); k++) all[k] = k;
      at::NoGradGuard noGrad;
      flats[b] = Flatten(grads, all);
      flats[b].buffer.div_(divisor);
      std::vector<at::Tensor> one{flats[b].buffer};
      works[b] = group->pg->allreduce(one);
    } catch (const c10::Error& e) {
      group->failed = true;
      throw std::runtime_error("allreduce of gradients in backward (rank " + std::to_string(group->rank) + " of " + std::to_string(group->size) + "): " + e.what_without_backtrace());
    } catch (const std::exception& e) {
      group->failed = true;
      throw std::runtime_error("allreduce of gradients in backward (rank " + std::to_string(group->rank) + " of " + std::to_string(group->size) + "): " + e.what());
    }
    launchSeconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }
};

struct ReducerBox {
  std::shared_ptr<Reducer> reducer;
};

std::shared_ptr<Reducer> ReducerOf(const Napi::Value& v) {
  if (!v.IsExternal()) throw Napi::TypeError::New(v.Env(), "expected a gradient reducer");
  auto* box = v.As<Napi::External<ReducerBox>>().Data();
  if (!box->reducer) throw Napi::Error::New(v.Env(), "gradient reducer used after detach()");
  return box->reducer;
}

// distReducerNew(group, params, bucketBytes, firstBucketBytes, divisor) -> reducer: hooks every
// parameter (leaf tensors that require grad) for allreduces overlapped with backward.
Napi::Value ReducerNew(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto group = GroupOf(info[0]);
  auto params = TensorsOf(info[1]);
  int64_t cap = static_cast<int64_t>(info[2].As<Napi::Number>().DoubleValue());
  int64_t firstCap = static_cast<int64_t>(info[3].As<Napi::Number>().DoubleValue());
  double divisor = info[4].As<Napi::Number>().DoubleValue();
  if (cap < 1 || firstCap < 1) throw Napi::RangeError::New(env, "distReducerNew: bucket sizes must be positive");
  if (params.empty()) throw Napi::RangeError::New(env, "distReducerNew: no parameters");
  auto r = std::make_shared<Reducer>();
  r->group = group;
  r->divisor = divisor;
  r->params = params;
  r->bucketOf.assign(params.size(), 0);
  // Reverse order; a new bucket when the size cap (the first one's is smaller) or the dtype changes.
  int64_t bytes = 0;
  for (size_t k = params.size(); k-- > 0;) {
    const auto& p = params[k];
    if (!p.is_leaf() || !p.requires_grad()) throw Napi::TypeError::New(env, "distReducerNew: every parameter must be a leaf that requires grad");
    if (!at::isFloatingType(p.scalar_type())) throw Napi::TypeError::New(env, "distReducerNew: parameters must be floating point");
    int64_t b = p.numel() * static_cast<int64_t>(p.element_size());
    int64_t limit = r->buckets.size() <= 1 ? firstCap : cap;
    bool fresh = r->buckets.empty() || bytes + b > limit || p.scalar_type() != params[r->buckets.back().front()].scalar_type();
    if (fresh) {
      r->buckets.emplace_back();
      bytes = 0;
    }
    r->buckets.back().push_back(k);
    r->bucketOf[k] = r->buckets.size() - 1;
    bytes += b;
  }
  r->Reset();
  std::weak_ptr<Reducer> weak = r;
  for (size_t k = 0; k < params.size(); k++) {
    auto acc = torch::autograd::impl::grad_accumulator(params[k]);
    acc->add_post_hook(std::make_unique<torch::autograd::utils::LambdaPostHook>(
        [weak, k](const torch::autograd::variable_list& outputs, const torch::autograd::variable_list&) {
          if (auto live = weak.lock()) live->MarkReady(k);
          return outputs;
        }));
    r->accumulators.push_back(std::move(acc));
  }
  auto* box = new ReducerBox{r};
  return Napi::External<ReducerBox>::New(env, box, [](Napi::Env, ReducerBox* b) { delete b; });
}

// distReducerInfo(reducer) -> { buckets: number[][] (parameter indices), launchSeconds, launched (buckets in
// flight in this backward), missing (parameters whose gradient has not arrived) }
Napi::Value ReducerInfo(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto r = ReducerOf(info[0]);
  std::lock_guard<std::mutex> lock(r->mu);
  auto out = Napi::Object::New(env);
  auto bs = Napi::Array::New(env, r->buckets.size());
  for (size_t b = 0; b < r->buckets.size(); b++) {
    auto a = Napi::Array::New(env, r->buckets[b].size());
    for (size_t k = 0; k < r->buckets[b].size(); k++) a.Set(static_cast<uint32_t>(k), Napi::Number::New(env, static_cast<double>(r->buckets[b][k])));
    bs.Set(static_cast<uint32_t>(b), a);
  }
  out.Set("buckets", bs);
  out.Set("launchSeconds", Napi::Number::New(env, r->launchSeconds));
  out.Set("launched", Napi::Number::New(env, static_cast<double>(r->launched)));
  // Parameters whose gradient has not arrived in the backward under way (none after a complete one).
  auto missing = Napi::Array::New(env);
  if (r->launched < r->buckets.size()) {
    uint32_t n = 0;
    for (size_t k = 0; k < r->params.size(); k++) if (!r->ready[k]) missing.Set(n++, Napi::Number::New(env, static_cast<double>(k)));
  }
  out.Set("missing", missing);
  return out;
}

// distReducerFinish(reducer) -> Promise<void>: after backward, waits for every bucket's allreduce and
// writes the averages into the gradients. Rejects (and resets for the next step) when a parameter got no
// gradient in this backward, or a collective failed.
Napi::Value ReducerFinish(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto r = ReducerOf(info[0]);
  std::vector<size_t> missing;
  {
    std::lock_guard<std::mutex> lock(r->mu);
    if (r->launched < r->buckets.size()) {
      for (size_t k = 0; k < r->params.size(); k++) if (!r->ready[k]) missing.push_back(k);
    }
  }
  if (!missing.empty()) {
    // Every rank runs the same graph, so every rank lands here; the buckets launched so far are
    // waited for (their collectives complete on all ranks) before the error.
    std::string list;
    for (size_t k = 0; k < missing.size() && k < 5; k++) list += (k ? ", " : "") + std::to_string(missing[k]);
    auto rr = r;
    // No group: a configuration error, not a failed collective (the group stays usable).
    return Run(env, "gradient averaging (rank " + std::to_string(r->group->rank) + " of " + std::to_string(r->group->size) + ")", nullptr,
               [rr, list]() {
                 std::lock_guard<std::mutex> lock(rr->mu);
                 std::vector<c10::intrusive_ptr<c10d::Work>> works = rr->works;
                 rr->Reset();
                 for (const auto& w : works) if (w) Wait(rr->group, w);
                 throw std::runtime_error("parameters without a gradient in this backward (indices " + list + "); every trainable parameter must take part in the loss");
               });
  }
  return Run(env, "allreduce of gradients (rank " + std::to_string(r->group->rank) + " of " + std::to_string(r->group->size) + ")", r->group, [r]() {
    std::lock_guard<std::mutex> lock(r->mu);
    auto works = r->works;
    auto flats = r->flats;
    auto buckets = r->buckets;
    std::vector<at::Tensor> grads;
    for (const auto& p : r->params) grads.push_back(p.grad());
    r->Reset();
    for (const auto& w : works) Wait(r->group, w);
    for (size_t b = 0; b < buckets.size(); b++) {
      std::vector<at::Tensor> bucketGrads;
      for (size_t i : buckets[b]) bucketGrads.push_back(grads[i]);
      std::vector<size_t> all(bucketGrads.size());
      for (size_t k = 0; k < all.size(); k++) all[k] = k;
      Unflatten(bucketGrads, all, flats[b]);
    }
  });
}

// distReducerDetach(reducer): the hooks stop acting (they stay on the accumulators, inert).
Napi::Value ReducerDetach(const Napi::CallbackInfo& info) {
  if (!info[0].IsExternal()) throw Napi::TypeError::New(info.Env(), "expected a gradient reducer");
  auto* box = info[0].As<Napi::External<ReducerBox>>().Data();
  if (box->reducer) {
    std::lock_guard<std::mutex> lock(box->reducer->mu);
    box->reducer->enabled = false;
    box->reducer->accumulators.clear();
  }
  box->reducer.reset();
  return info.Env().Undefined();
}

// ---------------------------------------------------------------- functions

// distBackends() -> { gloo, nccl }: what this build of the addon can create.
Napi::Value Backends(const Napi::CallbackInfo& info) {
  auto o = Napi::Object::New(info.Env());
#ifdef USE_C10D_GLOO
  o.Set("gloo", true);
#else
  o.Set("gloo", false);
#endif
#ifdef USE_C10D_NCCL
  o.Set("nccl", true);
#else
  o.Set("nccl", false);
#endif
  return o;
}

// distNewGroup({ masterAddr, masterPort, rank, worldSize, timeoutMs, backend, interface?, hostname? })
//   -> Promise<group>. Rank 0 serves the TCPStore on masterPort; every rank then joins
//   the process group (Gloo connects a full mesh through the store). Resolves when all
//   ranks have joined, rejects on a port in use, an unreachable master or the timeout.
Napi::Value NewGroup(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsObject()) throw Napi::TypeError::New(env, "distNewGroup: expected an options object");
  auto o = info[0].As<Napi::Object>();
  std::string addr = StringField(o, "masterAddr");
  int64_t port = IntField(o, "masterPort");
  int64_t rank = IntField(o, "rank");
  int64_t size = IntField(o, "worldSize");
  int64_t timeoutMs = IntField(o, "timeoutMs");
  std::string backend = StringField(o, "backend", "gloo");
  std::string iface = StringField(o, "interface");
  std::string hostname = StringField(o, "hostname");
  if (addr.empty()) throw Napi::TypeError::New(env, "distNewGroup: masterAddr is empty");
  if (port < 1 || port > 65535) throw Napi::RangeError::New(env, "distNewGroup: masterPort must be in 1..65535");
  if (size < 1 || rank < 0 || rank >= size) {
    throw Napi::RangeError::New(env, "distNewGroup: need 0 <= rank < worldSize, got rank " + std::to_string(rank) +
                                         " of " + std::to_string(size));
  }
  if (timeoutMs < 1) throw Napi::RangeError::New(env, "distNewGroup: timeoutMs must be positive");
  if (backend != "gloo" && backend != "nccl") {
    throw Napi::TypeError::New(env, "distNewGroup: backend must be gloo or nccl, got '" + backend + "'");
  }
#ifndef USE_C10D_GLOO
  if (backend == "gloo") {
    throw Napi::Error::New(env, "this addon was built without Gloo (install libgloo-dev and rebuild: npm run build:native)");
  }
#endif
#ifndef USE_C10D_NCCL
  if (backend == "nccl") {
    throw Napi::Error::New(env, "this addon was built without NCCL (build against a CUDA libtorch with REPOPT_NCCL=1)");
  }
#endif

  auto group = std::make_shared<Group>();
  group->rank = static_cast<int>(rank);
  group->size = static_cast<int>(size);
  group->timeout = std::chrono::milliseconds(timeoutMs);
  group->backend = backend;
  std::string what = "rendezvous at " + addr + ":" + std::to_string(port) + " (rank " + std::to_string(rank) + " of " +
                     std::to_string(size) + ")";
  return Run(
      env, what, nullptr,
      [group, addr, port, iface, hostname]() {
        c10d::TCPStoreOptions so;
        so.port = static_cast<std::uint16_t>(port);
        so.isServer = group->rank == 0;
        so.numWorkers = static_cast<std::size_t>(group->size);
        so.waitWorkers = true;
        so.timeout = group->timeout;
        group->store = c10::make_intrusive<c10d::TCPStore>(addr, so);
        group->store->setTimeout(group->timeout);
        if (group->backend == "gloo") {
#ifdef USE_C10D_GLOO
          auto opts = c10d::ProcessGroupGloo::Options::create(group->timeout);
          if (!iface.empty()) {
            opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(iface));
          } else if (!hostname.empty()) {
            opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname(hostname));
          } else {
            opts->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
          }
          group->pg = c10::make_intrusive<c10d::ProcessGroupGloo>(group->store, group->rank, group->size, opts);
#endif
        } else {
#ifdef USE_C10D_NCCL
          auto opts = c10d::ProcessGroupNCCL::Options::create();
          opts->timeout = group->timeout;
          group->pg = c10::make_intrusive<c10d::ProcessGroupNCCL>(group->store, group->rank, group->size, opts);
#endif
        }
        if (!group->pg) throw std::runtime_error("backend " + group->backend + " is not available in this build");
      },
      [group](Napi::Env e) -> Napi::Value {
        auto* box = new GroupBox{group};
        return Napi::External<GroupBox>::New(e, box, [](Napi::Env, GroupBox* b) {
          // An orderly teardown is destroy(); after a failure the peers may be gone and
          // tearing down could block on their sockets, so the group is left to process exit.
          if (b->group && b->group->failed) new std::shared_ptr<Group>(std::move(b->group));
          delete b;
        });
      });
}

// distAllreduce(group, tensors, op, divisor, bucketBytes) -> Promise<void>: reduces every
// tensor over the ranks in place (all ranks end with the same values). Tensors go in
// flat buckets of at most bucketBytes, all in flight together; with divisor != 1 each
// bucket is divided before the sum, as DDP's reducer does with the world size (averaging).
Napi::Value Allreduce(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto group = GroupOf(info[0]);
  auto tensors = TensorsOf(info[1]);
  c10d::AllreduceOptions opts;
  opts.reduceOp = ReduceOpOf(info[2].As<Napi::String>().Utf8Value(), env);
  double divisor = info[3].As<Napi::Number>().DoubleValue();
  int64_t cap = static_cast<int64_t>(info[4].As<Napi::Number>().DoubleValue());
  if (cap < 1) throw Napi::RangeError::New(env, "distAllreduce: bucketBytes must be positive");
  if (divisor != 1.0) {
    for (const auto& t : tensors) {
      if (!at::isFloatingType(t.scalar_type())) throw Napi::TypeError::New(env, "distAllreduce: a divisor needs floating-point tensors");
    }
  }
  return Run(env, "allreduce (rank " + std::to_string(group->rank) + " of " + std::to_string(group->size) + ")", group,
             [group, tensors, opts, divisor, cap]() {
               auto buckets = Buckets(tensors, cap);
               std::vector<Flat> flats;
               std::vector<c10::intrusive_ptr<c10d::Work>> works;
               for (const auto& b : buckets) {
                 flats.push_back(Flatten(tensors, b));
                 if (divisor != 1.0) flats.back().buffer.div_(divisor);
                 std::vector<at::Tensor> one{flats.back().buffer};
                 works.push_back(group->pg->allreduce(one, opts));
               }
               for (const auto& w : works) Wait(group, w);
               for (size_t i = 0; i < buckets.size(); i++) Unflatten(tensors, buckets[i], flats[i]);
             });
}

// distBroadcast(group, tensors, root, bucketBytes) -> Promise<void>: every rank ends with root's values.
Napi::Value Broadcast(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto group = GroupOf(info[0]);
  auto tensors = TensorsOf(info[1]);
  int64_t root = info[2].As<Napi::Number>().Int64Value();
  int64_t cap = static_cast<int64_t>(info[3].As<Napi::Number>().DoubleValue());
  if (root < 0 || root >= group->size) throw Napi::RangeError::New(env, "distBroadcast: root must be a rank of the group");
  if (cap < 1) throw Napi::RangeError::New(env, "distBroadcast: bucketBytes must be positive");
  c10d::BroadcastOptions opts;
  opts.rootRank = root;
  opts.rootTensor = 0;
  return Run(env, "broadcast (rank " + std::to_string(group->rank) + " of " + std::to_string(group->size) + ")", group,
             [group, tensors, opts, cap]() {
               auto buckets = Buckets(tensors, cap);
               std::vector<Flat> flats;
               std::vector<c10::intrusive_ptr<c10d::Work>> works;
               for (const auto& b : buckets) {
                 flats.push_back(Flatten(tensors, b));
                 std::vector<at::Tensor> one{flats.back().buffer};
                 works.push_back(group->pg->broadcast(one, opts));
               }
               for (const auto& w : works) Wait(group, w);
               if (group->rank != opts.rootRank) {
                 for (size_t i = 0; i < buckets.size(); i++) Unflatten(tensors, buckets[i], flats[i]);
               }
             });
}

// distBarrier(group) -> Promise<void>
Napi::Value Barrier(const Napi::CallbackInfo& info) {
  auto group = GroupOf(info[0]);
  return Run(info.Env(), "barrier (rank " + std::to_string(group->rank) + " of " + std::to_string(group->size) + ")", group,
             [group]() { Wait(group, group->pg->barrier()); });
}

// distDestroy(group): releases the process group and the store (after the last collective).
Napi::Value Destroy(const Napi::CallbackInfo& info) {
  if (!info[0].IsExternal()) throw Napi::TypeError::New(info.Env(), "expected a process group");
  auto* box = info[0].As<Napi::External<GroupBox>>().Data();
  if (box->group && box->group->failed) {
    new std::shared_ptr<Group>(std::move(box->group));  // see the finalizer in NewGroup
  }
  box->group.reset();
  return info.Env().Undefined();
}

}  // namespace

void InitDistributed(Napi::Env env, Napi::Object exports) {
  exports.Set("distBackends", Napi::Function::New(env, Backends, "distBackends"));
  exports.Set("distNewGroup", Napi::Function::New(env, NewGroup, "distNewGroup"));
  exports.Set("distAllreduce", Napi::Function::New(env, Allreduce, "distAllreduce"));
  exports.Set("distBroadcast", Napi::Function::New(env, Broadcast, "distBroadcast"));
  exports.Set("distBarrier", Napi::Function::New(env, Barrier, "distBarrier"));
  exports.Set("distAllreduceSumGrad", Napi::Function::New(env, AllreduceSumGrad, "distAllreduceSumGrad"));
  exports.Set("distReducerNew", Napi::Function::New(env, ReducerNew, "distReducerNew"));
  exports.Set("distReducerInfo", Napi::Function::New(env, ReducerInfo, "distReducerInfo"));
  exports.Set("distReducerFinish", Napi::Function::New(env, ReducerFinish, "distReducerFinish"));
  exports.Set("distReducerDetach", Napi::Function::New(env, ReducerDetach, "distReducerDetach"));
  exports.Set("distFailed", Napi::Function::New(env, Failed, "distFailed"));
  exports.Set("distDestroy", Napi::Function::New(env, Destroy, "distDestroy"));
}

}  // namespace repopt
