//! The few libtorch calls tch does not expose (csrc/libtorch_extras.cpp, compiled by build.rs):
//! the CPU generator's state, the TF32 switches, the CUDA caching allocator's statistics.
use anyhow::{bail, Result};

extern "C" {
    fn ti_cpu_rng_state_size() -> i64;
    fn ti_cpu_rng_get_state(out: *mut u8, len: i64) -> i32;
    fn ti_cpu_rng_set_state(data: *const u8, len: i64) -> i32;
    fn ti_set_allow_tf32(on: i32) -> i32;
    fn ti_cuda_memory_stats(device: i32, allocated: *mut i64, peak_allocated: *mut i64, reserved: *mut i64, peak_reserved: *mut i64) -> i32;
    fn ti_cuda_reset_peak_memory(device: i32) -> i32;
}

/// A snapshot of libtorch's global CPU generator (`torch.get_rng_state()`).
#[derive(Clone, PartialEq, Eq)]
pub struct CpuRngState(Vec<u8>);

impl CpuRngState {
    /// The generator's state now.
    pub fn save() -> Result<Self> {
        // SAFETY: plain C calls; the buffer is exactly the size the first call reports.
        let len = unsafe { ti_cpu_rng_state_size() };
        if len <= 0 {
            bail!("libtorch did not report its CPU generator state");
        }
        let mut bytes = vec![0u8; len as usize];
        if unsafe { ti_cpu_rng_get_state(bytes.as_mut_ptr(), len) } != 0 {
            bail!("reading libtorch's CPU generator state failed");
        }
        Ok(CpuRngState(bytes))
    }

    /// Puts the generator back to this state (`torch.set_rng_state`).
    pub fn restore(&self) -> Result<()> {
        // SAFETY: the pointer and length describe this state's own buffer.
        if unsafe { ti_cpu_rng_set_state(self.0.as_ptr(), self.0.len() as i64) } != 0 {
            bail!("restoring libtorch's CPU generator state failed");
        }
        Ok(())
    }
}

/// TF32 for fp32 matmuls and convolutions on Ampere and later GPUs, as the script's
/// `torch.backends.cuda.matmul.allow_tf32 = True` (cuDNN convolutions already default to it).
pub fn set_allow_tf32(on: bool) -> Result<()> {
    // SAFETY: a plain C call.
    if unsafe { ti_set_allow_tf32(i32::from(on)) } != 0 {
        bail!("libtorch refused to set TF32");
    }
    Ok(())
}

/// The CUDA caching allocator's counters for one device, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct CudaMemory {
    /// `torch.cuda.memory_allocated`.
    pub allocated: i64,
    /// `torch.cuda.max_memory_allocated`.
    pub peak_allocated: i64,
    /// `torch.cuda.memory_reserved`.
    pub reserved: i64,
    /// `torch.cuda.max_memory_reserved`.
    pub peak_reserved: i64,
}

/// The allocator's counters for CUDA device `device`; None without CUDA (or before its first
/// allocation).
pub fn cuda_memory(device: usize) -> Option<CudaMemory> {
    let mut m = CudaMemory { allocated: 0, peak_allocated: 0, reserved: 0, peak_reserved: 0 };
    // SAFETY: the out-pointers are fields of `m`, alive for the call.
    let rc = unsafe { ti_cuda_memory_stats(device as i32, &mut m.allocated, &mut m.peak_allocated, &mut m.reserved, &mut m.peak_reserved) };
    (rc == 0).then_some(m)
}

/// `torch.cuda.reset_peak_memory_stats(device)`; false without CUDA.
pub fn reset_cuda_peak_memory(device: usize) -> bool {
    // SAFETY: a plain C call.
    unsafe { ti_cuda_reset_peak_memory(device as i32) == 0 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind, Tensor};

    #[test]
    fn a_restored_state_draws_the_same_numbers_again() {
        tch::manual_seed(7);
        let _ = Tensor::randn([5], (Kind::Float, Device::Cpu));
        let state = CpuRngState::save().unwrap();
        let a = Tensor::randn([3, 40], (Kind::Float, Device::Cpu));
        let odd = Tensor::randn([3], (Kind::Double, Device::Cpu)); // leaves a cached normal
        tch::manual_seed(99);
        let _ = Tensor::rand([11], (Kind::Float, Device::Cpu));
        state.restore().unwrap();
        assert!(Tensor::randn([3, 40], (Kind::Float, Device::Cpu)).equal(&a));
        assert!(Tensor::randn([3], (Kind::Double, Device::Cpu)).equal(&odd));
        assert_eq!(CpuRngState::save().unwrap().0.len(), state.0.len());
    }

    #[test]
    fn cuda_statistics_are_absent_without_cuda() {
        if !tch::Cuda::is_available() {
            assert!(cuda_memory(0).is_none());
            assert!(!reset_cuda_peak_memory(0));
        }
    }
}
