//! What a training update's reduce costs on c10d/Gloo: the placeholder rows this tool reduces
//! (`[n, 768]` floats, SD 1.x's width) against the whole embedding-matrix gradient DDP reduces
//! for the script (`[49408, 768]`, ~150 MB), each timed as the trainer runs it (divide by the
//! world size, SUM-allreduce, wait). Ranks on this machine, as `--num_processes` starts them.
//!
//! `cargo run --release --example bench_allreduce -- RANKS [REPEATS]` (scripts/bench/bench-distributed.sh
//! runs it beside the same measurement in PyTorch).
use anyhow::{Context, Result};
use std::time::Instant;
use tch::{Device, Kind, Tensor};
use textual_inversion::distributed::{spawn_local_ranks, ProcessGroup, World};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let ranks: usize = args.first().context("usage: bench_allreduce RANKS [REPEATS]")?.parse()?;
    let repeats: usize = args.get(1).map(|r| r.parse()).transpose()?.unwrap_or(20);
    let world = World::from_env()?;
    if !world.is_distributed() && ranks > 1 {
        let argv: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
        return spawn_local_ranks(ranks, &argv);
    }
    let group = ProcessGroup::init(&world)?;
    for (what, rows) in [("placeholder rows [1, 768]", 1i64), ("placeholder rows [8, 768]", 8), ("whole embedding [49408, 768]", 49408)] {
        let mut t = Tensor::ones([rows, 768], (Kind::Float, Device::Cpu));
        group.all_reduce_mean(&mut t)?;
        group.barrier()?;
        let start = Instant::now();
        for _ in 0..repeats {
            group.all_reduce_mean(&mut t)?;
        }
        let per = start.elapsed().as_secs_f64() / repeats as f64;
        if group.rank() == 0 {
            println!("{{\"ranks\": {}, \"tensor\": \"{what}\", \"bytes\": {}, \"ms_per_reduce\": {:.4}}}", group.world_size(), rows * 768 * 4, per * 1e3);
        }
    }
    group.barrier()
}
