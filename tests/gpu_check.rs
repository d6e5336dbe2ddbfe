//! `scripts/gpu-check.sh --cpu-smoke`: the GPU check's whole path on the CPU with the tiny model,
//! so that the first (short, rare) GPU call cannot fail on a typo. The PyTorch side is left out
//! here (`--python none`; CI has no torch); run it with `TI_GPU_CHECK_PYTHON=PY` to include it.
mod common;
use common::repo;

#[test]
fn gpu_check_runs_end_to_end_on_the_cpu() {
    let dir = tempfile::tempdir().unwrap();
    let python = std::env::var("TI_GPU_CHECK_PYTHON").unwrap_or_else(|_| "none".into());
    let out = std::process::Command::new("bash")
        .arg(repo().join("scripts/gpu-check.sh"))
        .args(["--cpu-smoke", "--bin", env!("CARGO_BIN_EXE_textual-inversion"), "--python", &python, "--out"])
        .arg(dir.path())
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{log}\n{}", String::from_utf8_lossy(&out.stderr));
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.path().join("gpu-check.json")).unwrap()).unwrap();
    assert_eq!(json["mode"], "cpu-smoke");
    assert_eq!(json["info"]["libtorch_version"], "2.11.0");
    for prec in ["fp16", "bf16"] {
        let p = &json["precisions"][prec];
        assert!(p["ours_generate"]["s_per_image"].as_f64().unwrap() > 0.0, "{prec}: {p}");
        let train = &p["ours_train"];
        assert_eq!(train["losses"].as_array().unwrap().len(), 4, "{prec}: {train}");
        assert!(train["rows_moved_l2"].as_f64().unwrap() > 0.0, "{prec}");
    }
    // On the CPU the "device" runs are CPU runs: the replays must agree exactly.
    for (prec, steps) in [("fp32", 3), ("bf16", 2), ("fp16", 2)] {
        let rep = &json["cpu_replay"][prec];
        assert_eq!(rep["cpu_losses"].as_array().unwrap().len(), steps, "{prec}: {rep}");
        assert_eq!(rep["max_rel"].as_f64().unwrap(), 0.0, "{prec}: {rep}");
    }
    assert!(log.contains("| precision |"), "the table: {log}");
}
