//! `--num_processes N`: N ranks on this machine started from this very binary, as
//! `torchrun --standalone --nproc_per_node N` would start them, without Python.
use super::world::World;
use anyhow::{bail, Context, Result};
use std::ffi::{OsStr, OsString};
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

/// How long the other ranks get to exit after SIGTERM before SIGKILL.
const GRACE: Duration = Duration::from_secs(10);

/// Variables of an outer launcher that must not reach the ranks started here.
const OUTER_LAUNCHER_VARS: [&str; 6] =
    ["TORCHELASTIC_USE_AGENT_STORE", "TORCHELASTIC_RESTART_COUNT", "TORCHELASTIC_RUN_ID", "TORCHELASTIC_ERROR_FILE", "TORCHELASTIC_MAX_RESTARTS", "GROUP_RANK"];

/// Runs the current executable `n` times with `args` (give them without the flag that asked
/// for this, e.g. through [`without_flag`]) as ranks 0..n of one world: `RANK`, `WORLD_SIZE`,
/// `LOCAL_RANK`, `LOCAL_WORLD_SIZE`, `MASTER_ADDR=127.0.0.1` and a free `MASTER_PORT` set, and
/// `OMP_NUM_THREADS` (when unset) to this machine's cores divided among the ranks. Waits for
/// all; when one exits unsuccessfully the others are stopped (SIGTERM, then SIGKILL after 10 s)
/// as torchrun does, and the error names that rank and how it ended. A rank also gets SIGTERM
/// when this process dies.
pub fn spawn_local_ranks(n: usize, args: &[OsString]) -> Result<()> {
    if n == 0 {
        bail!("--num_processes 0: at least one process is needed");
    }
    let outer = World::from_env()?;
    if outer.is_distributed() {
        bail!("--num_processes {n} was given to {outer}: start the ranks with one launcher, not both");
    }
    let exe = std::env::current_exe().context("finding this program's own path to start the ranks")?;
    let port = free_port()?;
    let threads = match std::env::var_os("OMP_NUM_THREADS") {
        Some(_) => None,
        None => Some(std::thread::available_parallelism().map(|c| c.get()).unwrap_or(1).div_ceil(n).max(1)),
    };
    tracing::info!("starting {n} ranks of {} on 127.0.0.1:{port}", exe.display());
    let mut ranks: Vec<Rank> = Vec::with_capacity(n);
    for rank in 0..n {
        let mut cmd = Command::new(&exe);
        cmd.args(args);
        for var in OUTER_LAUNCHER_VARS {
            cmd.env_remove(var);
        }
        cmd.env("RANK", rank.to_string())
            .env("WORLD_SIZE", n.to_string())
            .env("LOCAL_RANK", rank.to_string())
            .env("LOCAL_WORLD_SIZE", n.to_string())
            .env("MASTER_ADDR", "127.0.0.1")
            .env("MASTER_PORT", port.to_string());
        if let Some(t) = threads {
            cmd.env("OMP_NUM_THREADS", t.to_string());
        }
        die_with_parent(&mut cmd);
        match cmd.spawn() {
            Ok(child) => ranks.push(Rank { rank, child, status: None }),
            Err(e) => {
                stop(&mut ranks);
                bail!("cannot start rank {rank} ({}): {e}", exe.display());
            }
        }
    }
    loop {
        let mut running = 0;
        for r in ranks.iter_mut().filter(|r| r.status.is_none()) {
            match r.child.try_wait() {
                Ok(Some(status)) => r.status = Some(status),
                Ok(None) => running += 1,
                Err(e) => {
                    let rank = r.rank;
                    stop(&mut ranks);
                    bail!("cannot wait for rank {rank}: {e}");
                }
            }
        }
        if let Some(failed) = ranks.iter().find(|r| r.status.is_some_and(|s| !s.success())) {
            let (rank, status) = (failed.rank, failed.status.expect("a finished rank"));
            let others = ranks.iter().filter(|r| r.status.is_none()).count();
            stop(&mut ranks);
            let stopped = match others {
                0 => String::new(),
                1 => "; stopped the other rank".to_string(),
                k => format!("; stopped the other {k} ranks"),
            };
            bail!("rank {rank} of {n} failed ({}){stopped}", describe(status));
        }
        if running == 0 {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

struct Rank {
    rank: usize,
    child: Child,
    status: Option<ExitStatus>,
}

/// SIGTERM to every rank still running, SIGKILL to those still there after [`GRACE`].
fn stop(ranks: &mut [Rank]) {
    for r in ranks.iter().filter(|r| r.status.is_none()) {
        if let Ok(pid) = libc::pid_t::try_from(r.child.id()) {
            // SAFETY: a plain signal to our own child, which we have not reaped yet.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
    }
    let deadline = Instant::now() + GRACE;
    loop {
        let mut running = 0;
        for r in ranks.iter_mut().filter(|r| r.status.is_none()) {
            match r.child.try_wait() {
                Ok(Some(status)) => r.status = Some(status),
                _ => running += 1,
            }
        }
        if running == 0 {
            return;
        }
        if Instant::now() >= deadline {
            for r in ranks.iter_mut().filter(|r| r.status.is_none()) {
                let _ = r.child.kill();
                r.status = r.child.wait().ok();
            }
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}{}", signal_name(signal)),
        _ => status.to_string(),
    }
}

fn signal_name(signal: i32) -> &'static str {
    match signal {
        libc::SIGKILL => " (SIGKILL)",
        libc::SIGTERM => " (SIGTERM)",
        libc::SIGINT => " (SIGINT)",
        libc::SIGSEGV => " (SIGSEGV)",
        libc::SIGABRT => " (SIGABRT)",
        libc::SIGBUS => " (SIGBUS)",
        _ => "",
    }
}

/// The child gets SIGTERM when this process ends, so no rank outlives its launcher.
fn die_with_parent(cmd: &mut Command) {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::process::CommandExt;
        // SAFETY: getpid before the fork; prctl and getppid are async-signal-safe.
        let parent = unsafe { libc::getpid() };
        unsafe {
            cmd.pre_exec(move || {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                if libc::getppid() != parent {
                    return Err(std::io::Error::other("the launcher exited before this rank started"));
                }
                Ok(())
            });
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = cmd;
}

/// A TCP port free on 127.0.0.1 now (the kernel's pick), for the store of local ranks.
pub fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0)).context("finding a free port on 127.0.0.1")?;
    Ok(listener.local_addr().context("reading the port picked on 127.0.0.1")?.port())
}

/// `args` without the flag `names` (each with its value: `--flag V` or `--flag=V`); what follows
/// a `--` is kept as is. For handing a command line to [`spawn_local_ranks`] without the
/// `--num_processes` that asked for it.
pub fn without_flag(args: &[OsString], names: &[&str]) -> Vec<OsString> {
    let mut out = Vec::with_capacity(args.len());
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        if arg == OsStr::new("--") {
            out.push(arg.clone());
            out.extend(iter.cloned());
            break;
        }
        let text = arg.to_string_lossy();
        if names.iter().any(|n| text == *n) {
            iter.next();
            continue;
        }
        if names.iter().any(|n| text.strip_prefix(n).is_some_and(|rest| rest.starts_with('='))) {
            continue;
        }
        out.push(arg.clone());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn the_flag_and_its_value_are_removed() {
        let names = ["--num_processes", "--num-processes"];
        assert_eq!(without_flag(&os(&["train", "--num_processes", "2", "--seed", "1"]), &names), os(&["train", "--seed", "1"]));
        assert_eq!(without_flag(&os(&["train", "--num-processes=4", "--x"]), &names), os(&["train", "--x"]));
        assert_eq!(
            without_flag(&os(&["train", "--num_processesX", "--", "--num_processes", "2"]), &names),
            os(&["train", "--num_processesX", "--", "--num_processes", "2"])
        );
        assert_eq!(without_flag(&os(&["train", "--num_processes"]), &names), os(&["train"]));
    }

    #[test]
    fn statuses_read_as_users_expect() {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(describe(ExitStatus::from_raw(3 << 8)), "exit status 3");
        assert_eq!(describe(ExitStatus::from_raw(9)), "killed by signal 9 (SIGKILL)");
        assert!(free_port().unwrap() > 0);
    }
}
