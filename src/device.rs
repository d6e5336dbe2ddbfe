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

/// Parses a `--device` value: `cpu`, `cuda`, `cuda:N` or `mps`. Only the spelling is checked
/// here (a clap value parser); [`ensure_available`] then says whether the device is there.
pub fn parse_device(s: &str) -> anyhow::Result<tch::Device> {
    use anyhow::bail;
    let s = s.trim().to_ascii_lowercase();
    Ok(match s.as_str() {
        "cpu" => tch::Device::Cpu,
        "mps" => tch::Device::Mps,
        _ => match s.strip_prefix("cuda") {
            Some("") => tch::Device::Cuda(0),
            Some(rest) => match rest.strip_prefix(':').and_then(|n| n.parse::<usize>().ok()) {
                Some(n) => tch::Device::Cuda(n),
                None => bail!("--device {s}: expected cpu, cuda, cuda:N or mps"),
            },
            None => bail!("--device {s}: expected cpu, cuda, cuda:N or mps"),
        },
    })
}

/// The device's name as `--device` spells it.
pub fn device_name(d: tch::Device) -> String {
    match d {
        tch::Device::Cpu => "cpu".into(),
        tch::Device::Mps => "mps".into(),
        tch::Device::Cuda(n) => format!("cuda:{n}"),
        other => format!("{other:?}").to_ascii_lowercase(),
    }
}

/// A GPU that is not there is an error that says why, not a silent fall-back to the CPU.
pub fn ensure_available(d: tch::Device) -> anyhow::Result<()> {
    use anyhow::bail;
    let s = device_name(d);
    match d {
        tch::Device::Cpu => Ok(()),
        tch::Device::Mps if !tch::utils::has_mps() => bail!("--device mps: this libtorch has no MPS support"),
        tch::Device::Cuda(index) => {
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
            Ok(())
        }
        _ => Ok(()),
    }
}

/// The precision of the UNet and VAE: `--mixed_precision no|fp16|bf16` (train, the script's
/// spelling) and `--dtype fp32|fp16|bf16` (generate) are this one value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Precision {
    /// Full precision (the script's `no`).
    #[default]
    #[value(name = "fp32", alias = "no", alias = "float32", alias = "f32")]
    Fp32,
    #[value(name = "fp16", alias = "float16", alias = "f16", alias = "half")]
    Fp16,
    #[value(name = "bf16", alias = "bfloat16")]
    Bf16,
}

impl Precision {
    pub fn kind(self) -> tch::Kind {
        match self {
            Precision::Fp32 => tch::Kind::Float,
            Precision::Fp16 => tch::Kind::Half,
            Precision::Bf16 => tch::Kind::BFloat16,
        }
    }

    /// Parses a precision name as the script's flags and ours spell them.
    pub fn parse(s: &str) -> anyhow::Result<Self> {
        <Self as clap::ValueEnum>::from_str(s.trim(), true)
            .map_err(|_| anyhow::anyhow!("unknown precision {s:?}: expected fp32 (no), fp16 or bf16"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_and_precisions_parse_with_clear_errors() {
        assert_eq!(parse_device("cpu").unwrap(), tch::Device::Cpu);
        assert_eq!(parse_device("cuda:1").unwrap(), tch::Device::Cuda(1));
        assert!(parse_device("gpu").unwrap_err().to_string().contains("expected cpu, cuda"));
        if !tch::Cuda::is_available() {
            assert!(ensure_available(tch::Device::Cuda(0)).unwrap_err().to_string().contains("CUDA is not available"));
        }
        assert_eq!(Precision::parse("bf16").unwrap().kind(), tch::Kind::BFloat16);
        assert_eq!(Precision::parse("no").unwrap(), Precision::Fp32);
        assert!(Precision::parse("int8").is_err());
    }
}
