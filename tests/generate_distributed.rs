//! `generate --prompt_file F`, on one process and shared over `--num_processes N`: the same
//! file names and byte-identical PNGs (and index.jsonl) whatever N, job K's images those of a
//! plain `generate` with the job's prompt and seed, and prompt files that cannot be read
//! refused with the file and line named.
//!
//! The tiny model at 32-64 px and 3 steps of euler-ancestral, whose steps draw noise: a job's
//! images only match across world sizes if each job's draws start from its own seed, whatever
//! ran before it on that rank. Exact equality throughout: the same binary on the same CPU.
mod common;
use common::{repo, tiny_sd};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};

const PROMPTS: &str = "# five jobs: text, JSON with its own seed and size, a JSON batch, defaults
a photo of a cat
{\"prompt\": \"a dog on grass\", \"seed\": 1234, \"width\": 32, \"height\": 64}

{\"negative_prompt\": \"blurry\", \"num_images\": 2}
a red house
{\"prompt\": \"a tree\", \"width\": 64}
";

fn generate(args: &[&str], out: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_textual-inversion"))
        .current_dir(repo())
        .arg("generate")
        .arg("--model")
        .arg(tiny_sd())
        .args(["--num_inference_steps", "3", "--scheduler", "euler_a"])
        .args(args)
        .arg("--output_dir")
        .arg(out)
        .env("OMP_NUM_THREADS", "1")
        .output()
        .unwrap()
}

fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir).unwrap().map(|e| e.unwrap()).map(|e| (e.file_name().to_string_lossy().into_owned(), std::fs::read(e.path()).unwrap())).collect()
}

#[test]
fn prompt_file_gives_the_same_images_on_one_two_and_three_processes() {
    let tmp = tempfile::tempdir().unwrap();
    let prompts = tmp.path().join("prompts.txt");
    std::fs::write(&prompts, PROMPTS).unwrap();
    let flags = ["--prompt_file", prompts.to_str().unwrap(), "--prompt", "a fallback prompt", "--seed", "40", "--height", "32", "--width", "32"];

    let one = tmp.path().join("one");
    let o = generate(&flags, &one);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let want = files(&one);
    // Job K's seed: its own, or --seed + K; its batch index after the job index.
    let names: Vec<&str> = want.keys().map(String::as_str).collect();
    assert_eq!(names, ["0000-00-40.png", "0001-00-1234.png", "0002-00-42.png", "0002-01-42.png", "0003-00-43.png", "0004-00-44.png", "index.jsonl"]);
    let index: Vec<serde_json::Value> = String::from_utf8_lossy(&want["index.jsonl"]).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(index.len(), 6);
    assert_eq!(index[1]["prompt"], "a dog on grass");
    assert_eq!((index[1]["width"].as_i64(), index[1]["height"].as_i64(), index[1]["line"].as_i64()), (Some(32), Some(64), Some(3)));
    assert_eq!((index[2]["prompt"].as_str(), index[2]["negative_prompt"].as_str()), (Some("a fallback prompt"), Some("blurry")));
    assert_eq!(index[5]["width"].as_i64(), Some(64));
    let printed = String::from_utf8_lossy(&o.stdout);
    assert_eq!(printed.lines().count(), 6, "{printed}");

    // Job 1 is the plain command with its prompt, seed and size: the same file, byte for byte.
    let plain = tmp.path().join("plain");
    let o = generate(&["--prompt", "a dog on grass", "--seed", "1234", "--width", "32", "--height", "64"], &plain);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(files(&plain)["0000-1234.png"] == want["0001-00-1234.png"], "job 1 differs from generate --prompt 'a dog on grass' --seed 1234");

    if !common::c10d_available("generate_distributed::prompt_file_gives_the_same_images_on_one_two_and_three_processes".to_string()) {
        return;
    }
    for n in ["2", "3"] {
        let out = tmp.path().join(format!("n{n}"));
        let o = generate(&[&flags[..], &["--num_processes", n]].concat(), &out);
        assert!(o.status.success(), "{n} processes: {}", String::from_utf8_lossy(&o.stderr));
        let got = files(&out);
        assert_eq!(got.keys().collect::<Vec<_>>(), want.keys().collect::<Vec<_>>(), "{n} processes: other file names");
        for (name, bytes) in &want {
            assert!(got[name] == *bytes, "{n} processes: {name} differs from the one-process run");
        }
        eprintln!("{n} processes: {} files byte-identical to one process", got.len());
    }
}

#[test]
fn bad_prompt_files_are_refused_naming_file_and_line() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let refused = |prompts: &Path, args: &[&str]| {
        let o = generate(&[&["--prompt_file", prompts.to_str().unwrap()], args].concat(), &out);
        assert!(!o.status.success(), "{} was accepted", prompts.display());
        String::from_utf8_lossy(&o.stderr).into_owned()
    };

    let bad = tmp.path().join("bad.jsonl");
    std::fs::write(&bad, "a cat\n\n{\"prompt\": \"a dog\", \"seed\": \"seven\"}\n").unwrap();
    let err = refused(&bad, &[]);
    assert!(err.contains(&format!("{}:3:", bad.display())) && err.contains("invalid type: string \"seven\", expected u64"), "{err}");

    std::fs::write(&bad, "{\"prompt\": \"a dog\", \"sead\": 7}\n").unwrap();
    let err = refused(&bad, &[]);
    assert!(err.contains(&format!("{}:1:", bad.display())) && err.contains("unknown field `sead`"), "{err}");

    std::fs::write(&bad, "{\"seed\": 7}\n").unwrap();
    let err = refused(&bad, &[]);
    assert!(err.contains(&format!("{}:1:", bad.display())) && err.contains("no \"prompt\""), "{err}");

    let fifo = tmp.path().join("prompts.fifo");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a plain mkfifo on a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let err = refused(&fifo, &[]);
    assert!(err.contains(&fifo.display().to_string()) && err.contains("not a regular file (it is a FIFO)"), "{err}");

    // Several processes share prompt files only: one prompt is one batch.
    let o = generate(&["--prompt", "x", "--num_processes", "2"], &out);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("needs --prompt_file"), "{err}");
    assert!(!out.exists(), "a refused run wrote {}", out.display());
}
