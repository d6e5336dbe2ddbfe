//! `textual-inversion info`
use crate::device::{cuda_version_name, runtime_info, CudaStatus};

#[derive(Debug, clap::Args)]
pub struct InfoArgs {
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: InfoArgs) -> anyhow::Result<()> {
    let info = runtime_info();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&info)?);
        return Ok(());
    }
    println!("textual-inversion {}", info.version);
    println!("libtorch          {} ({})", info.libtorch_version, info.libtorch_path.as_deref().unwrap_or("path unknown"));
    let version = |v: &Option<i32>| v.map(cuda_version_name).unwrap_or_else(|| "?".into());
    let driver = |v: &Option<i32>| match v {
        Some(0) | None => "no driver".to_string(),
        Some(d) => format!("driver supports {}", cuda_version_name(*d)),
    };
    let cuda = match &info.cuda {
        CudaStatus::NoCudaLibtorch => "no (this libtorch has no CUDA part)".to_string(),
        CudaStatus::NoDevice { library, runtime_version, driver_version, backend_registered } => format!(
            "no device: CUDA {} libtorch loaded ({library}{}), {}",
            version(runtime_version),
            if *backend_registered { "" } else { ", but its backend did not register" },
            driver(driver_version)
        ),
        CudaStatus::Devices { count, runtime_version, driver_version, .. } => {
            format!("yes, {count} device(s), CUDA {}, {}", version(runtime_version), driver(driver_version))
        }
    };
    println!("CUDA              {cuda}");
    println!("cuDNN             {}", if info.cudnn_available { "yes" } else { "no" });
    println!("MPS               {}", if info.mps_available { "yes" } else { "no" });
    println!("threads           {}", info.threads);
    println!("several processes {}", if info.distributed { "yes (c10d with Gloo)" } else { "no: built without gloo's headers (docs/distributed.md)" });
    Ok(())
}
