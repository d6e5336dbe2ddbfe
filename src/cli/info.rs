//! `textual-inversion info`
use crate::device::runtime_info;

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
    println!("CUDA              {}", if info.cuda_available { format!("yes, {} device(s)", info.cuda_devices) } else { "no".into() });
    println!("cuDNN             {}", if info.cudnn_available { "yes" } else { "no" });
    println!("MPS               {}", if info.mps_available { "yes" } else { "no" });
    println!("threads           {}", info.threads);
    Ok(())
}
