//! The c10d TCPStore the ranks meet through: served by rank 0 (or by torchrun's agent, every
//! rank a client), with keys under PrefixStores so that runs, restarts and users of the store
//! do not collide.
use super::ffi::RawStore;
use super::timeouts::Timeouts;
use super::world::{Master, World};
use anyhow::{anyhow, bail, Result};

/// A connection to the ranks' key-value store.
pub struct Store {
    raw: RawStore,
    /// For messages: where it is served and by whom.
    served_by: String,
}

impl Store {
    /// Rank 0 serves the store at `MASTER_PORT` (all interfaces) and waits until every rank has
    /// connected; the others connect to `MASTER_ADDR:MASTER_PORT`, retrying until
    /// `timeouts.collective`. Under torchrun's agent store every rank connects, and the keys go
    /// under `/worker/attempt_<restart count>` as PyTorch's do.
    pub fn connect(world: &World, timeouts: &Timeouts) -> Result<Store> {
        let Some(master) = &world.master else { bail!("{world} has no store: one process needs none") };
        let served_by = match world.agent_store_attempt {
            Some(_) => format!("torchrun's store at {master}"),
            None => format!("the store at {master} (served by rank 0)"),
        };
        let prefix = world.agent_store_attempt.map(|n| format!("/worker/attempt_{n}")).unwrap_or_default();
        let secs = timeouts.collective.as_secs_f64();
        let raw = RawStore::create(&master.addr, master.port, world.serves_store(), world.world_size, true, timeouts.collective, &prefix)
            .map_err(|cause| connect_error(world, master, secs, &cause))?;
        Ok(Store { raw, served_by })
    }

    /// The same store with every key under `prefix` (e.g. `"gloo/"`).
    pub fn prefixed(&self, prefix: &str) -> Result<Store> {
        let raw = self.raw.prefixed(prefix).map_err(|e| anyhow!("{}: {e}", self.served_by))?;
        Ok(Store { raw, served_by: self.served_by.clone() })
    }

    /// A second connection (same prefix), for another thread.
    pub fn new_connection(&self) -> Result<Store> {
        let raw = self.raw.new_connection().map_err(|e| anyhow!("connecting again to {}: {e}", self.served_by))?;
        Ok(Store { raw, served_by: self.served_by.clone() })
    }

    pub fn set(&self, key: &str, value: &[u8]) -> Result<()> {
        self.raw.set(key, value).map_err(|e| anyhow!("writing {key:?} to {}: {e}", self.served_by))
    }

    /// Blocks until `key` exists (up to the store's timeout, `TI_DIST_TIMEOUT_S`).
    pub fn get(&self, key: &str) -> Result<Vec<u8>> {
        self.raw.get(key).map_err(|e| anyhow!("reading {key:?} from {}: {e}", self.served_by))
    }

    /// Adds `delta` to the counter at `key` (0 when absent) and returns its new value.
    pub fn add(&self, key: &str, delta: i64) -> Result<i64> {
        self.raw.add(key, delta).map_err(|e| anyhow!("adding to {key:?} in {}: {e}", self.served_by))
    }

    /// Whether every key exists now (no waiting).
    pub fn check(&self, keys: &[String]) -> Result<bool> {
        self.raw.check(keys).map_err(|e| anyhow!("looking for {keys:?} in {}: {e}", self.served_by))
    }

    /// "the store at host:port (served by rank 0)" or "torchrun's store at host:port".
    pub fn served_by(&self) -> &str {
        &self.served_by
    }

    pub(super) fn raw(&self) -> &RawStore {
        &self.raw
    }
}

/// c10d's message with what to check, for the failures users meet: a port in use, a master
/// nobody serves, ranks that never came.
fn connect_error(world: &World, master: &Master, secs: f64, cause: &str) -> anyhow::Error {
    let lower = cause.to_ascii_lowercase();
    if cause == super::ffi::NO_C10D {
        return anyhow!("{cause}");
    }
    if world.serves_store() {
        if lower.contains("eaddrinuse") || lower.contains("address already in use") {
            return anyhow!(
                "rank 0 cannot serve the store on port {}: the port is already in use (another run, or another program, listens there); choose another MASTER_PORT (c10d: {cause})",
                master.port
            );
        }
        if lower.contains("waiting for clients") || lower.contains("timed out") || lower.contains("timeout") {
            return anyhow!(
                "rank 0 serves the store on port {} but not all {} ranks connected within {secs} s (TI_DIST_TIMEOUT_S): start every rank with the same MASTER_ADDR, MASTER_PORT and WORLD_SIZE (c10d: {cause})",
                master.port,
                world.world_size
            );
        }
        return anyhow!("rank 0 cannot serve the store on port {}: {cause}", master.port);
    }
    let who = if world.agent_store_attempt.is_some() { "torchrun's agent" } else { "rank 0" };
    anyhow!(
        "rank {} could not reach the store at {master} within {secs} s (TI_DIST_TIMEOUT_S): check MASTER_ADDR and MASTER_PORT, that {who} runs there, and that the port is open between the machines (c10d: {cause})",
        world.rank
    )
}
