//! Which libtorch is running and what it can use.
use serde::Serialize;

/// What `textual-inversion info` reports.
#[derive(Debug, Serialize)]
pub struct RuntimeInfo {
    pub version: &'static str,
    pub libtorch_version: &'static str,
    /// The libtorch_cpu.so actually loaded (it can differ from the build's when
    /// LD_LIBRARY_PATH points elsewhere).
    pub libtorch_path: Option<String>,
    pub cuda_available: bool,
    pub cuda_devices: i64,
    pub cudnn_available: bool,
    pub mps_available: bool,
    pub threads: i32,
}

pub fn runtime_info() -> RuntimeInfo {
    let cuda = load_cuda();
    RuntimeInfo {
        version: env!("CARGO_PKG_VERSION"),
        libtorch_version: option_env!("TI_LIBTORCH_VERSION").unwrap_or("unknown"),
        libtorch_path: loaded_library("libtorch_cpu.so"),
        cuda_available: cuda,
        cuda_devices: if cuda { tch::Cuda::device_count() } else { 0 },
        cudnn_available: cuda && tch::Cuda::cudnn_is_available(),
        mps_available: tch::utils::has_mps(),
        threads: tch::get_num_threads(),
    }
}

/// Path of a shared library mapped into this process.
pub fn loaded_library(name: &str) -> Option<String> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    maps.lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|p| p.rsplit('/').next() == Some(name))
        .map(String::from)
}

/// Makes CUDA usable if the running libtorch has it.
///
/// A binary linked against the CPU-only libtorch has no `libtorch_cuda.so` dependency. When it
/// runs against a full libtorch (LD_LIBRARY_PATH pointing at a CUDA build's `torch/lib`),
/// loading `libtorch_cuda.so` from the same folder registers the CUDA backend, as linking it
/// would. Returns whether CUDA is available afterwards.
pub fn load_cuda() -> bool {
    if tch::Cuda::is_available() {
        return true;
    }
    let Some(cpu) = loaded_library("libtorch_cpu.so") else { return false };
    let Some(dir) = std::path::Path::new(&cpu).parent() else { return false };
    let cuda = dir.join("libtorch_cuda.so");
    if !cuda.exists() {
        return false;
    }
    let Ok(c) = std::ffi::CString::new(cuda.as_os_str().as_encoded_bytes()) else { return false };
    // SAFETY: dlopen of a library from the same libtorch build that is already loaded; it
    // only registers CUDA kernels and hooks through static initialisers.
    let handle = unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
    if handle.is_null() {
        tracing::warn!("could not load {}; CUDA stays off", cuda.display());
        return false;
    }
    tch::Cuda::is_available()
}

/// Parses `--device`: `cpu`, `cuda`, `cuda:N` or `mps`; a GPU that is not there is an error
/// that says why, not a silent fall-back to the CPU.
pub fn parse_device(s: &str) -> anyhow::Result<tch::Device> {
    use anyhow::bail;
    let s = s.trim().to_ascii_lowercase();
    match s.as_str() {
        "cpu" => Ok(tch::Device::Cpu),
        "mps" => {
            if !tch::utils::has_mps() {
                bail!("--device mps: this libtorch has no MPS support");
            }
            Ok(tch::Device::Mps)
        }
        _ => {
            let index = match s.strip_prefix("cuda") {
                Some("") => 0,
                Some(rest) => match rest.strip_prefix(':').and_then(|n| n.parse::<usize>().ok()) {
                    Some(n) => n,
                    None => bail!("--device {s}: expected cpu, cuda, cuda:N or mps"),
                },
                None => bail!("--device {s}: expected cpu, cuda, cuda:N or mps"),
            };
            if !load_cuda() {
                if let Some(cuda) = loaded_library("libtorch_cuda.so") {
                    bail!("--device {s}: this libtorch has CUDA ({cuda}) but finds no CUDA device or driver");
                }
                bail!(
                    "--device {s}: CUDA is not available with this libtorch ({}); build against a CUDA libtorch \
                     (TI_LIBTORCH_FLAVOR=full scripts/setup-libtorch.sh, or LIBTORCH_USE_PYTORCH=1) or run with \
                     LD_LIBRARY_PATH pointing at one",
                    loaded_library("libtorch_cpu.so").unwrap_or_else(|| "unknown path".into())
                );
            }
            let count = tch::Cuda::device_count() as usize;
            if index >= count {
                bail!("--device {s}: only {count} CUDA device(s)");
            }
            Ok(tch::Device::Cuda(index))
        }
    }
}

/// Parses a precision name as the Python script's flags spell them (`no`/`fp32`, `fp16`, `bf16`).
pub fn parse_kind(s: &str) -> anyhow::Result<tch::Kind> {
    Ok(match s.trim().to_ascii_lowercase().as_str() {
        "no" | "fp32" | "float32" | "f32" => tch::Kind::Float,
        "fp16" | "float16" | "f16" | "half" => tch::Kind::Half,
        "bf16" | "bfloat16" => tch::Kind::BFloat16,
        other => anyhow::bail!("unknown precision {other:?}: expected fp32 (no), fp16 or bf16"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_and_precisions_parse_with_clear_errors() {
        assert_eq!(parse_device("cpu").unwrap(), tch::Device::Cpu);
        assert!(parse_device("gpu").unwrap_err().to_string().contains("expected cpu, cuda"));
        if !tch::Cuda::is_available() {
            assert!(parse_device("cuda:0").unwrap_err().to_string().contains("CUDA is not available"));
        }
        assert_eq!(parse_kind("bf16").unwrap(), tch::Kind::BFloat16);
        assert_eq!(parse_kind("no").unwrap(), tch::Kind::Float);
        assert!(parse_kind("int8").is_err());
    }
}
