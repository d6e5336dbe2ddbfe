//! Which rank is gone. Gloo reports a dead peer as a closed socket (or, for a silent one, a
//! timeout) without naming its rank; so every rank bumps its own counter in the store about
//! every second from a thread of its own, and reads the others'. A rank whose counter stopped
//! is the one that was lost; a store that stopped answering means its server (rank 0, unless
//! torchrun serves it) was.
use super::store::Store;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

struct State {
    /// Each rank's counter and when it last moved.
    seen: Vec<(i64, Instant)>,
    /// When the store last answered a whole round, and its last error since.
    store_answered: Instant,
    store_error: Option<String>,
}

/// The beating thread and what it saw; the thread stops when this is dropped.
pub struct Heartbeat {
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    rank: usize,
}

fn key(rank: usize) -> String {
    format!("{rank}")
}

impl Heartbeat {
    /// Beats once on `store` (so the key exists before anyone waits on this rank), then from
    /// a thread on a connection of its own.
    pub fn start(store: &Store, rank: usize, world_size: usize, interval: Duration) -> anyhow::Result<Heartbeat> {
        store.add(&key(rank), 1)?;
        let connection = store.new_connection()?;
        let now = Instant::now();
        let state = Arc::new(Mutex::new(State { seen: vec![(0, now); world_size], store_answered: now, store_error: None }));
        let stop = Arc::new(AtomicBool::new(false));
        let (thread_state, thread_stop) = (state.clone(), stop.clone());
        std::thread::Builder::new()
            .name(format!("c10d-heartbeat-{rank}"))
            .spawn(move || beat(connection, rank, world_size, interval, &thread_state, &thread_stop))
            .map_err(|e| anyhow::anyhow!("cannot start the heartbeat thread: {e}"))?;
        Ok(Heartbeat { state, stop, rank })
    }

    /// The other ranks whose counter has not moved for at least `silence`, with how long.
    pub fn silent_ranks(&self, silence: Duration) -> Vec<(usize, Duration)> {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        state.seen.iter().enumerate().filter(|&(r, _)| r != self.rank).map(|(r, &(_, at))| (r, now - at)).filter(|&(_, quiet)| quiet >= silence).collect()
    }

    /// How long the store has not answered a whole round, and its last error.
    pub fn store_silence(&self) -> (Duration, Option<String>) {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        (state.store_answered.elapsed(), state.store_error.clone())
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        // Not joined: a thread blocked on a dead store must not block the caller.
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn beat(store: Store, rank: usize, world_size: usize, interval: Duration, state: &Mutex<State>, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        // c10d's own message: the caller says which store it is.
        let store = store.raw();
        let round = (|| -> Result<Vec<i64>, String> {
            store.add(&key(rank), 1)?;
            (0..world_size).map(|r| if r == rank { Ok(0) } else { store.add(&key(r), 0) }).collect()
        })();
        let now = Instant::now();
        {
            let mut state = state.lock().unwrap_or_else(|p| p.into_inner());
            match round {
                Ok(counters) => {
                    for (seen, counter) in state.seen.iter_mut().zip(counters) {
                        if seen.0 != counter {
                            *seen = (counter, now);
                        }
                    }
                    state.store_answered = now;
                    state.store_error = None;
                }
                Err(e) => state.store_error = Some(e),
            }
        }
        std::thread::sleep(interval);
    }
}
