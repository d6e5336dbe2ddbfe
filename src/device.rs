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
    pub cuda: CudaStatus,
    pub cuda_available: bool,
    pub cuda_devices: i64,
    pub cudnn_available: bool,
    pub mps_available: bool,
    pub threads: i32,
    /// Whether this build has c10d (several data-parallel processes; docs/distributed.md).
    pub distributed: bool,
}

/// Where CUDA stands, in the three cases a user has to tell apart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum CudaStatus {
    /// The libtorch running has no CUDA part (libtorch_cuda.so): the CPU subset.
    NoCudaLibtorch,
    /// A CUDA libtorch is loaded, but no device or driver answers.
    NoDevice {
        library: String,
        /// The CUDA runtime libtorch carries, as `cudaRuntimeGetVersion` (13000 = 13.0).
        runtime_version: Option<i32>,
        /// What the installed driver supports (`cudaDriverGetVersion`; 0: no driver).
        driver_version: Option<i32>,
        /// Whether libtorch's CUDA backend took (its CUDA hooks are the real ones, not the
        /// stand-in that fails every CUDA call): what [`init_cuda`] is for.
        backend_registered: bool,
    },
    Devices {
        count: i64,
        library: String,
        runtime_version: Option<i32>,
        driver_version: Option<i32>,
        backend_registered: bool,
    },
}

pub fn runtime_info() -> RuntimeInfo {
    let cuda = cuda_status();
    let available = matches!(cuda, CudaStatus::Devices { .. });
    RuntimeInfo {
        version: env!("CARGO_PKG_VERSION"),
        libtorch_version: option_env!("TI_LIBTORCH_VERSION").unwrap_or("unknown"),
        libtorch_path: loaded_library("libtorch_cpu.so"),
        cuda_devices: if let CudaStatus::Devices { count, .. } = cuda { count } else { 0 },
        cuda,
        cuda_available: available,
        cudnn_available: available && tch::Cuda::cudnn_is_available(),
        mps_available: tch::utils::has_mps(),
        threads: tch::get_num_threads(),
        distributed: crate::distributed::AVAILABLE,
    }
}

/// Path of a shared library mapped into this process.
pub fn loaded_library(name: &str) -> Option<String> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    maps.lines().filter_map(|l| l.split_whitespace().nth(5)).find(|p| p.rsplit('/').next() == Some(name)).map(String::from)
}

static CUDA_INIT: std::sync::Once = std::sync::Once::new();

/// Loads `libtorch_cuda.so` when the running libtorch has one that is not loaded yet. Call it
/// first thing in `main`, before anything asks libtorch about CUDA: libtorch fixes its CUDA
/// hooks on the first such question (`at::detail::getCUDAHooks`), so a library loaded after
/// that can never turn CUDA on. Idempotent.
///
/// A binary built against the CPU subset has no `libtorch_cuda.so` dependency; run against a
/// full libtorch (`LD_LIBRARY_PATH` at a CUDA build's `torch/lib`), loading the file from the
/// same folder registers the CUDA backend as linking it would.
pub fn init_cuda() {
    CUDA_INIT.call_once(|| {
        if loaded_library("libtorch_cuda.so").is_some() {
            return;
        }
        let Some(cpu) = loaded_library("libtorch_cpu.so") else { return };
        let Some(dir) = std::path::Path::new(&cpu).parent() else { return };
        let cuda = dir.join("libtorch_cuda.so");
        if !cuda.exists() {
            return;
        }
        let Ok(c) = std::ffi::CString::new(cuda.as_os_str().as_encoded_bytes()) else { return };
        // SAFETY: dlopen of a library from the same libtorch build that is already loaded; it
        // only registers CUDA kernels and hooks through static initialisers.
        let handle = unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
        if handle.is_null() {
            tracing::warn!("could not load {}; CUDA stays off", cuda.display());
        }
    });
}

/// A CUDA runtime query (`cudaRuntimeGetVersion`, `cudaDriverGetVersion`) from the libcudart
/// libtorch loaded (every route has one: libtorch_cpu links it); needs no GPU.
fn cudart_version(symbol: &str) -> Option<i32> {
    let name = std::ffi::CString::new(symbol).ok()?;
    // SAFETY: looks a C function up in the libraries already loaded; its signature is
    // `cudaError_t f(int*)` in every CUDA runtime.
    let f = unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) };
    if f.is_null() {
        return None;
    }
    let f: extern "C" fn(*mut i32) -> i32 = unsafe { std::mem::transmute(f) };
    let mut v = 0;
    (f(&mut v) == 0).then_some(v)
}

/// Which of the three CUDA cases this process is in (after [`init_cuda`]).
pub fn cuda_status() -> CudaStatus {
    init_cuda();
    let Some(library) = loaded_library("libtorch_cuda.so") else { return CudaStatus::NoCudaLibtorch };
    let (runtime_version, driver_version) = (cudart_version("cudaRuntimeGetVersion"), cudart_version("cudaDriverGetVersion"));
    // The stand-in hooks throw here; the real ones return the CUDA version libtorch was built
    // for, with or without a GPU.
    // SAFETY: a plain C call; the error it may leave is read and cleared at once.
    let built_for = unsafe { torch_sys::at_context_version_cudart() };
    let err = unsafe { torch_sys::get_and_reset_last_err() };
    let backend_registered = err.is_null() && built_for > 0;
    if !err.is_null() {
        // SAFETY: torch-sys hands over a malloc'ed message, which tch frees the same way.
        unsafe { libc::free(err.cast()) };
    }
    if tch::Cuda::is_available() {
        CudaStatus::Devices { count: tch::Cuda::device_count(), library, runtime_version, driver_version, backend_registered }
    } else {
        CudaStatus::NoDevice { library, runtime_version, driver_version, backend_registered }
    }
}

/// Whether CUDA can be used (after [`init_cuda`]).
pub fn load_cuda() -> bool {
    init_cuda();
    tch::Cuda::is_available()
}

/// `13000` → `13.0`.
pub fn cuda_version_name(v: i32) -> String {
    format!("{}.{}", v / 1000, (v % 1000) / 10)
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
                if let CudaStatus::NoDevice { library, runtime_version, driver_version, .. } = cuda_status() {
                    let runtime = runtime_version.map(cuda_version_name).unwrap_or_else(|| "?".into());
                    let driver = match (driver_version, runtime_version) {
                        (Some(0) | None, _) => "no NVIDIA driver found".to_string(),
                        (Some(d), Some(r)) if d < r => format!(
                            "the driver supports CUDA {} only (an older driver needs a torch 2.11 built for its CUDA: LIBTORCH_USE_PYTORCH=1 with e.g. the cu128 wheel)",
                            cuda_version_name(d)
                        ),
                        (Some(d), _) => format!("the driver supports CUDA {}, but no device is visible (CUDA_VISIBLE_DEVICES?)", cuda_version_name(d)),
                    };
                    bail!("--device {s}: this libtorch has CUDA {runtime} ({library}) but finds no CUDA device: {driver}");
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
        <Self as clap::ValueEnum>::from_str(s.trim(), true).map_err(|_| anyhow::anyhow!("unknown precision {s:?}: expected fp32 (no), fp16 or bf16"))
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
