//! Model folders and checkpoints made to break the loaders, run through the release binary as a
//! user would: every one must end in an error that names the file and the field (exit code 1),
//! never a panic ("internal error", exit code 2), an abort or a hang, and within a memory bound
//! where the old loaders allocated gigabytes (peak RSS of the child, from `wait4`).
//!
//! Each hostile input is made in a temporary folder from the tiny fixture model: its parts are
//! symlinked, the part under test is replaced. Large inputs are generated here, never committed.
mod common;
use common::fixtures;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How a run of the binary ended.
struct Outcome {
    /// The exit code; `None` when killed by a signal (an abort) or by the timeout.
    code: Option<i32>,
    stderr: String,
    /// Peak resident memory of the child, in bytes.
    max_rss: u64,
    timed_out: bool,
}

impl Outcome {
    /// Asserts a clean failure whose message contains every one of `needles`.
    fn assert_error(&self, what: &str, needles: &[&str]) {
        assert!(!self.timed_out, "{what}: hung (killed after the timeout)\n{}", self.stderr);
        assert_eq!(self.code, Some(1), "{what}: expected a clean error (exit code 1)\n{}", self.stderr);
        assert!(!self.stderr.contains("internal error"), "{what}: a panic\n{}", self.stderr);
        for n in needles {
            assert!(self.stderr.contains(n), "{what}: the error does not say {n:?}\n{}", self.stderr);
        }
    }
}

/// Runs the binary with `args`, killed after `timeout`. Its data segment is capped at 8 GiB so
/// that a regression reading `/dev/zero` cannot take the machine's memory with it (the bounds
/// asserted are far lower).
fn run<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(args: I, timeout: Duration) -> Outcome {
    use std::os::unix::process::CommandExt;
    let stderr = tempfile::NamedTempFile::new().unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_textual-inversion"));
    cmd.args(args).stdin(Stdio::null()).stdout(Stdio::null()).stderr(stderr.reopen().unwrap());
    // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            let limit = libc::rlimit { rlim_cur: 8 << 30, rlim_max: 8 << 30 };
            libc::setrlimit(libc::RLIMIT_DATA, &limit);
            Ok(())
        });
    }
    // Reaped below by wait4 (which also gives its rusage), not Child::wait.
    #[allow(clippy::zombie_processes)]
    let mut child = cmd.spawn().unwrap();
    let pid = child.id() as libc::pid_t;
    let deadline = Instant::now() + timeout;
    let mut timed_out = false;
    let (status, usage) = loop {
        let mut status = 0;
        // SAFETY: a zeroed rusage is a valid value for wait4 to fill.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        let flags = if timed_out { 0 } else { libc::WNOHANG };
        // SAFETY: pid is our child, not yet reaped; the pointers are valid.
        let r = unsafe { libc::wait4(pid, &mut status, flags, &mut usage) };
        if r == pid {
            break (status, usage);
        }
        assert_eq!(r, 0, "wait4 failed");
        if Instant::now() > deadline {
            timed_out = true;
            let _ = child.kill();
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let code = libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status));
    let stderr = std::fs::read_to_string(stderr.path()).unwrap();
    // ru_maxrss is in KiB on Linux.
    Outcome { code, stderr, max_rss: usage.ru_maxrss as u64 * 1024, timed_out }
}

/// `generate` on `model` (it fails while loading, so nothing is generated).
fn generate(model: &Path, out: &Path) -> Outcome {
    let args = [OsStr::new("generate"), "--pretrained_model_name_or_path".as_ref(), model.as_os_str()];
    let rest = ["--prompt", "a photo", "--num_inference_steps", "1", "--seed", "0", "--output_dir"];
    run(args.into_iter().chain(rest.iter().map(OsStr::new)).chain([out.as_os_str()]), Duration::from_secs(120))
}

const PARTS: [&str; 6] = ["model_index.json", "scheduler", "tokenizer", "text_encoder", "unet", "vae"];

/// A copy of the tiny model in `tmp/name` made of symlinks, with folder `part` a real folder
/// (of symlinks to its files) whose file `file` is left for the caller to write.
fn model_with(tmp: &Path, name: &str, part: &str, file: &str) -> (PathBuf, PathBuf) {
    let src = fixtures().join("tiny-sd");
    let dst = tmp.join(name);
    std::fs::create_dir_all(&dst).unwrap();
    for p in PARTS {
        if p == part {
            std::fs::create_dir(dst.join(p)).unwrap();
            for e in std::fs::read_dir(src.join(p)).unwrap() {
                let e = e.unwrap();
                if e.file_name() != file {
                    std::os::unix::fs::symlink(e.path(), dst.join(p).join(e.file_name())).unwrap();
                }
            }
        } else if !(part.is_empty() && p == file) {
            std::os::unix::fs::symlink(src.join(p), dst.join(p)).unwrap();
        }
    }
    let target = if part.is_empty() { dst.join(file) } else { dst.join(part).join(file) };
    (dst, target)
}

/// The tiny model with `part/file` (a JSON object) changed by `edit`; returns the folder and
/// the edited file.
fn edited(tmp: &Path, name: &str, part: &str, file: &str, edit: impl FnOnce(&mut serde_json::Value)) -> (PathBuf, PathBuf) {
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(fixtures().join("tiny-sd").join(part).join(file)).unwrap()).unwrap();
    edit(&mut v);
    let (dir, target) = model_with(tmp, name, part, file);
    std::fs::write(&target, v.to_string()).unwrap();
    (dir, target)
}

fn set(key: &str, value: serde_json::Value) -> impl FnOnce(&mut serde_json::Value) + '_ {
    move |v| v[key] = value
}

fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo {}", path.display());
}

#[test]
fn hostile_config_values_are_refused_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let big = serde_json::json!(1_000_000_000i64);
    // (component, file, field, value): each once gave a libtorch panic, a division by zero or
    // an abort on a 200+ GB allocation.
    let cases = [
        ("unet", "config.json", "norm_num_groups", serde_json::json!(0)),
        ("vae", "config.json", "norm_num_groups", serde_json::json!(0)),
        ("unet", "config.json", "block_out_channels", serde_json::json!([-16, 32, 32])),
        ("text_encoder", "config.json", "max_position_embeddings", serde_json::json!(-5)),
        ("text_encoder", "config.json", "vocab_size", serde_json::json!(1_000_000_000_000i64)),
        ("unet", "config.json", "sample_size", big.clone()),
        ("text_encoder", "config.json", "num_hidden_layers", big.clone()),
        ("unet", "config.json", "layers_per_block", big.clone()),
        ("unet", "config.json", "transformer_layers_per_block", big.clone()),
        ("vae", "config.json", "layers_per_block", big.clone()),
        ("tokenizer", "tokenizer_config.json", "model_max_length", serde_json::json!(999_999)),
    ];
    for (i, (part, file, field, value)) in cases.into_iter().enumerate() {
        let what = format!("{part}/{file}: {field} {value}");
        let (model, target) = edited(tmp.path(), &format!("m{i}"), part, file, set(field, value));
        let o = generate(&model, &tmp.path().join("out"));
        o.assert_error(&what, &[target.to_str().unwrap(), field]);
        eprintln!("{what}: {}", o.stderr.lines().last().unwrap_or_default());
    }
}

#[test]
fn hostile_scheduler_betas_are_refused_by_name() {
    // A beta of 5 made every alpha negative: a finite schedule that generated noise (exit 0).
    let tmp = tempfile::tempdir().unwrap();
    for (i, (field, value)) in [("beta_end", serde_json::json!(5.0)), ("trained_betas", serde_json::json!([0.5, -1.0]))].into_iter().enumerate() {
        let (model, _) = edited(tmp.path(), &format!("m{i}"), "scheduler", "scheduler_config.json", |v| {
            v[field] = value;
            v["num_train_timesteps"] = 2.into();
            v["steps_offset"] = 0.into();
        });
        generate(&model, &tmp.path().join("out")).assert_error(field, &["scheduler_config.json", field]);
    }
}

#[test]
fn layer_counts_are_those_of_the_weights() {
    // In range, but not what the weight files hold: said before anything is built.
    let tmp = tempfile::tempdir().unwrap();
    for (i, (part, field, weights)) in [
        ("unet", "layers_per_block", "down_blocks.0.resnets.*, the weights have 2"),
        ("unet", "transformer_layers_per_block", "down_blocks.0.attentions.0.transformer_blocks.*, the weights have 1"),
        ("text_encoder", "num_hidden_layers", "encoder.layers.*, the weights have 5"),
        ("vae", "layers_per_block", "encoder.down_blocks.0.resnets.*, the weights have 1"),
    ]
    .into_iter()
    .enumerate()
    {
        let (model, target) = edited(tmp.path(), &format!("m{i}"), part, "config.json", set(field, 1000.into()));
        generate(&model, &tmp.path().join("out")).assert_error(field, &[target.to_str().unwrap(), field, weights]);
    }
}

#[test]
fn a_config_that_does_not_fit_the_weights_costs_no_memory() {
    // `{}`: SD 1.5's defaults, none of whose tensors the tiny model has. The old loader made a
    // zero placeholder for each (3.5 GB) before saying so.
    let tmp = tempfile::tempdir().unwrap();
    let (model, target) = model_with(tmp.path(), "empty", "unet", "config.json");
    std::fs::write(&target, "{}").unwrap();
    let o = generate(&model, &tmp.path().join("out"));
    eprintln!("peak RSS {} MB", o.max_rss >> 20);
    assert!(o.max_rss < 1500 << 20, "peak RSS {} MB", o.max_rss >> 20);
    o.assert_error("unet/config.json {}", &[target.to_str().unwrap(), "block_out_channels", "down_blocks"]);
    // Counts that fit, widths that do not: every mis-shaped tensor named, from the headers alone.
    let (model, target) = edited(tmp.path(), "wide", "unet", "config.json", set("block_out_channels", serde_json::json!([4096, 8192, 8192])));
    let o = generate(&model, &tmp.path().join("out"));
    o.assert_error("wide UNet", &[target.to_str().unwrap(), "down_blocks.0.resnets.0.conv1.weight has shape [16, 16, 3, 3], expected [4096, 4096, 3, 3]"]);
    assert!(o.max_rss < 1500 << 20, "peak RSS {} MB", o.max_rss >> 20);
}

#[test]
fn the_tokenizer_must_fit_its_text_encoder() {
    let tmp = tempfile::tempdir().unwrap();
    // Longer sequences than the encoder has positions (77): libtorch's narrow panicked.
    let (model, target) = edited(tmp.path(), "long", "tokenizer", "tokenizer_config.json", set("model_max_length", 100.into()));
    generate(&model, &tmp.path().join("out")).assert_error("model_max_length 100", &[target.to_str().unwrap(), "max_position_embeddings"]);
    // A token id past the encoder's rows: the embedding lookup panicked on the first prompt
    // using it.
    let (model, target) = model_with(tmp.path(), "extra", "tokenizer", "added_tokens.json");
    std::fs::write(&target, r#"{"<extra>": 49408}"#).unwrap();
    let args = ["generate", "--pretrained_model_name_or_path", model.to_str().unwrap(), "--prompt", "a <extra> photo"];
    let o = run(args.iter().chain(&["--num_inference_steps", "1", "--output_dir", tmp.path().join("out").to_str().unwrap()]), Duration::from_secs(120));
    o.assert_error("token id 49408", &["49408", "vocab_size"]);
}

#[test]
fn the_parts_must_fit_each_other() {
    // SDXL's first text encoder (hidden size 16) in the SD model, whose UNet attends to 32-wide
    // text: the first denoising step's matrix product panicked inside libtorch.
    let tmp = tempfile::tempdir().unwrap();
    let (model, target) = model_with(tmp.path(), "mixed", "", "text_encoder");
    std::os::unix::fs::symlink(fixtures().join("tiny-sdxl/text_encoder"), &target).unwrap();
    let o = generate(&model, &tmp.path().join("out"));
    o.assert_error("mixed", &[model.join("unet/config.json").to_str().unwrap(), "cross_attention_dim is 32", "hidden_size", "16"]);
}

#[test]
fn only_regular_files_are_read() {
    let tmp = tempfile::tempdir().unwrap();
    let fifo = |p: &Path| mkfifo(p);
    let zero = |p: &Path| std::os::unix::fs::symlink("/dev/zero", p).unwrap();
    // (part, file, make it, what the error says): FIFOs once hung, /dev/zero was read until
    // memory ran out; the others were silently skipped or reported as missing.
    type Make<'a> = &'a dyn Fn(&Path);
    let cases: [(&str, &str, Make, &str); 7] = [
        ("tokenizer", "tokenizer_config.json", &fifo, "FIFO"),
        ("tokenizer", "special_tokens_map.json", &zero, "character device"),
        ("tokenizer", "vocab.json", &fifo, "FIFO"),
        ("unet", "config.json", &zero, "character device"),
        ("scheduler", "scheduler_config.json", &fifo, "FIFO"),
        ("", "model_index.json", &fifo, "FIFO"),
        ("vae", "diffusion_pytorch_model.safetensors", &fifo, "FIFO"),
    ];
    for (i, (part, file, make, says)) in cases.into_iter().enumerate() {
        let (model, target) = model_with(tmp.path(), &format!("m{i}"), part, file);
        make(&target);
        let o = generate(&model, &tmp.path().join("out"));
        o.assert_error(&format!("{part}/{file}"), &[target.to_str().unwrap(), says, "not a regular file"]);
    }
    // A sharded checkpoint's index.
    let (model, _) = model_with(tmp.path(), "index", "unet", "diffusion_pytorch_model.safetensors");
    std::fs::remove_file(model.join("unet/diffusion_pytorch_model.bin")).unwrap();
    let index = model.join("unet/diffusion_pytorch_model.safetensors.index.json");
    mkfifo(&index);
    generate(&model, &tmp.path().join("out")).assert_error("index", &[index.to_str().unwrap(), "FIFO"]);
    // A config past the size bound (64 MiB) is refused before it is read.
    let (model, target) = model_with(tmp.path(), "huge", "vae", "config.json");
    let f = std::fs::File::create(&target).unwrap();
    f.set_len(65 << 20).unwrap();
    generate(&model, &tmp.path().join("out")).assert_error("huge config", &[target.to_str().unwrap(), "68157440 bytes", "67108864"]);
}

/// The SD 1 single-file fixture's tensors under their stored names.
fn sd1_tensors() -> Vec<(String, textual_inversion::formats::RawTensor)> {
    let path = fixtures().join("single-file/sd1.safetensors");
    textual_inversion::formats::safetensors_io::read_all("sd1", &std::fs::read(path).unwrap()).unwrap()
}

/// A torch.save file of `tensors` (under `state_dict` as in a Lightning `.ckpt` when `nested`)
/// in which `key` is a stride-0 view of 2^40 elements over a one-element storage (4 bytes
/// claiming 4 TB).
fn ckpt_with_stride_zero(path: &Path, tensors: Vec<(String, textual_inversion::formats::RawTensor)>, key: &str, nested: bool) {
    use textual_inversion::formats::pickle::Value;
    use textual_inversion::formats::{torch_file::TorchWriter, DType, RawTensor};
    let mut w = TorchWriter::new();
    let mut items: Vec<(Value, Value)> = tensors.into_iter().filter(|(k, _)| k != key).map(|(k, t)| (Value::Str(k), w.tensor(t))).collect();
    let mut v = w.tensor(RawTensor::new(DType::F32, vec![1], vec![0; 4]).unwrap());
    let Value::Tensor(t) = &mut v else { unreachable!() };
    t.shape = vec![1 << 40];
    t.stride = vec![0];
    items.push((Value::Str(key.into()), v));
    let root = if nested { Value::Dict(vec![(Value::Str("state_dict".into()), Value::Dict(items))]) } else { Value::Dict(items) };
    w.save(path, &root).unwrap();
}

#[test]
fn convert_model_checks_shapes_before_materialising_a_tensor() {
    // The UNet's first tensor (conv_in.bias) is a 4 TB view: convert-model read it to learn the
    // stored dtype and aborted; generate refused the shape. Now both refuse it by shape.
    let tmp = tempfile::tempdir().unwrap();
    let ckpt = tmp.path().join("hostile.ckpt");
    ckpt_with_stride_zero(&ckpt, sd1_tensors(), "model.diffusion_model.input_blocks.0.0.bias", true);
    let config = fixtures().join("single-file/sd1");
    let out = tmp.path().join("out");
    let args = ["convert-model", ckpt.to_str().unwrap(), out.to_str().unwrap(), "--config", config.to_str().unwrap()];
    let o = run(args, Duration::from_secs(120));
    o.assert_error("convert-model", &["hostile.ckpt", "conv_in.bias has shape [1099511627776], expected [4]"]);
    assert!(o.max_rss < 1500 << 20, "peak RSS {} MB", o.max_rss >> 20);
    assert!(!out.exists());
}

#[test]
fn a_stored_view_larger_than_its_storage_is_not_expanded() {
    use textual_inversion::models::weights::{Placement, Weights};
    let tmp = tempfile::tempdir().unwrap();
    let ckpt = tmp.path().join("view.pt");
    ckpt_with_stride_zero(&ckpt, vec![], "x", false);
    let w = Weights::open(&[ckpt], Placement::cpu_f32()).unwrap();
    assert_eq!(w.shape_of("x"), Some(vec![1 << 40]));
    let e = w.stored_tensor("x").unwrap_err().to_string();
    assert!(e.contains("view.pt") && e.contains("tensor x") && e.contains("1-element storage"), "{e}");
}

#[test]
fn a_fifo_beside_a_single_file_is_not_waited_for() {
    // The web UI's `<name>.yaml` beside a checkpoint tells its prediction type; a FIFO there
    // hung the loader. Now it is skipped with a warning naming it.
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("sd1.safetensors");
    std::os::unix::fs::symlink(fixtures().join("single-file/sd1.safetensors"), &file).unwrap();
    let yaml = tmp.path().join("sd1.yaml");
    mkfifo(&yaml);
    let out = tmp.path().join("out");
    let config = fixtures().join("single-file/sd1");
    let o = run(["convert-model", file.to_str().unwrap(), out.to_str().unwrap(), "--config", config.to_str().unwrap()], Duration::from_secs(120));
    assert!(!o.timed_out, "hung\n{}", o.stderr);
    assert_eq!(o.code, Some(0), "{}", o.stderr);
    assert!(o.stderr.contains(yaml.to_str().unwrap()) && o.stderr.contains("FIFO"), "{}", o.stderr);
    assert!(out.join("unet/diffusion_pytorch_model.safetensors").is_file());
}
