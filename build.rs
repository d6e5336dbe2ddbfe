//! Makes the binary find libtorch without LD_LIBRARY_PATH, makes CUDA really load where
//! libtorch has it, records which libtorch was linked (for `textual-inversion info`), and
//! compiles csrc/libtorch_extras.cpp against that libtorch's headers, and csrc/c10d.cpp (the
//! distributed engine) where gloo's headers are found.
use std::path::{Path, PathBuf};

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    println!("cargo:rerun-if-env-changed=LIBTORCH_CXX11_ABI");
    println!("cargo:rerun-if-changed=csrc/libtorch_extras.cpp");
    println!("cargo:rerun-if-changed=csrc/c10d.cpp");
    println!("cargo:rerun-if-env-changed=TI_GLOO_INCLUDE");
    println!("cargo:rustc-check-cfg=cfg(ti_c10d)");
    // torch-sys declares `links = "tch"`, so its lib dir reaches us as DEP_TCH_LIBTORCH_LIB
    // (only because torch-sys is a direct dependency).
    let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") else { return };
    println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    println!("cargo:rustc-env=TI_LIBTORCH_LIB={lib}");
    // torch-sys checked the version exactly; the file is absent when torch came from Python.
    let version = std::fs::read_to_string(Path::new(&lib).join("../build-version")).map(|v| v.trim().to_string()).unwrap_or_else(|_| "2.11.0".to_string());
    println!("cargo:rustc-env=TI_LIBTORCH_VERSION={version}");
    // The headers sit beside lib/ in every route (the CPU subset, the full wheel, a python's
    // torch). PyPI's torch 2.11 is built with the C++11 ABI, as torch-sys assumes by default.
    let abi = std::env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".to_string());
    cc::Build::new()
        .cpp(true)
        .file("csrc/libtorch_extras.cpp")
        .include(Path::new(&lib).join("../include"))
        .flag("-std=c++17")
        .define("_GLIBCXX_USE_CXX11_ABI", abi.as_str())
        .warnings(false)
        .compile("ti_libtorch_extras");
    compile_c10d(Path::new(&lib), &abi);
    // libtorch.so only lists libtorch_cuda.so; with the default --as-needed the linker drops it
    // and CUDA never starts. Force it only where it exists: the CPU-only libtorch lacks it.
    if Path::new(&lib).join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,-ltorch,--as-needed");
    }
}

/// csrc/c10d.cpp includes libtorch's ProcessGroupGloo.hpp, which includes gloo's headers; the
/// libtorch wheels ship the compiled gloo but not those headers, so they come from elsewhere
/// (Debian's libgloo-dev: scripts/setup-gloo.sh). Without them the crate builds without c10d
/// (no `ti_c10d` cfg) and `distributed` answers every call with how to get it.
fn compile_c10d(lib: &Path, abi: &str) {
    let gloo = std::env::var_os("TI_GLOO_INCLUDE").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/usr/include"));
    let torch_include = lib.join("../include");
    let needed = [gloo.join("gloo/algorithm.h"), gloo.join("gloo/rendezvous/store.h"), torch_include.join("torch/csrc/distributed/c10d/ProcessGroupGloo.hpp")];
    if let Some(missing) = needed.iter().find(|p| !p.is_file()) {
        println!(
            "cargo:warning=building without c10d (distributed training): {} not found; install gloo's headers (scripts/setup-gloo.sh, or apt-get install libgloo-dev) or set TI_GLOO_INCLUDE, then rebuild",
            missing.display()
        );
        // Installing the headers later rebuilds with c10d. Only an existing path is watched: a
        // missing one would rerun this script on every build.
        if gloo.is_dir() {
            println!("cargo:rerun-if-changed={}", gloo.display());
        }
        return;
    }
    println!("cargo:rerun-if-changed={}", gloo.join("gloo/algorithm.h").display());
    let mut build = cc::Build::new();
    // ProcessGroupGloo.hpp reaches torch/types.h, which lives with the C++ API's headers.
    build.cpp(true).file("csrc/c10d.cpp").include(&torch_include).include(torch_include.join("torch/csrc/api/include"));
    // -I on a system directory would reorder it before libstdc++'s own (#include_next).
    if !["/usr/include", "/usr/local/include"].iter().any(|d| gloo == Path::new(d)) {
        build.include(&gloo);
    }
    build.flag("-std=c++17").define("USE_C10D_GLOO", None).define("_GLIBCXX_USE_CXX11_ABI", abi).warnings(false).compile("ti_c10d");
    println!("cargo:rustc-cfg=ti_c10d");
}
