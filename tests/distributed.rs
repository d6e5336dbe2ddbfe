//! c10d through `textual_inversion::distributed`, with real processes on 127.0.0.1: the
//! collectives' exact values, the store, the configuration check, a rank killed with SIGKILL,
//! a busy port, an unreachable master, and `spawn_local_ranks`.
//!
//! The ranks are this test binary run again on one of the `rank_*` tests below (ignored in a
//! normal run), with the rank variables set by the test (as by hand) or by
//! `spawn_local_ranks`. Built without gloo's headers the tests check that the error says so,
//! and skip (or fail under `TI_REQUIRE_C10D=1`, which scripts/test.sh sets where the headers
//! are installed).
mod common;
use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tch::{Kind, Tensor};
use textual_inversion::distributed::{self, ProcessGroup, World};

// ---------------------------------------------------------------------------------------------
// The rank side.

/// Runs `body` as a rank when this process was started as one (RANK set), and exits with its
/// outcome: 0 and `RANK-OK` on stdout, or 1 and `RANK-ERROR <message>` on stderr.
fn as_rank(body: impl FnOnce(&World) -> anyhow::Result<()>) {
    if std::env::var_os("RANK").is_none() {
        return;
    }
    let world = match World::from_env() {
        Ok(w) => w,
        Err(e) => {
            eprintln!("RANK-ERROR {e:#}");
            std::process::exit(1)
        }
    };
    match body(&world) {
        Ok(()) => {
            println!("RANK-OK rank {}", world.rank);
            std::process::exit(0)
        }
        Err(e) => {
            eprintln!("RANK-ERROR rank {}: {e:#}", world.rank);
            std::process::exit(1)
        }
    }
}

fn values(t: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(t.to_kind(Kind::Double).flatten(0, -1)).unwrap()
}

fn expect(what: &str, got: &Tensor, want: &[f64]) -> anyhow::Result<()> {
    let got = values(got);
    anyhow::ensure!(got == want, "{what}: got {got:?}, expected exactly {want:?}");
    Ok(())
}

#[test]
#[ignore = "a rank process: started by the other tests"]
fn rank_collectives() {
    as_rank(|world| {
        let pg = ProcessGroup::init(world)?;
        let (r, n) = (world.rank as f64, world.world_size as f64);
        pg.check_same_config("the same arguments")?;

        // SUM: rank r holds (r+1) * [1, 2, 3, 0.5].
        let mut t = Tensor::from_slice(&[1.0f32, 2.0, 3.0, 0.5]) * (r + 1.0);
        pg.all_reduce_sum(&mut t)?;
        let s = n * (n + 1.0) / 2.0;
        expect("all_reduce_sum", &t, &[s, 2.0 * s, 3.0 * s, 0.5 * s])?;

        // MEAN, DDP's order (divide, then sum): rank r holds n/2 * [2r + 1, 4, r] (so every
        // quotient and sum is exact at 2 and 3 ranks) and f32::MAX, whose mean only the
        // divide-first order keeps finite.
        let half_n = n / 2.0;
        let mut t = Tensor::from_slice(&[half_n * (2.0 * r + 1.0), half_n * 4.0, half_n * r, f32::MAX as f64]).to_kind(Kind::Float);
        pg.all_reduce_mean(&mut t)?;
        let k_sum = n * (n - 1.0) / 2.0;
        expect("all_reduce_mean", &t, &[(2.0 * k_sum + n) / 2.0, 2.0 * n, k_sum / 2.0, f32::MAX as f64])?;

        // A non-contiguous view is reduced through a copy and written back into the view.
        let base = Tensor::arange(6, (Kind::Double, tch::Device::Cpu)).view([2, 3]) + r;
        let mut view = base.transpose(0, 1);
        pg.all_reduce_sum(&mut view)?;
        let want: Vec<f64> = [0.0, 3.0, 1.0, 4.0, 2.0, 5.0].iter().map(|v| v * n + s - n).collect();
        expect("all_reduce_sum of a transposed view", &view, &want)?;

        // BROADCAST from the last rank, int64.
        let root = world.world_size - 1;
        let mut t = Tensor::from_slice(&[world.rank as i64 * 7, -1, 1 << 40]);
        pg.broadcast(&mut t, root)?;
        expect("broadcast", &t, &[root as f64 * 7.0, -1.0, (1u64 << 40) as f64])?;
        anyhow::ensure!(pg.broadcast(&mut t, world.world_size).is_err(), "a broadcast from a rank that does not exist was accepted");

        // ALL_GATHER of [2, 2] tensors, in rank order.
        let t = Tensor::from_slice(&[r * 10.0, r * 10.0 + 1.0, -r, 0.25]).to_kind(Kind::Float).view([2, 2]);
        let all = pg.all_gather(&t)?;
        anyhow::ensure!(all.len() == world.world_size, "all_gather gave {} tensors", all.len());
        for (k, g) in all.iter().enumerate() {
            anyhow::ensure!(g.size() == [2, 2], "all_gather[{k}] has shape {:?}", g.size());
            let k = k as f64;
            expect(&format!("all_gather[{k}]"), g, &[k * 10.0, k * 10.0 + 1.0, -k, 0.25])?;
        }

        // The store: rank 0 writes, everyone reads (waiting for it).
        if world.rank == 0 {
            pg.store_set("greeting", b"hello from rank 0")?;
        }
        let got = pg.store_get("greeting")?;
        anyhow::ensure!(got == b"hello from rank 0", "store_get gave {:?}", String::from_utf8_lossy(&got));
        pg.store_set(&format!("from/{}", world.rank), format!("{}", world.rank * 3).as_bytes())?;
        for k in 0..world.world_size {
            let v = pg.store_get(&format!("from/{k}"))?;
            anyhow::ensure!(v == format!("{}", k * 3).as_bytes(), "from/{k} = {v:?}");
        }

        pg.barrier()?;
        // A second configuration check uses keys of its own.
        pg.check_same_config("checked again")?;
        pg.barrier()
    });
}

#[test]
#[ignore = "a rank process: started by the other tests"]
fn rank_config() {
    as_rank(|world| {
        let pg = ProcessGroup::init(world)?;
        let hash = std::env::var("TI_TEST_CONFIG_HASH").unwrap_or_default();
        pg.check_same_config(&hash)?;
        pg.barrier()
    });
}

/// Reduces in a loop until the test kills a rank; READY on stdout once all have joined.
#[test]
#[ignore = "a rank process: started by the other tests"]
fn rank_loop() {
    as_rank(|world| {
        let pg = ProcessGroup::init(world)?;
        pg.barrier()?;
        println!("READY rank {}", world.rank);
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(120) {
            let mut t = Tensor::from_slice(&[1.0f32; 16]);
            pg.all_reduce_sum(&mut t)?;
            std::thread::sleep(Duration::from_millis(20));
        }
        anyhow::bail!("the loop ran 120 s: nobody killed a rank")
    });
}

/// Rank `TI_TEST_FAIL_RANK` exits with status 3 after joining; the others wait (not in a
/// collective) until the launcher stops them.
#[test]
#[ignore = "a rank process: started by the other tests"]
fn rank_fail() {
    as_rank(|world| {
        let pg = ProcessGroup::init(world)?;
        pg.barrier()?;
        let fail: usize = std::env::var("TI_TEST_FAIL_RANK").ok().and_then(|v| v.parse().ok()).unwrap_or(1);
        if world.rank == fail {
            eprintln!("rank {fail} exits with status 3 on purpose");
            std::process::exit(3);
        }
        std::thread::sleep(Duration::from_secs(90));
        anyhow::bail!("rank {} was not stopped within 90 s", world.rank)
    });
}

/// Times the all-reduce of placeholder rows against the whole SD 1.5 embedding matrix (what DDP
/// reduces). By hand: `torchrun --standalone --nproc_per_node 2 --no-python <this test binary>
/// rank_bench --exact --ignored --nocapture` (docs/distributed.md has the numbers).
#[test]
#[ignore = "a rank process: a measurement started by hand"]
fn rank_bench() {
    as_rank(|world| {
        let pg = ProcessGroup::init(world)?;
        for (rows, reps) in [(1i64, 200), (3, 200), (49408, 10)] {
            let mut t = Tensor::ones([rows, 768], (Kind::Float, tch::Device::Cpu));
            pg.all_reduce_mean(&mut t)?;
            pg.barrier()?;
            let start = Instant::now();
            for _ in 0..reps {
                pg.all_reduce_mean(&mut t)?;
            }
            let each = start.elapsed().as_secs_f64() / reps as f64;
            if world.rank == 0 {
                println!("BENCH {} ranks: all_reduce_mean of [{rows}, 768] f32 ({} KB): {:.3} ms", world.world_size, rows * 768 * 4 / 1024, each * 1e3);
            }
        }
        Ok(())
    });
}

// ---------------------------------------------------------------------------------------------
// The launching side.

/// Where this build stands: false (after checking the error message) when it has no c10d.
fn c10d_here(test: &str) -> bool {
    if distributed::AVAILABLE {
        return true;
    }
    let world =
        World { rank: 0, world_size: 2, local_rank: 0, local_world_size: 2, launcher: distributed::Launcher::Env, master: None, agent_store_attempt: None };
    let world = World { master: Some(distributed::Master { addr: "127.0.0.1".into(), port: 1 }), ..world };
    let e = ProcessGroup::init(&world).err().expect("no c10d, yet a process group").to_string();
    assert!(e.contains("this build has no c10d") && e.contains("libgloo-dev"), "{e}");
    assert!(std::env::var_os("TI_REQUIRE_C10D").is_none(), "{test}: TI_REQUIRE_C10D is set but this build has no c10d ({e})");
    common::skip(test, "this build has no c10d (no gloo headers when it was built)");
    false
}

fn rank_args(test: &str) -> Vec<OsString> {
    [test, "--exact", "--ignored", "--nocapture", "--test-threads=1", "-q"].iter().map(OsString::from).collect()
}

/// Starts rank `rank` of `n` running `test`, by hand (the variables a user would set).
fn start_rank(test: &str, rank: usize, n: usize, port: u16, env: &[(&str, String)]) -> Child {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(rank_args(test))
        .env("RANK", rank.to_string())
        .env("WORLD_SIZE", n.to_string())
        .env("LOCAL_RANK", rank.to_string())
        .env("LOCAL_WORLD_SIZE", n.to_string())
        .env("MASTER_ADDR", "127.0.0.1")
        .env("MASTER_PORT", port.to_string())
        .env("TI_DIST_TIMEOUT_S", "60")
        .env_remove("TORCHELASTIC_USE_AGENT_STORE")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn().unwrap()
}

struct Finished {
    success: bool,
    stdout: String,
    stderr: String,
    elapsed: Duration,
}

/// Waits for `child` at most `limit` (killing it then, and failing the test).
fn finish(mut child: Child, limit: Duration, what: &str) -> Finished {
    let start = Instant::now();
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out_thread = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_thread = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            let (o, e) = (out_thread.join().unwrap(), err_thread.join().unwrap());
            panic!("{what} still ran after {limit:?}: a hang\nstdout:\n{o}\nstderr:\n{e}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let elapsed = start.elapsed();
    Finished { success: status.success(), stdout: out_thread.join().unwrap(), stderr: err_thread.join().unwrap(), elapsed }
}

fn rank_error(f: &Finished) -> String {
    f.stderr.lines().filter(|l| l.contains("RANK-ERROR")).collect::<Vec<_>>().join("\n")
}

#[test]
fn two_ranks_give_exact_collectives_and_share_the_store() {
    if !c10d_here("two_ranks_give_exact_collectives_and_share_the_store") {
        return;
    }
    let port = distributed::free_port().unwrap();
    let ranks: Vec<Child> = (0..2).map(|r| start_rank("rank_collectives", r, 2, port, &[])).collect();
    for (r, child) in ranks.into_iter().enumerate() {
        let f = finish(child, Duration::from_secs(120), &format!("rank {r}"));
        assert!(f.success && f.stdout.contains(&format!("RANK-OK rank {r}")), "rank {r}:\n{}\n{}", f.stdout, f.stderr);
    }
}

#[test]
fn ranks_started_with_different_configurations_are_refused_naming_the_rank() {
    if !c10d_here("ranks_started_with_different_configurations_are_refused_naming_the_rank") {
        return;
    }
    let port = distributed::free_port().unwrap();
    let ranks: Vec<Child> =
        (0..2).map(|r| start_rank("rank_config", r, 2, port, &[("TI_TEST_CONFIG_HASH", format!("hash-of-args-{}", r.min(1) * 7))])).collect();
    for (r, child) in ranks.into_iter().enumerate() {
        let f = finish(child, Duration::from_secs(120), &format!("rank {r}"));
        assert!(!f.success, "rank {r} accepted a different configuration:\n{}", f.stdout);
        let e = rank_error(&f);
        assert!(
            e.contains("different configurations") && e.contains("rank 1 (hash-of-args-7) differ from rank 0 (hash-of-args-0)"),
            "rank {r}: {e}\n{}",
            f.stderr
        );
    }
    // The same hashes pass.
    let port = distributed::free_port().unwrap();
    let ranks: Vec<Child> = (0..2).map(|r| start_rank("rank_config", r, 2, port, &[("TI_TEST_CONFIG_HASH", "same".to_string())])).collect();
    for (r, child) in ranks.into_iter().enumerate() {
        let f = finish(child, Duration::from_secs(120), &format!("rank {r}"));
        assert!(f.success, "rank {r}: {}", f.stderr);
    }
}

/// Starts two looping ranks, waits until both reduce, SIGKILLs `victim` and returns what the
/// survivor did.
fn kill_one_of_two(victim: usize) -> Finished {
    let port = distributed::free_port().unwrap();
    // A short heartbeat timeout; the collective timeout stays long, so only the heartbeat (or
    // the closed socket) can end the survivor's wait within the test's bound.
    let env = [("TI_DIST_HEARTBEAT_TIMEOUT_S", "5".to_string()), ("TI_DIST_TIMEOUT_S", "600".to_string())];
    let mut ranks: Vec<Child> = (0..2).map(|r| start_rank("rank_loop", r, 2, port, &env)).collect();
    // Wait for both READY lines (read on the side, keeping what was read).
    let mut early = Vec::new();
    for (r, child) in ranks.iter_mut().enumerate() {
        let mut reader = BufReader::new(child.stdout.take().unwrap());
        let mut seen = String::new();
        let start = Instant::now();
        loop {
            let mut line = String::new();
            assert!(reader.read_line(&mut line).unwrap() > 0, "rank {r} ended before it was ready: {seen}");
            seen.push_str(&line);
            if line.contains("READY") {
                break;
            }
            assert!(start.elapsed() < Duration::from_secs(120), "rank {r} not ready after 120 s");
        }
        early.push(reader);
    }
    std::thread::sleep(Duration::from_millis(300));
    let survivor = 1 - victim;
    let mut victim_child = ranks.remove(victim);
    victim_child.kill().unwrap(); // SIGKILL
    let _ = victim_child.wait();
    let mut child = ranks.remove(0);
    child.stdout = Some(early.remove(survivor).into_inner());
    finish(child, Duration::from_secs(60), &format!("rank {survivor} after rank {victim} was killed"))
}

#[test]
fn a_rank_killed_mid_run_makes_the_other_fail_naming_it() {
    if !c10d_here("a_rank_killed_mid_run_makes_the_other_fail_naming_it") {
        return;
    }
    // A worker killed: rank 0 (which serves the store) names rank 1.
    let f = kill_one_of_two(1);
    let e = rank_error(&f);
    assert!(!f.success, "rank 0 went on after rank 1 was killed");
    assert!(e.contains("RANK-ERROR rank 0") && e.contains("lost rank 1"), "{e}\n{}", f.stderr);
    assert!(f.elapsed < Duration::from_secs(30), "rank 0 took {:?} to stop", f.elapsed);
    eprintln!("rank 0 stopped {:.1} s after rank 1 was killed: {e}", f.elapsed.as_secs_f64());
    // The store's server killed: rank 1 names rank 0.
    let f = kill_one_of_two(0);
    let e = rank_error(&f);
    assert!(!f.success, "rank 1 went on after rank 0 was killed");
    assert!(e.contains("RANK-ERROR rank 1") && e.contains("rank 0 was lost"), "{e}\n{}", f.stderr);
    assert!(f.elapsed < Duration::from_secs(30), "rank 1 took {:?} to stop", f.elapsed);
    eprintln!("rank 1 stopped {:.1} s after rank 0 was killed: {e}", f.elapsed.as_secs_f64());
}

#[test]
fn a_busy_port_and_an_unreachable_master_are_clear_errors() {
    if !c10d_here("a_busy_port_and_an_unreachable_master_are_clear_errors") {
        return;
    }
    // Something else listens on the port rank 0 should serve.
    let blocker = std::net::TcpListener::bind(("0.0.0.0", 0)).unwrap();
    let port = blocker.local_addr().unwrap().port();
    let f = finish(start_rank("rank_collectives", 0, 2, port, &[]), Duration::from_secs(60), "rank 0 on a busy port");
    let e = rank_error(&f);
    assert!(!f.success);
    assert!(e.contains(&format!("rank 0 cannot serve the store on port {port}: the port is already in use")) && e.contains("MASTER_PORT"), "{e}\n{}", f.stderr);
    drop(blocker);

    // Nobody serves the store: a client gives up after TI_DIST_TIMEOUT_S.
    let port = distributed::free_port().unwrap();
    let f = finish(start_rank("rank_collectives", 1, 2, port, &[("TI_DIST_TIMEOUT_S", "3".to_string())]), Duration::from_secs(60), "rank 1 with no master");
    let e = rank_error(&f);
    assert!(!f.success);
    assert!(e.contains(&format!("rank 1 could not reach the store at 127.0.0.1:{port} within 3 s")) && e.contains("MASTER_ADDR"), "{e}\n{}", f.stderr);
    assert!(f.elapsed < Duration::from_secs(30), "{:?}", f.elapsed);
}

#[test]
fn spawned_local_ranks_run_and_a_failing_one_stops_the_others() {
    if !c10d_here("spawned_local_ranks_run_and_a_failing_one_stops_the_others") {
        return;
    }
    // Three ranks, as --num_processes 3 starts them: the collectives hold at 3 as at 2.
    distributed::spawn_local_ranks(3, &rank_args("rank_collectives")).unwrap();

    // Rank 1 exits with status 3: the launcher stops the others and names it.
    let start = Instant::now();
    let e = distributed::spawn_local_ranks(3, &rank_args("rank_fail")).unwrap_err().to_string();
    assert_eq!(e, "rank 1 of 3 failed (exit status 3); stopped the other 2 ranks");
    assert!(start.elapsed() < Duration::from_secs(60), "{:?}", start.elapsed());
}

#[test]
fn ranks_under_torchrun_use_its_agent_store() {
    // torchrun serves the store itself (TORCHELASTIC_USE_AGENT_STORE=True): every rank is a
    // client under /worker/attempt_0. Runs where the reference Python (with torchrun) is found.
    if !c10d_here("ranks_under_torchrun_use_its_agent_store") {
        return;
    }
    let Some(python) = common::reference_python(&["torch"], "ranks_under_torchrun_use_its_agent_store") else { return };
    let torchrun = python.with_file_name("torchrun");
    let mut cmd = Command::new(&torchrun);
    cmd.args(["--standalone", "--nproc_per_node", "2", "--no-python"])
        .arg(std::env::current_exe().unwrap())
        .args(rank_args("rank_collectives"))
        .env("TI_DIST_TIMEOUT_S", "60")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let f = finish(cmd.spawn().unwrap(), Duration::from_secs(180), "torchrun with 2 ranks");
    assert!(f.success, "{}\n{}", f.stdout, f.stderr);
    for r in 0..2 {
        assert!(f.stdout.contains(&format!("RANK-OK rank {r}")), "{}", f.stdout);
    }
}

#[test]
fn one_process_needs_no_c10d() {
    // World size 1: the collectives are the identity and the store a map, in any build.
    let pg = ProcessGroup::init(&World::single()).unwrap();
    let mut t = Tensor::from_slice(&[1.5f32, -2.0]);
    pg.all_reduce_sum(&mut t).unwrap();
    pg.all_reduce_mean(&mut t).unwrap();
    pg.broadcast(&mut t, 0).unwrap();
    assert!(pg.broadcast(&mut t, 1).is_err());
    assert_eq!(values(&t), [1.5, -2.0]);
    let all = pg.all_gather(&t).unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(values(&all[0]), [1.5, -2.0]);
    pg.barrier().unwrap();
    pg.store_set("k", b"v").unwrap();
    assert_eq!(pg.store_get("k").unwrap(), b"v");
    pg.check_same_config("anything").unwrap();
}
