//! Nothing lost, nothing written where it should not be: the binary against output paths a user
//! (or a planted link) controls, signals mid-write, limits on what `generate` is asked to make,
//! a training folder larger than memory, and file text that would drive the terminal.
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::repo;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_textual-inversion"))
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn train_into(model: &Path, out: &Path, extra: &[&str]) -> Output {
    bin()
        .arg("train")
        .arg("--pretrained_model_name_or_path")
        .arg(model)
        .arg("--train_data_dir")
        .arg(repo().join("fixtures/dataset/images"))
        .args(["--placeholder_token", "<t>", "--initializer_token", "toy", "--resolution", "32", "--max_train_steps", "1"])
        .args(["--seed", "1", "--report_to", "none", "--output_dir"])
        .arg(out)
        .args(extra)
        .output()
        .unwrap()
}

/// A copy of the tiny model (files copied, not linked) that a test may watch for changes.
fn model_copy(dir: &Path) -> PathBuf {
    let dst = dir.join("model");
    copy_tree(&repo().join("fixtures/tiny-sd"), &dst);
    dst
}

fn copy_tree(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        let to = dst.join(e.file_name());
        if std::fs::metadata(e.path()).unwrap().is_dir() {
            copy_tree(&e.path(), &to);
        } else {
            std::fs::copy(e.path(), &to).unwrap();
        }
    }
}

/// Every file under `dir` with its bytes.
fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    common::files_under(dir).into_iter().map(|p| (p.clone(), std::fs::read(&p).unwrap())).collect()
}

fn temporaries(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(".tmp") || name.ends_with(".tmp") {
                found.push(e.path().display().to_string());
            }
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            }
        }
    }
    found
}

#[test]
fn a_full_pipeline_into_the_models_own_folder_is_refused_and_the_model_kept() {
    let d = tempfile::tempdir().unwrap();
    let model = model_copy(d.path());
    let before = snapshot(&model);
    let o = train_into(&model, &model, &["--save_as_full_pipeline"]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(e.contains("model's own folder") && !e.contains("Running training"), "{e}");
    assert_eq!(snapshot(&model), before, "the model folder changed");
    // The same folder reached through another path is the same folder.
    let alias = d.path().join("alias");
    std::os::unix::fs::symlink(&model, &alias).unwrap();
    let o = train_into(&model, &alias.join("."), &["--save_as_full_pipeline"]);
    assert!(stderr(&o).contains("model's own folder"), "{}", stderr(&o));
    assert_eq!(snapshot(&model), before);
}

#[test]
fn a_second_full_pipeline_run_into_the_same_output_keeps_the_linked_base_files() {
    let d = tempfile::tempdir().unwrap();
    let model = model_copy(d.path());
    let before = snapshot(&model);
    let out = d.path().join("out");
    for _ in 0..2 {
        let o = train_into(&model, &out, &["--save_as_full_pipeline"]);
        assert!(o.status.success(), "{}", stderr(&o));
    }
    assert!(out.join("model_index.json").is_file() && out.join("unet/config.json").is_file());
    assert_eq!(snapshot(&model), before, "the base model changed");
}

#[test]
fn convert_never_replaces_what_is_not_a_regular_file() {
    let d = tempfile::tempdir().unwrap();
    let input = first_embedding();
    // A FIFO (a device node behaves the same, but a test must never risk /dev/null).
    let fifo = d.path().join("pipe.pt");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    let target = d.path().join("target.pt");
    std::fs::write(&target, b"precious").unwrap();
    let link = d.path().join("link.pt");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let folder = d.path().join("folder.pt");
    std::fs::create_dir(&folder).unwrap();
    for (out, what) in [(&fifo, "a FIFO"), (&link, "a symbolic link"), (&folder, "a folder")] {
        let o = bin().arg("convert").arg(&input).arg(out).output().unwrap();
        assert!(!o.status.success(), "{what}");
        assert_eq!(o.status.code(), Some(1), "{what}: a clear error, not an internal one");
        let e = stderr(&o);
        assert!(e.contains(what) && e.contains("refusing to replace"), "{what}: {e}");
    }
    assert!(std::fs::symlink_metadata(&fifo).unwrap().file_type().is_fifo());
    assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
    assert_eq!(std::fs::read(&target).unwrap(), b"precious");
    assert!(temporaries(d.path()).is_empty(), "{:?}", temporaries(d.path()));
    // A regular file is replaced.
    let plain = d.path().join("plain.pt");
    std::fs::write(&plain, b"old").unwrap();
    let o = bin().arg("convert").arg(&input).arg(&plain).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_ne!(std::fs::read(&plain).unwrap(), b"old");
}

fn first_embedding() -> PathBuf {
    let dir = repo().join("fixtures/embeddings");
    let mut names: Vec<PathBuf> =
        std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|e| e == "safetensors")).collect();
    names.sort();
    names.into_iter().find(|p| textual_inversion::formats::embeddings::read(p).is_ok_and(|f| f.embeddings.len() == 1)).unwrap()
}

#[test]
fn links_planted_in_the_output_folder_are_refused_before_training() {
    let d = tempfile::tempdir().unwrap();
    let outside = d.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    let victim = outside.join("victim.txt");
    for planted in ["metrics.jsonl", "learned_embeds.safetensors", "validation", "checkpoint-1"] {
        std::fs::write(&victim, b"keep me").unwrap();
        let out = d.path().join(format!("out-{planted}"));
        std::fs::create_dir(&out).unwrap();
        let target = if planted == "validation" || planted == "checkpoint-1" { outside.clone() } else { victim.clone() };
        std::os::unix::fs::symlink(&target, out.join(planted)).unwrap();
        let extra: &[&str] = match planted {
            "validation" => &["--validation_prompt", "a <t>", "--validation_steps", "1"],
            "checkpoint-1" => &["--checkpointing_steps", "1"],
            _ => &[],
        };
        let o = train_into(&repo().join("fixtures/tiny-sd"), &out, extra);
        let e = stderr(&o);
        assert!(!o.status.success(), "{planted}: {e}");
        assert!(e.contains("symbolic link") && e.contains(planted) && !e.contains("Running training"), "{planted}: {e}");
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep me", "{planted}");
        let listed: Vec<_> = std::fs::read_dir(&outside).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(listed.len(), 1, "{planted}: files appeared outside the output folder: {listed:?}");
        assert!(temporaries(&out).is_empty(), "{planted}: {:?}", temporaries(&out));
    }
}

#[test]
fn a_second_run_says_which_files_it_replaces() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("out");
    let first = train_into(&repo().join("fixtures/tiny-sd"), &out, &["--save_steps", "1"]);
    assert!(first.status.success(), "{}", stderr(&first));
    assert!(!stderr(&first).contains("will replace"), "{}", stderr(&first));
    let second = train_into(&repo().join("fixtures/tiny-sd"), &out, &["--save_steps", "1"]);
    assert!(second.status.success(), "{}", stderr(&second));
    let e = stderr(&second);
    let line = e.lines().find(|l| l.contains("will replace")).unwrap_or_else(|| panic!("no warning: {e}"));
    assert!(line.contains("learned_embeds.safetensors") && line.contains("learned_embeds-steps-1.safetensors"), "{line}");
    assert!(!line.contains("metrics.jsonl"), "metrics.jsonl is continued, not replaced: {line}");
    // Announced before the first step.
    let warned = e.find("will replace").unwrap();
    assert!(warned < e.find("Running training").unwrap(), "{e}");
}

/// Starts `cmd` with atomic writes held open, waits until `watch` holds a temporary, sends
/// `signal`, and returns how the process ended and what it left.
fn interrupt_mid_write(mut cmd: Command, watch: &Path, signal: i32) -> (std::process::ExitStatus, Vec<String>) {
    let mut child = cmd.env("TI_TEST_HOLD_TEMPORARY_MS", "60000").stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let start = Instant::now();
    while temporaries(watch).is_empty() {
        assert!(start.elapsed() < Duration::from_secs(120), "no temporary appeared in {}", watch.display());
        assert!(child.try_wait().unwrap().is_none(), "the process ended before writing");
        std::thread::sleep(Duration::from_millis(20));
    }
    unsafe { libc::kill(child.id() as i32, signal) };
    let status = child.wait().unwrap();
    (status, temporaries(watch))
}

#[test]
fn signals_mid_write_leave_no_temporaries() {
    use std::os::unix::process::ExitStatusExt;
    let d = tempfile::tempdir().unwrap();
    let mut cmd = bin();
    cmd.arg("convert").arg(first_embedding()).arg(d.path().join("out.pt"));
    let (status, left) = interrupt_mid_write(cmd, d.path(), libc::SIGTERM);
    assert_eq!(status.signal(), Some(libc::SIGTERM), "{status:?}");
    assert!(left.is_empty(), "convert left {left:?}");
    assert!(!d.path().join("out.pt").exists());

    let out = d.path().join("train");
    std::fs::create_dir(&out).unwrap();
    let mut cmd = bin();
    cmd.arg("train")
        .arg("--pretrained_model_name_or_path")
        .arg(repo().join("fixtures/tiny-sd"))
        .arg("--train_data_dir")
        .arg(repo().join("fixtures/dataset/images"))
        .args(["--placeholder_token", "<t>", "--initializer_token", "toy", "--resolution", "32", "--max_train_steps", "2"])
        .args(["--checkpointing_steps", "1", "--save_steps", "100", "--seed", "1", "--report_to", "none", "--output_dir"])
        .arg(&out);
    let (status, left) = interrupt_mid_write(cmd, &out, libc::SIGINT);
    assert_eq!(status.signal(), Some(libc::SIGINT), "{status:?}");
    assert!(left.is_empty(), "train left {left:?}");
}

#[test]
fn generate_refuses_what_no_machine_can_make_with_the_reason() {
    let d = tempfile::tempdir().unwrap();
    for (flag, value, why) in [
        ("--height", "100000", "outside 1..=4096"),
        ("--width", "0", "outside 1..=4096"),
        ("--num_images_per_prompt", "100000", "one batch"),
        ("--num_inference_steps", "100000", "outside 1..=1000"),
    ] {
        let o = bin()
            .args(["generate", "--model"])
            .arg(repo().join("fixtures/tiny-sd"))
            .args(["--prompt", "x", "--seed", "1", flag, value, "--output_dir"])
            .arg(d.path())
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(1), "{flag} {value}: {}", stderr(&o));
        let e = stderr(&o);
        assert!(e.contains(flag) && e.contains(why) && !e.contains("internal error"), "{flag} {value}: {e}");
    }
}

#[test]
fn inspect_escapes_control_characters_from_files() {
    use textual_inversion::formats::{safetensors_io, DType, RawTensor};
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("evil.safetensors");
    let token = "<t\u{1b}]0;pwned\u{7}\u{1b}[2J>";
    let t = RawTensor::new(DType::F32, vec![1, 4], [0f32, 1.0, 2.0, 3.0].iter().flat_map(|v| v.to_le_bytes()).collect()).unwrap();
    let meta = [("note\u{1b}[31m".to_string(), "red\u{1b}[0m\r".to_string())].into_iter().collect();
    safetensors_io::save(&path, &[(token.to_string(), t)], Some(&meta)).unwrap();
    let o = bin().arg("inspect").arg(&path).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let text = String::from_utf8(o.stdout).unwrap();
    assert!(!text.contains('\u{1b}') && !text.contains('\u{7}') && !text.contains('\r'), "{text:?}");
    assert!(text.contains("\\u{1b}]0;pwned\\u{7}"), "{text}");
    // Errors naming file text are escaped too.
    let bad = d.path().join("bad\u{1b}[2J.pt");
    std::fs::write(&bad, b"not a file of any kind").unwrap();
    let o = bin().arg("inspect").arg(&bad).output().unwrap();
    assert!(!o.status.success());
    assert!(!stderr(&o).contains('\u{1b}'), "{:?}", stderr(&o));
}

/// Peak resident memory of a child process run to its end, in bytes (from `wait4`, which
/// also reaps it: `Child::wait` would not return its rusage).
#[allow(clippy::zombie_processes)]
fn peak_rss(mut cmd: Command) -> (std::process::ExitStatus, u64, String) {
    use std::os::unix::process::ExitStatusExt;
    let log = tempfile::NamedTempFile::new().unwrap();
    let child = cmd.stdout(Stdio::null()).stderr(log.reopen().unwrap()).spawn().unwrap();
    let mut status = 0;
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    assert_eq!(pid, child.id() as i32);
    (std::process::ExitStatus::from_raw(status), usage.ru_maxrss as u64 * 1024, std::fs::read_to_string(log.path()).unwrap())
}

#[test]
fn a_folder_of_thousands_of_images_trains_in_bounded_memory() {
    // 6000 images at --resolution 256 would keep 1.1 GB of resized pixels if memory grew with
    // the folder (it did: 1742 MiB peak against 585 MiB for the 4-image folder).
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let tiny = image::RgbImage::from_fn(8, 8, |x, y| image::Rgb([(x * 30) as u8, (y * 30) as u8, 128]));
    let mut png = Vec::new();
    tiny.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png).unwrap();
    for i in 0..6000 {
        std::fs::write(data.join(format!("{i:05}.png")), &png).unwrap();
    }
    let run = |folder: &Path| {
        let mut cmd = bin();
        cmd.arg("train")
            .arg("--pretrained_model_name_or_path")
            .arg(repo().join("fixtures/tiny-sd"))
            .arg("--train_data_dir")
            .arg(folder)
            .args(["--placeholder_token", "<t>", "--initializer_token", "toy", "--resolution", "256", "--max_train_steps", "1"])
            .args(["--seed", "1", "--report_to", "none", "--no_cache_latents", "--output_dir"])
            .arg(d.path().join("out"));
        let (status, peak, log) = peak_rss(cmd);
        assert!(status.success(), "{}: {log}", folder.display());
        peak
    };
    let small = run(&repo().join("fixtures/dataset/images"));
    let large = run(&data);
    eprintln!("peak RSS: 4 images {} MiB, 6000 images {} MiB", small >> 20, large >> 20);
    assert!(large < small + (300 << 20), "peak RSS {} MiB for 6000 images against {} MiB for 4: memory grows with the folder", large >> 20, small >> 20);
}

#[test]
fn a_file_of_twenty_thousand_embeddings_loads_in_linear_time() {
    use textual_inversion::formats::{safetensors_io, DType, RawTensor};
    let cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(repo().join("fixtures/tiny-sd/text_encoder/config.json")).unwrap()).unwrap();
    let width = cfg["hidden_size"].as_u64().unwrap() as usize;
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("many.safetensors");
    let tensors: Vec<(String, RawTensor)> = (0..20_000)
        .map(|i| {
            let row: Vec<u8> = (0..width).flat_map(|k| ((i * 7 + k) as f32 * 1e-4).to_le_bytes()).collect();
            (format!("<tok{i}>"), RawTensor::new(DType::F32, vec![width], row).unwrap())
        })
        .collect();
    safetensors_io::save(&path, &tensors, None).unwrap();
    let start = Instant::now();
    let o = bin()
        .args(["generate", "--model"])
        .arg(repo().join("fixtures/tiny-sd"))
        .arg("--embedding")
        .arg(&path)
        .args(["--prompt", "a <tok19999>", "--num_inference_steps", "1", "--height", "32", "--width", "32", "--seed", "1", "--output_dir"])
        .arg(d.path())
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let secs = start.elapsed().as_secs_f64();
    assert!(o.status.success(), "{}", stderr(&o));
    eprintln!("20000 embeddings loaded and used in {secs:.1} s");
    // Adding them one by one (one tokenizer call and one concatenation of every row so far
    // per embedding) took minutes.
    assert!(secs < 60.0, "{secs:.1} s");
}
