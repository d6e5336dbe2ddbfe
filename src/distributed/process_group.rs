//! The collectives data-parallel training needs, on c10d's ProcessGroupGloo: every wait is
//! bounded, and a failure names the rank that was lost.
use super::ffi::{RawPg, RawWork};
use super::heartbeat::Heartbeat;
use super::store::Store;
use super::timeouts::Timeouts;
use super::world::World;
use anyhow::{anyhow, bail, Context, Result};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::mem::ManuallyDrop;
use std::time::{Duration, Instant};
use tch::{Device, Tensor};

/// How long one wait on c10d lasts before the heartbeats are looked at again.
const SLICE: Duration = Duration::from_millis(200);

/// The ranks of one run. With one rank every collective is the identity and the store a map
/// in memory, so one code path serves both (and a build without c10d still runs one process).
pub struct ProcessGroup {
    world: World,
    inner: Inner,
    /// How many `check_same_config` calls were made: each uses keys of its own.
    config_checks: Cell<u64>,
}

enum Inner {
    Single(RefCell<HashMap<String, Vec<u8>>>),
    Gloo(Box<Gloo>),
}

struct Gloo {
    /// Dropped by hand: after a failure it is leaked rather than destroyed, since its
    /// destructor waits for work that may wait on a dead peer.
    pg: ManuallyDrop<RawPg>,
    /// Keys of this tool (`textual-inversion/`) and of users of `store_set`/`store_get`.
    store: Store,
    heartbeat: Heartbeat,
    timeouts: Timeouts,
    broken: Cell<Option<String>>,
}

impl Drop for Gloo {
    fn drop(&mut self) {
        if self.broken.get_mut().is_none() {
            // SAFETY: dropped exactly once, here.
            unsafe { ManuallyDrop::drop(&mut self.pg) }
        }
    }
}

impl ProcessGroup {
    /// Joins the other ranks of `world` (from [`World::from_env`]) with the timeouts from the
    /// environment ([`Timeouts::from_env`]).
    pub fn init(world: &World) -> Result<ProcessGroup> {
        ProcessGroup::init_with(world, Timeouts::from_env()?)
    }

    /// As [`ProcessGroup::init`], with explicit timeouts.
    pub fn init_with(world: &World, timeouts: Timeouts) -> Result<ProcessGroup> {
        if !world.is_distributed() {
            return Ok(ProcessGroup { world: world.clone(), inner: Inner::Single(RefCell::default()), config_checks: Cell::new(0) });
        }
        let base = Store::connect(world, &timeouts)?;
        let store = base.prefixed("textual-inversion/")?;
        let heartbeat = Heartbeat::start(&store.prefixed("heartbeat/")?, world.rank, world.world_size, timeouts.beat_interval())?;
        let interfaces = std::env::var("GLOO_SOCKET_IFNAME").unwrap_or_default();
        // All ranks on this machine (as --num_processes starts them): the loopback interface,
        // whatever the host name resolves to.
        let master = world.master.as_ref().map(|m| m.addr.as_str()).unwrap_or_default();
        let hostname = if is_loopback(master) { master } else { "" };
        let gloo_store = store.prefixed("gloo/")?;
        let pg = RawPg::create(gloo_store.raw(), world.rank, world.world_size, timeouts.collective, &interfaces, hostname).map_err(|cause| {
            anyhow!(
                "rank {} could not connect to the other ranks over Gloo within {} s: {cause} (set GLOO_SOCKET_IFNAME to the network interface the ranks reach each other on)",
                world.rank,
                timeouts.collective.as_secs_f64()
            )
        })?;
        tracing::debug!("c10d: {world} joined through {}", store.served_by());
        let gloo = Gloo { pg: ManuallyDrop::new(pg), store, heartbeat, timeouts, broken: Cell::new(None) };
        Ok(ProcessGroup { world: world.clone(), inner: Inner::Gloo(Box::new(gloo)), config_checks: Cell::new(0) })
    }

    pub fn world(&self) -> &World {
        &self.world
    }

    pub fn rank(&self) -> usize {
        self.world.rank
    }

    pub fn world_size(&self) -> usize {
        self.world.world_size
    }

    /// In place: the sum of every rank's `tensor` (same shape and dtype on every rank).
    pub fn all_reduce_sum(&self, tensor: &mut Tensor) -> Result<()> {
        let Inner::Gloo(g) = &self.inner else { return Ok(()) };
        on_host(tensor, |t| g.run("all_reduce", self.world.rank, || g.pg.all_reduce_sum(t)))
    }

    /// In place: the mean over the ranks, as DDP averages gradients: each rank's tensor is
    /// divided by the world size, then the results are summed (so the bits equal DDP's).
    pub fn all_reduce_mean(&self, tensor: &mut Tensor) -> Result<()> {
        let n = self.world.world_size;
        if n > 1 {
            let _same_tensor = tch::no_grad(|| tensor.f_div_scalar_(n as f64)).context("dividing by the world size")?;
        }
        self.all_reduce_sum(tensor)
    }

    /// In place: rank `root`'s `tensor` on every rank.
    pub fn broadcast(&self, tensor: &mut Tensor, root: usize) -> Result<()> {
        if root >= self.world.world_size {
            bail!("broadcast from rank {root}: there are only {} ranks", self.world.world_size);
        }
        let Inner::Gloo(g) = &self.inner else { return Ok(()) };
        on_host(tensor, |t| g.run("broadcast", self.world.rank, || g.pg.broadcast(t, root)))
    }

    /// Every rank's `tensor` (same shape and dtype on every rank), in rank order, on the
    /// device of `tensor`.
    pub fn all_gather(&self, tensor: &Tensor) -> Result<Vec<Tensor>> {
        let Inner::Gloo(g) = &self.inner else { return Ok(vec![tensor.f_detach_copy()?]) };
        let mut input = tensor.f_to_device(Device::Cpu)?.f_contiguous()?;
        let mut outputs = (0..self.world.world_size).map(|_| input.f_empty_like()).collect::<Result<Vec<_>, _>>()?;
        g.run("all_gather", self.world.rank, || g.pg.all_gather(&mut input, &mut outputs))?;
        outputs.into_iter().map(|t| t.f_to_device(tensor.device()).map_err(Into::into)).collect()
    }

    /// Returns when every rank has called it.
    pub fn barrier(&self) -> Result<()> {
        let Inner::Gloo(g) = &self.inner else { return Ok(()) };
        g.run("barrier", self.world.rank, || g.pg.barrier())
    }

    /// Writes a small value for the other ranks (under `user/` in the run's store).
    pub fn store_set(&self, key: &str, value: &[u8]) -> Result<()> {
        match &self.inner {
            Inner::Single(map) => {
                map.borrow_mut().insert(key.to_string(), value.to_vec());
                Ok(())
            }
            Inner::Gloo(g) => g.store.set(&format!("user/{key}"), value),
        }
    }

    /// The value a rank wrote with [`ProcessGroup::store_set`], waiting for it as a collective
    /// does (bounded, and stopped early when a rank is lost).
    pub fn store_get(&self, key: &str) -> Result<Vec<u8>> {
        match &self.inner {
            Inner::Single(map) => map.borrow().get(key).cloned().ok_or_else(|| anyhow!("no rank wrote {key:?} to the store")),
            Inner::Gloo(g) => {
                let key = format!("user/{key}");
                g.wait_for_keys(std::slice::from_ref(&key), "reading the store", self.world.rank)?;
                g.store.get(&key)
            }
        }
    }

    /// Refuses to go on unless every rank was started with the same configuration: each rank
    /// publishes `hash` (of its arguments, say) and compares with rank 0's. A mismatch is an
    /// error on every rank naming the ranks that differ.
    pub fn check_same_config(&self, hash: &str) -> Result<()> {
        let Inner::Gloo(g) = &self.inner else { return Ok(()) };
        let call = self.config_checks.get();
        self.config_checks.set(call + 1);
        let key = |r: usize| format!("config/{call}/{r}");
        g.store.set(&key(self.world.rank), hash.as_bytes())?;
        let keys: Vec<String> = (0..self.world.world_size).map(key).collect();
        g.wait_for_keys(&keys, "comparing the ranks' configurations", self.world.rank)?;
        let hashes = keys.iter().map(|k| g.store.get(k).map(|v| String::from_utf8_lossy(&v).into_owned())).collect::<Result<Vec<_>>>()?;
        let differing: Vec<usize> = (1..hashes.len()).filter(|&r| hashes[r] != hashes[0]).collect();
        if differing.is_empty() {
            return Ok(());
        }
        let list = differing.iter().map(|r| format!("rank {r} ({})", short(&hashes[*r]))).collect::<Vec<_>>().join(", ");
        bail!(
            "the ranks were started with different configurations: {list} differ from rank 0 ({}); start every rank with the same arguments (this is rank {})",
            short(&hashes[0]),
            self.world.rank
        )
    }
}

fn short(hash: &str) -> String {
    let s: String = hash.chars().take(16).collect();
    if s.len() < hash.len() {
        format!("{s}…")
    } else {
        s
    }
}

fn is_loopback(addr: &str) -> bool {
    addr == "localhost" || addr.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Gloo works on contiguous CPU tensors: others go through a host copy, written back after.
fn on_host(tensor: &mut Tensor, op: impl FnOnce(&mut Tensor) -> Result<()>) -> Result<()> {
    if tensor.device() == Device::Cpu && tensor.is_contiguous() {
        return op(tensor);
    }
    let mut host = tensor.f_to_device(Device::Cpu)?.f_contiguous()?;
    op(&mut host)?;
    tch::no_grad(|| tensor.f_copy_(&host)).context("copying the result back")?;
    Ok(())
}

impl Gloo {
    /// Starts a collective and waits for it (see [`Gloo::wait`]).
    fn run(&self, what: &str, rank: usize, start: impl FnOnce() -> Result<RawWork, String>) -> Result<()> {
        self.usable(what)?;
        let work = start().map_err(|cause| self.fail(what, rank, &cause))?;
        self.wait(work, what, rank)
    }

    fn usable(&self, what: &str) -> Result<()> {
        let broken = self.broken.take();
        self.broken.set(broken.clone());
        match broken {
            Some(why) => bail!("{what}: the process group failed earlier ({why})"),
            None => Ok(()),
        }
    }

    /// Waits in slices; between them a rank silent for the heartbeat timeout, or the
    /// collective timeout passing, ends the wait with an error.
    fn wait(&self, work: RawWork, what: &str, rank: usize) -> Result<()> {
        let start = Instant::now();
        loop {
            match work.wait(SLICE) {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                Err(cause) => return Err(self.fail(what, rank, &cause)),
            }
            self.check_progress(start, what, rank)?;
        }
    }

    /// Polls the store for `keys` with the same bounds as a collective.
    fn wait_for_keys(&self, keys: &[String], what: &str, rank: usize) -> Result<()> {
        self.usable(what)?;
        let start = Instant::now();
        let mut pause = Duration::from_millis(1);
        while !self.store.check(keys).map_err(|e| self.fail(what, rank, &format!("{e:#}")))? {
            self.check_progress(start, what, rank)?;
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(100));
        }
        Ok(())
    }

    fn check_progress(&self, start: Instant, what: &str, rank: usize) -> Result<()> {
        if let Some(lost) = self.lost(self.timeouts.heartbeat) {
            let message = format!("{what} on rank {rank} stopped: {lost}");
            self.broken.set(Some(message.clone()));
            bail!(message);
        }
        // Gloo's own timeout is the same: this only catches a wait it did not bound.
        if start.elapsed() > self.timeouts.collective + Duration::from_secs(5) {
            let message = format!(
                "{what} on rank {rank} did not finish within {} s (TI_DIST_TIMEOUT_S) though every rank's heartbeat goes on: a rank is stuck, or the ranks took different paths",
                self.timeouts.collective.as_secs_f64()
            );
            self.broken.set(Some(message.clone()));
            bail!(message);
        }
        Ok(())
    }

    /// A failed collective: names the rank whose heartbeat stopped, waiting a few beats for it.
    fn fail(&self, what: &str, rank: usize, cause: &str) -> anyhow::Error {
        let silence = self.timeouts.silence_after_failure();
        let deadline = Instant::now() + silence * 2 + Duration::from_secs(1);
        let lost = loop {
            if let Some(lost) = self.lost(silence) {
                break Some(lost);
            }
            if Instant::now() >= deadline {
                break None;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let message = match lost {
            Some(lost) => format!("{what} on rank {rank} failed: {lost} (c10d: {cause})"),
            None => format!("{what} on rank {rank} failed: {cause} (every rank's heartbeat goes on)"),
        };
        self.broken.set(Some(message.clone()));
        anyhow!(message)
    }

    /// "rank 1 was lost (no heartbeat for 3.2 s)", or the store's server, when one is silent
    /// at least `silence`.
    fn lost(&self, silence: Duration) -> Option<String> {
        let (quiet, error) = self.heartbeat.store_silence();
        if quiet >= silence {
            let why = error.map(|e| format!(": {e}")).unwrap_or_default();
            let who = if self.store.served_by().contains("rank 0") { "rank 0 was lost: " } else { "" };
            return Some(format!("{who}{} has not answered for {:.1} s{why}", self.store.served_by(), quiet.as_secs_f64()));
        }
        let silent = self.heartbeat.silent_ranks(silence);
        if silent.is_empty() {
            return None;
        }
        let names = silent.iter().map(|(r, d)| format!("rank {r} (no heartbeat for {:.1} s)", d.as_secs_f64())).collect::<Vec<_>>().join(", ");
        Some(format!("lost {names}"))
    }
}
