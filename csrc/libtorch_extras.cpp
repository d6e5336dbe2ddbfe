// The few libtorch calls tch does not expose, as plain C functions for src/libtorch_extras.rs:
// the CPU generator's state (validation draws without disturbing the training stream), the TF32
// switches, and the CUDA caching allocator's statistics. No C++ exception crosses into Rust:
// every function catches and reports failure in its return value.
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Context.h>
#include <ATen/core/Generator.h>
#include <ATen/ops/empty.h>
#include <c10/core/CachingDeviceAllocator.h>

#include <cstdint>
#include <cstring>
#include <mutex>

extern "C" {

// Bytes of the default CPU generator's state; -1 on failure.
int64_t ti_cpu_rng_state_size() {
  try {
    auto gen = at::detail::getDefaultCPUGenerator();
    std::lock_guard<std::mutex> lock(gen.mutex());
    return gen.get_state().numel();
  } catch (...) {
    return -1;
  }
}

// Copies the default CPU generator's state into `out` (`len` bytes, from ti_cpu_rng_state_size).
int ti_cpu_rng_get_state(uint8_t* out, int64_t len) {
  try {
    auto gen = at::detail::getDefaultCPUGenerator();
    std::lock_guard<std::mutex> lock(gen.mutex());
    at::Tensor state = gen.get_state();
    if (state.numel() != len) return -1;
    std::memcpy(out, state.data_ptr<uint8_t>(), static_cast<size_t>(len));
    return 0;
  } catch (...) {
    return -1;
  }
}

// Puts a state read by ti_cpu_rng_get_state back.
int ti_cpu_rng_set_state(const uint8_t* in, int64_t len) {
  try {
    at::Tensor state = at::empty({len}, at::TensorOptions().dtype(at::kByte));
    std::memcpy(state.data_ptr<uint8_t>(), in, static_cast<size_t>(len));
    auto gen = at::detail::getDefaultCPUGenerator();
    std::lock_guard<std::mutex> lock(gen.mutex());
    gen.set_state(state);
    return 0;
  } catch (...) {
    return -1;
  }
}

// TF32 for float32 matmuls (cuBLAS) and convolutions (cuDNN), as torch.backends.*.allow_tf32.
int ti_set_allow_tf32(int on) {
  try {
    at::globalContext().setAllowTF32CuBLAS(on != 0);
    at::globalContext().setAllowTF32CuDNN(on != 0);
    return 0;
  } catch (...) {
    return -1;
  }
}

// The CUDA caching allocator's allocated/reserved bytes (current and peak) on `device`, as
// torch.cuda.memory_allocated / max_memory_allocated / memory_reserved / max_memory_reserved.
// Returns -1 where CUDA has no allocator (no CUDA libtorch, or not initialised).
int ti_cuda_memory_stats(int device, int64_t* allocated, int64_t* peak_allocated, int64_t* reserved, int64_t* peak_reserved) {
  try {
    if (!c10::GetAllocator(c10::DeviceType::CUDA)) return -1;
    auto* allocator = c10::getDeviceAllocator(c10::DeviceType::CUDA);
    if (!allocator || !allocator->initialized()) return -1;
    auto stats = allocator->getDeviceStats(static_cast<c10::DeviceIndex>(device));
    const auto all = static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE);
    *allocated = stats.allocated_bytes[all].current;
    *peak_allocated = stats.allocated_bytes[all].peak;
    *reserved = stats.reserved_bytes[all].current;
    *peak_reserved = stats.reserved_bytes[all].peak;
    return 0;
  } catch (...) {
    return -1;
  }
}

// torch.cuda.reset_peak_memory_stats(device).
int ti_cuda_reset_peak_memory(int device) {
  try {
    auto* allocator = c10::getDeviceAllocator(c10::DeviceType::CUDA);
    if (!allocator || !allocator->initialized()) return -1;
    allocator->resetPeakStats(static_cast<c10::DeviceIndex>(device));
    return 0;
  } catch (...) {
    return -1;
  }
}

}  // extern "C"
