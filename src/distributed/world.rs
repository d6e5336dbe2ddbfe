//! Where this process sits among the ranks, read from the environment the launchers set:
//! torchrun (`RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `LOCAL_WORLD_SIZE`, `MASTER_ADDR`,
//! `MASTER_PORT`, and `TORCHELASTIC_*` for its agent store), SLURM's srun (`SLURM_PROCID`,
//! `SLURM_NTASKS`, `SLURM_LOCALID`, with the master given by hand), or the same variables set
//! by hand or by [`super::spawn_local_ranks`]. None of them set: one process.
use anyhow::{bail, Context, Result};
use std::fmt;

/// Which launcher the environment shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Launcher {
    /// No rank variables: one process.
    Single,
    /// `RANK`/`WORLD_SIZE` with torchrun's `TORCHELASTIC_*` variables.
    Torchrun,
    /// `RANK`/`WORLD_SIZE` set by hand, by a scheduler or by `--num_processes`.
    Env,
    /// srun's `SLURM_PROCID`/`SLURM_NTASKS` (no `RANK` set).
    Slurm,
}

impl fmt::Display for Launcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Launcher::Single => "one process",
            Launcher::Torchrun => "torchrun",
            Launcher::Env => "RANK/WORLD_SIZE",
            Launcher::Slurm => "SLURM",
        })
    }
}

/// The rendezvous point: the host and port of the c10d TCPStore.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Master {
    pub addr: String,
    pub port: u16,
}

impl fmt::Display for Master {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.addr.contains(':') {
            write!(f, "[{}]:{}", self.addr, self.port)
        } else {
            write!(f, "{}:{}", self.addr, self.port)
        }
    }
}

/// This process's place among the ranks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct World {
    /// 0..world_size; rank 0 writes the files.
    pub rank: usize,
    pub world_size: usize,
    /// The rank on this machine: the CUDA device index a rank uses.
    pub local_rank: usize,
    /// Ranks on this machine.
    pub local_world_size: usize,
    pub launcher: Launcher,
    /// Where the store is served; None for one process.
    pub master: Option<Master>,
    /// Under torchrun's agent store (`TORCHELASTIC_USE_AGENT_STORE=True`) torchrun already
    /// serves the store and every rank is a client: the restart count, which prefixes every key
    /// as PyTorch does (`/worker/attempt_N`). None when rank 0 serves the store.
    pub agent_store_attempt: Option<u64>,
}

impl World {
    /// One process, no store.
    pub fn single() -> World {
        World { rank: 0, world_size: 1, local_rank: 0, local_world_size: 1, launcher: Launcher::Single, master: None, agent_store_attempt: None }
    }

    /// Reads the process's environment (see the module's doc).
    pub fn from_env() -> Result<World> {
        World::from_lookup(|key| std::env::var(key).ok())
    }

    /// As [`World::from_env`], with the variables from `var` (unit tests, and callers that
    /// hold an environment of their own).
    pub fn from_lookup(var: impl Fn(&str) -> Option<String>) -> Result<World> {
        let var = |key: &str| var(key).map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
        let any_env = ["RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"].iter().any(|k| var(k).is_some());
        let world = if any_env {
            let rank = number(&var, "RANK", "this process's rank (0..WORLD_SIZE)")?;
            let world_size = number(&var, "WORLD_SIZE", "the number of ranks")?;
            let local_rank = optional_number(&var, "LOCAL_RANK")?.unwrap_or(rank);
            let local_world_size = optional_number(&var, "LOCAL_WORLD_SIZE")?.unwrap_or(world_size);
            let torchrun = ["TORCHELASTIC_RUN_ID", "TORCHELASTIC_RESTART_COUNT", "TORCHELASTIC_USE_AGENT_STORE"].iter().any(|k| var(k).is_some());
            let agent_store_attempt = match var("TORCHELASTIC_USE_AGENT_STORE").as_deref() {
                // torchrun writes Python's str(True); PyTorch compares with exactly that.
                Some("True") => Some(optional_u64(&var, "TORCHELASTIC_RESTART_COUNT")?.unwrap_or(0)),
                _ => None,
            };
            let launcher = if torchrun { Launcher::Torchrun } else { Launcher::Env };
            World { rank, world_size, local_rank, local_world_size, launcher, master: None, agent_store_attempt }
        } else if var("SLURM_PROCID").is_some() {
            // srun sets SLURM_PROCID for each task; an allocation's shell (salloc, an sbatch
            // script outside srun) has SLURM_NTASKS without it and stays one process.
            let world_size = number(&var, "SLURM_NTASKS", "the number of tasks srun started")?;
            if world_size == 1 {
                return Ok(World::single());
            }
            let rank = number(&var, "SLURM_PROCID", "this task's rank")?;
            let local_rank = optional_number(&var, "SLURM_LOCALID")?.unwrap_or(0);
            // "2(x3),1": the first node's count; SLURM_NTASKS_PER_NODE when given as one number.
            let per_node = var("SLURM_NTASKS_PER_NODE")
                .and_then(|v| v.parse::<usize>().ok())
                .or_else(|| var("SLURM_TASKS_PER_NODE").and_then(|v| v.split(['(', ',']).next().and_then(|n| n.parse::<usize>().ok())));
            let local_world_size = per_node.unwrap_or(world_size).max(local_rank + 1);
            World { rank, world_size, local_rank, local_world_size, launcher: Launcher::Slurm, master: None, agent_store_attempt: None }
        } else {
            return Ok(World::single());
        };
        world.validate()?;
        if world.world_size == 1 {
            return Ok(World { launcher: world.launcher, ..World::single() });
        }
        let master = master(&var, world.launcher, world.world_size)?;
        Ok(World { master: Some(master), ..world })
    }

    fn validate(&self) -> Result<()> {
        let names = match self.launcher {
            Launcher::Slurm => ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID", "the node's task count"),
            _ => ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"),
        };
        if self.world_size == 0 {
            bail!("{}=0: there must be at least one rank", names.1);
        }
        if self.rank >= self.world_size {
            bail!("{}={} is not below {}={}: ranks run from 0 to {}", names.0, self.rank, names.1, self.world_size, self.world_size - 1);
        }
        if self.local_world_size == 0 {
            bail!("{}=0: there must be at least one rank on this machine", names.3);
        }
        if self.local_rank >= self.local_world_size {
            bail!("{}={} is not below {}={}", names.2, self.local_rank, names.3, self.local_world_size);
        }
        if self.local_world_size > self.world_size {
            bail!("{}={} is more than {}={}", names.3, self.local_world_size, names.1, self.world_size);
        }
        Ok(())
    }

    /// More than one rank.
    pub fn is_distributed(&self) -> bool {
        self.world_size > 1
    }

    /// Rank 0, the one that writes files and logs.
    pub fn is_main(&self) -> bool {
        self.rank == 0
    }

    /// Whether this rank serves the store (rank 0, unless torchrun's agent does).
    pub fn serves_store(&self) -> bool {
        self.rank == 0 && self.agent_store_attempt.is_none()
    }
}

impl fmt::Display for World {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "rank {} of {} (local {} of {}, {})", self.rank, self.world_size, self.local_rank, self.local_world_size, self.launcher)
    }
}

fn number(var: &impl Fn(&str) -> Option<String>, key: &str, what: &str) -> Result<usize> {
    match optional_number(var, key)? {
        Some(n) => Ok(n),
        None => bail!("{key} is not set: it must hold {what} (a launch with several ranks sets it; see docs/distributed.md)"),
    }
}

fn optional_number(var: &impl Fn(&str) -> Option<String>, key: &str) -> Result<Option<usize>> {
    var(key).map(|v| v.parse::<usize>().with_context(|| format!("{key}={v:?} is not a non-negative whole number"))).transpose()
}

fn optional_u64(var: &impl Fn(&str) -> Option<String>, key: &str) -> Result<Option<u64>> {
    var(key).map(|v| v.parse::<u64>().with_context(|| format!("{key}={v:?} is not a non-negative whole number"))).transpose()
}

fn master(var: &impl Fn(&str) -> Option<String>, launcher: Launcher, world_size: usize) -> Result<Master> {
    let hint = match launcher {
        Launcher::Slurm => " (under SLURM: the first host of the job, e.g. `export MASTER_ADDR=$(scontrol show hostnames \"$SLURM_JOB_NODELIST\" | head -n1)`, and a free port; or set WORLD_SIZE=1 for one process)",
        _ => "",
    };
    let Some(addr) = var("MASTER_ADDR") else {
        bail!("MASTER_ADDR is not set: {world_size} ranks ({launcher}) need the host that serves the store (rank 0's){hint}");
    };
    let Some(port) = var("MASTER_PORT") else {
        bail!("MASTER_PORT is not set: {world_size} ranks ({launcher}) need the port of the store on {addr}{hint}");
    };
    let port = match port.parse::<u16>() {
        Ok(p) if p > 0 => p,
        _ => bail!("MASTER_PORT={port:?} is not a port number (1 to 65535)"),
    };
    Ok(Master { addr, port })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn world(vars: &[(&str, &str)]) -> Result<World> {
        let map: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        World::from_lookup(|k| map.get(k).cloned())
    }

    fn err(vars: &[(&str, &str)]) -> String {
        format!("{:#}", world(vars).unwrap_err())
    }

    const MASTER: [(&str, &str); 2] = [("MASTER_ADDR", "10.0.0.1"), ("MASTER_PORT", "29500")];

    #[test]
    fn no_variables_is_one_process() {
        assert_eq!(world(&[]).unwrap(), World::single());
        // Empty values count as unset, as in PyTorch's launchers.
        assert_eq!(world(&[("RANK", ""), ("MASTER_ADDR", "x")]).unwrap(), World::single());
    }

    #[test]
    fn torchrun_with_its_agent_store() {
        let w = world(&[
            ("RANK", "3"),
            ("WORLD_SIZE", "4"),
            ("LOCAL_RANK", "1"),
            ("LOCAL_WORLD_SIZE", "2"),
            ("GROUP_RANK", "1"),
            ("MASTER_ADDR", "node0"),
            ("MASTER_PORT", "29400"),
            ("TORCHELASTIC_USE_AGENT_STORE", "True"),
            ("TORCHELASTIC_RESTART_COUNT", "2"),
            ("TORCHELASTIC_RUN_ID", "none"),
        ])
        .unwrap();
        assert_eq!((w.rank, w.world_size, w.local_rank, w.local_world_size), (3, 4, 1, 2));
        assert_eq!(w.launcher, Launcher::Torchrun);
        assert_eq!(w.master, Some(Master { addr: "node0".into(), port: 29400 }));
        assert_eq!(w.agent_store_attempt, Some(2));
        assert!(!w.serves_store());
        // Rank 0 under the agent store is a client too.
        let w0 = world(&[("RANK", "0"), ("WORLD_SIZE", "2"), ("MASTER_ADDR", "a"), ("MASTER_PORT", "1"), ("TORCHELASTIC_USE_AGENT_STORE", "True")]).unwrap();
        assert_eq!(w0.agent_store_attempt, Some(0));
        assert!(!w0.serves_store());
        // torchrun without the agent store (its --no-use-agent-store, or an older one): rank 0 serves.
        let own = world(&[
            ("RANK", "0"),
            ("WORLD_SIZE", "2"),
            ("MASTER_ADDR", "a"),
            ("MASTER_PORT", "1"),
            ("TORCHELASTIC_USE_AGENT_STORE", "False"),
            ("TORCHELASTIC_RESTART_COUNT", "0"),
        ])
        .unwrap();
        assert_eq!(own.launcher, Launcher::Torchrun);
        assert_eq!(own.agent_store_attempt, None);
        assert!(own.serves_store());
    }

    #[test]
    fn by_hand() {
        let w = world(&[("RANK", "1"), ("WORLD_SIZE", "2"), ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", "29500")]).unwrap();
        assert_eq!((w.rank, w.world_size, w.local_rank, w.local_world_size), (1, 2, 1, 2), "one machine assumed without LOCAL_*");
        assert_eq!(w.launcher, Launcher::Env);
        assert_eq!(w.master.as_ref().unwrap().to_string(), "127.0.0.1:29500");
        assert!(!w.serves_store());
        assert!(world(&[("RANK", "0"), ("WORLD_SIZE", "2"), ("MASTER_ADDR", "h"), ("MASTER_PORT", "5")]).unwrap().serves_store());
        // One rank needs no master.
        let one = world(&[("RANK", "0"), ("WORLD_SIZE", "1")]).unwrap();
        assert!(!one.is_distributed());
        assert_eq!(one.master, None);
        assert_eq!(Master { addr: "::1".into(), port: 7 }.to_string(), "[::1]:7");
    }

    #[test]
    fn slurm() {
        let w = world(&[
            ("SLURM_PROCID", "5"),
            ("SLURM_NTASKS", "8"),
            ("SLURM_LOCALID", "1"),
            ("SLURM_TASKS_PER_NODE", "4(x2)"),
            ("MASTER_ADDR", "gpu01"),
            ("MASTER_PORT", "29500"),
        ])
        .unwrap();
        assert_eq!((w.rank, w.world_size, w.local_rank, w.local_world_size), (5, 8, 1, 4));
        assert_eq!(w.launcher, Launcher::Slurm);
        assert!(!w.serves_store());
        let per_node = world(&[
            ("SLURM_PROCID", "0"),
            ("SLURM_NTASKS", "4"),
            ("SLURM_LOCALID", "0"),
            ("SLURM_NTASKS_PER_NODE", "2"),
            ("MASTER_ADDR", "h"),
            ("MASTER_PORT", "9"),
        ])
        .unwrap();
        assert_eq!(per_node.local_world_size, 2);
        assert!(per_node.serves_store());
        // One task: one process, no master needed; an allocation's shell has no SLURM_PROCID.
        assert_eq!(world(&[("SLURM_PROCID", "0"), ("SLURM_NTASKS", "1")]).unwrap(), World::single());
        assert_eq!(world(&[("SLURM_NTASKS", "4"), ("SLURM_JOB_ID", "7")]).unwrap(), World::single());
        // RANK/WORLD_SIZE win over SLURM's (torchrun under srun).
        let env =
            world(&[("RANK", "1"), ("WORLD_SIZE", "2"), ("SLURM_PROCID", "0"), ("SLURM_NTASKS", "1"), ("MASTER_ADDR", "h"), ("MASTER_PORT", "9")]).unwrap();
        assert_eq!((env.rank, env.launcher), (1, Launcher::Env));
    }

    #[test]
    fn invalid_environments_are_refused_naming_the_variable() {
        let e = err(&[("RANK", "2"), ("WORLD_SIZE", "2"), MASTER[0], MASTER[1]]);
        assert!(e.contains("RANK=2 is not below WORLD_SIZE=2"), "{e}");
        let e = err(&[("RANK", "one"), ("WORLD_SIZE", "2"), MASTER[0], MASTER[1]]);
        assert!(e.contains("RANK=\"one\" is not a non-negative whole number"), "{e}");
        let e = err(&[("RANK", "-1"), ("WORLD_SIZE", "2"), MASTER[0], MASTER[1]]);
        assert!(e.contains("RANK=\"-1\""), "{e}");
        let e = err(&[("RANK", "0"), ("WORLD_SIZE", "2.5"), MASTER[0], MASTER[1]]);
        assert!(e.contains("WORLD_SIZE=\"2.5\""), "{e}");
        let e = err(&[("RANK", "0"), ("WORLD_SIZE", "0")]);
        assert!(e.contains("WORLD_SIZE=0"), "{e}");
        let e = err(&[("RANK", "0"), MASTER[0], MASTER[1]]);
        assert!(e.contains("WORLD_SIZE is not set"), "{e}");
        let e = err(&[("WORLD_SIZE", "2"), MASTER[0], MASTER[1]]);
        assert!(e.contains("RANK is not set"), "{e}");
        let e = err(&[("RANK", "0"), ("WORLD_SIZE", "2"), ("LOCAL_RANK", "2"), ("LOCAL_WORLD_SIZE", "2"), MASTER[0], MASTER[1]]);
        assert!(e.contains("LOCAL_RANK=2 is not below LOCAL_WORLD_SIZE=2"), "{e}");
        let e = err(&[("RANK", "0"), ("WORLD_SIZE", "2"), ("LOCAL_WORLD_SIZE", "3"), MASTER[0], MASTER[1]]);
        assert!(e.contains("LOCAL_WORLD_SIZE=3 is more than WORLD_SIZE=2"), "{e}");
        let e = err(&[("RANK", "0"), ("WORLD_SIZE", "2"), ("MASTER_PORT", "29500")]);
        assert!(e.contains("MASTER_ADDR is not set"), "{e}");
        let e = err(&[("RANK", "0"), ("WORLD_SIZE", "2"), ("MASTER_ADDR", "h")]);
        assert!(e.contains("MASTER_PORT is not set"), "{e}");
        for port in ["0", "65536", "http"] {
            let e = err(&[("RANK", "0"), ("WORLD_SIZE", "2"), ("MASTER_ADDR", "h"), ("MASTER_PORT", port)]);
            assert!(e.contains(&format!("MASTER_PORT=\"{port}\" is not a port number")), "{e}");
        }
        let e = err(&[
            ("RANK", "0"),
            ("WORLD_SIZE", "2"),
            ("MASTER_ADDR", "h"),
            ("MASTER_PORT", "1"),
            ("TORCHELASTIC_USE_AGENT_STORE", "True"),
            ("TORCHELASTIC_RESTART_COUNT", "x"),
        ]);
        assert!(e.contains("TORCHELASTIC_RESTART_COUNT=\"x\""), "{e}");
        // SLURM: the master is required, and the message says how to give it.
        let e = err(&[("SLURM_PROCID", "0"), ("SLURM_NTASKS", "4")]);
        assert!(e.contains("MASTER_ADDR is not set") && e.contains("SLURM") && e.contains("scontrol show hostnames"), "{e}");
        let e = err(&[("SLURM_PROCID", "4"), ("SLURM_NTASKS", "4"), MASTER[0], MASTER[1]]);
        assert!(e.contains("SLURM_PROCID=4 is not below SLURM_NTASKS=4"), "{e}");
        let e = err(&[("SLURM_PROCID", "0"), ("SLURM_NTASKS", "x")]);
        assert!(e.contains("SLURM_NTASKS=\"x\""), "{e}");
        let e = err(&[("SLURM_PROCID", "0")]);
        assert!(e.contains("SLURM_NTASKS is not set"), "{e}");
    }
}
