// PyTorch's c10d, the engine under torchrun, DDP and accelerate, as plain C functions for
// src/distributed/ffi.rs: a TCPStore (server or client) behind a PrefixStore, the store's
// key-value calls, and a ProcessGroupGloo with the four collectives data-parallel training
// needs on CPU tensors.
//
// Compiled by build.rs only where gloo's headers are found (libtorch ships the compiled gloo
// but not its headers). No C++ exception crosses into Rust: every function catches and returns
// an error message allocated with malloc (NULL on success), which Rust frees with
// ti_c10d_free. Handles are opaque structs that Rust destroys exactly once.
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <string>
#include <vector>

struct TiStore {
  c10::intrusive_ptr<c10d::Store> store;
};

struct TiPg {
  c10::intrusive_ptr<c10d::ProcessGroupGloo> pg;
};

struct TiWork {
  c10::intrusive_ptr<c10d::Work> work;
};

namespace {

char* copy_message(const std::string& message) {
  char* out = static_cast<char*>(std::malloc(message.size() + 1));
  if (out != nullptr) {
    std::memcpy(out, message.data(), message.size());
    out[message.size()] = '\0';
  }
  return out;
}

// The message of the exception in flight, without libtorch's C++ backtrace.
char* current_error() {
  try {
    throw;
  } catch (const c10::Error& e) {
    return copy_message(e.what_without_backtrace());
  } catch (const std::exception& e) {
    return copy_message(e.what());
  } catch (...) {
    return copy_message("unknown C++ exception");
  }
}

std::vector<std::string> key_list(const char* const* keys, size_t n) {
  std::vector<std::string> out;
  out.reserve(n);
  for (size_t i = 0; i < n; ++i) out.emplace_back(keys[i]);
  return out;
}

}  // namespace

extern "C" {

void ti_c10d_free(void* p) { std::free(p); }

// A TCPStore at host:port: the server (which listens, and with wait_workers waits until
// world_size stores, itself included, have connected) or a client (which retries connecting
// until the timeout). Wrapped in a PrefixStore when prefix is non-empty.
char* ti_c10d_store_create(const char* host, int port, int is_server, int world_size, int wait_workers, int64_t timeout_ms,
                           const char* prefix, TiStore** out) {
  try {
    c10d::TCPStoreOptions opts;
    opts.port = static_cast<std::uint16_t>(port);
    opts.isServer = is_server != 0;
    opts.numWorkers = static_cast<std::size_t>(world_size);
    opts.waitWorkers = wait_workers != 0;
    opts.timeout = std::chrono::milliseconds(timeout_ms);
    c10::intrusive_ptr<c10d::Store> store = c10::make_intrusive<c10d::TCPStore>(std::string(host), opts);
    if (prefix != nullptr && prefix[0] != '\0') store = c10::make_intrusive<c10d::PrefixStore>(std::string(prefix), store);
    *out = new TiStore{std::move(store)};
    return nullptr;
  } catch (...) {
    return current_error();
  }
}

// The same store under a further key prefix.
char* ti_c10d_store_prefixed(TiStore* store, const char* prefix, TiStore** out) {
  try {
    *out = new TiStore{c10::make_intrusive<c10d::PrefixStore>(std::string(prefix), store->store)};
    return nullptr;
  } catch (...) {
    return current_error();
  }
}

// A second connection to the same store, for use from another thread.
char* ti_c10d_store_clone(TiStore* store, TiStore** out) {
  try {
    *out = new TiStore{store->store->clone()};
    return nullptr;
  } catch (...) {
    return current_error();
  }
}

void ti_c10d_store_destroy(TiStore* store) {
  try {
    delete store;
  } catch (...) {
  }
}

char* ti_c10d_store_set(TiStore* store, const char* key, const uint8_t* data, size_t len) {
  try {
    store->store->set(std::string(key), std::vector<uint8_t>(data, data + len));
    return nullptr;
  } catch (...) {
    return current_error();
  }
}

// Blocks until the key exists (up to the store's timeout); *data is malloc'ed (free with
// ti_c10d_free), *len its size.
char* ti_c10d_store_get(TiStore* store, const char* key, uint8_t** data, size_t* len) {
  try {
    std::vector<uint8_t> value = store->store->get(std::string(key));
    *len = value.size();
    *data = static_cast<uint8_t*>(std::malloc(value.empty() ? 1 : value.size()));
    if (*data == nullptr) return copy_message("out of memory reading a store value");
    if (!value.empty()) std::memcpy(*data, value.data(), value.size());
    return nullptr;
  } catch (...) {
    return current_error();
  }
}

// Adds delta to the integer at key (0 when absent) and returns the new value.
char* ti_c10d_store_add(TiStore* store, const char* key, int64_t delta, int64_t* value) {
  try {
    *value = store->store->add(std::string(key), delta);
    return nullptr;
  } catch (...) {
    return current_error();
  }
}

// Whether every key exists, without waiting.
char* ti_c10d_store_check(TiStore* store, const char* const* keys, size_t n, int* present) {
  try {
    *present = store->store->check(key_list(keys, n)) ? 1 : 0;
    return nullptr;
  } catch (...) {
    return current_error();
  }
}

// Waits until every key exists, at most timeout_ms.
char* ti_c10d_store_wait(TiStore* store, const char* const* keys, size_t n, int64_t timeout_ms) {
  try {
    store->store->wait(key_list(keys, n), std::chrono::milliseconds(timeout_ms));
    return nullptr;
  } catch (...) {
    return current_error();
  }
}

// A Gloo process group of `size` ranks meeting through `store`. Its device binds the network
// interfaces named in `interfaces` (comma-separated, as GLOO_SOCKET_IFNAME) when non-empty,
// else the address `hostname` resolves to when non-empty, else this machine's hostname (the
// loopback address when that does not resolve). timeout_ms bounds every collective.
char* ti_c10d_pg_create(TiStore* store, int rank, int size, int64_t timeout_ms, const char* interfaces, const char* hostname,
                        TiPg** out) {
  try {
    auto opts = c10d::ProcessGroupGloo::Options::create(std::chrono::milliseconds(timeout_ms));
    std::string ifaces = interfaces != nullptr ? interfaces : "";
    if (!ifaces.empty()) {
      size_t start = 0;
      while (start <= ifaces.size()) {
        size_t end = ifaces.find(',', start);
        if (end == std::string::npos) end = ifaces.size();
        std::string name = ifaces.substr(start, end - start);
        if (!name.empty()) opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(name));
        start = end + 1;
      }
    } else if (hostname != nullptr && hostname[0] != '\0') {
      opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname(std::string(hostname)));
    } else {
      opts->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
    }
    auto pg = c10::make_intrusive<c10d::ProcessGroupGloo>(store->store, rank, size, opts);
    *out = new TiPg{std::move(pg)};
    return nullptr;
  } catch (...) {
    return current_error();
  }
}

// Waits for the group's queued work and stops its threads (bounded by the group's timeout).
void ti_c10d_pg_destroy(TiPg* pg) {
  try {
    delete pg;
  } catch (...) {
  }
}

// In-place SUM all-reduce of one contiguous CPU tensor.
char* ti_c10d_allreduce_sum(TiPg* pg, at::Tensor* tensor, TiWork** out) {
  try {
    std::vector<at::Tensor> tensors{*tensor};
    c10d::AllreduceOptions opts;
    opts.reduceOp = c10d::ReduceOp::SUM;
    *out = new TiWork{pg->pg->allreduce(tensors, opts)};
    return nullptr;
  } catch (...) {
    return current_error();
  }
}

// In-place broadcast of rank `root`'s tensor.
char* ti_c10d_broadcast(TiPg* pg, at::Tensor* tensor, int root, TiWork** out) {
  try {
    std::vector<at::Tensor> tensors{*tensor};
    c10d::BroadcastOptions opts;
    opts.rootRank = root;
    opts.rootTensor = 0;
    *out = new TiWork{pg->pg->broadcast(tensors, opts)};
    return nullptr;
  } catch (...) {
    return current_error();
  }
}

// Every rank's `input` into outputs[0..n] (n = the group's size, each shaped as input).
char* ti_c10d_allgather(TiPg* pg, at::Tensor* input, at::Tensor* const* outputs, size_t n, TiWork** out) {
  try {
    std::vector<at::Tensor> inputs{*input};
    std::vector<std::vector<at::Tensor>> output_lists(1);
    for (size_t i = 0; i < n; ++i) output_lists[0].push_back(*outputs[i]);
    *out = new TiWork{pg->pg->allgather(output_lists, inputs)};
    return nullptr;
  } catch (...) {
    return current_error();
  }
}

char* ti_c10d_barrier(TiPg* pg, TiWork** out) {
  try {
    *out = new TiWork{pg->pg->barrier()};
    return nullptr;
  } catch (...) {
    return current_error();
  }
}

// Waits up to slice_ms for the work: *done = 1 when it finished (the error, if it failed, is
// returned), 0 when it is still running. Called in a loop so that the caller can look at the
// other ranks' heartbeats between slices.
char* ti_c10d_work_wait(TiWork* work, int64_t slice_ms, int* done) {
  try {
    work->work->wait(std::chrono::milliseconds(slice_ms < 1 ? 1 : slice_ms));
    *done = 1;
    return nullptr;
  } catch (...) {
    // Work::wait throws on its own timeout too: only a finished work's exception is an error.
    bool finished = false;
    try {
      finished = work->work->isCompleted();
    } catch (...) {
      finished = true;
    }
    if (!finished) {
      *done = 0;
      return nullptr;
    }
    *done = 1;
    return current_error();
  }
}

void ti_c10d_work_destroy(TiWork* work) {
  try {
    delete work;
  } catch (...) {
  }
}

}  // extern "C"
