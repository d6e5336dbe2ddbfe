//! Makes the binary find libtorch without LD_LIBRARY_PATH, makes CUDA really load where
//! libtorch has it, records which libtorch was linked (for `textual-inversion info`), and
//! compiles csrc/libtorch_extras.cpp against that libtorch's headers.
use std::path::Path;

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    println!("cargo:rerun-if-env-changed=LIBTORCH_CXX11_ABI");
    println!("cargo:rerun-if-changed=csrc/libtorch_extras.cpp");
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
    // libtorch.so only lists libtorch_cuda.so; with the default --as-needed the linker drops it
    // and CUDA never starts. Force it only where it exists: the CPU-only libtorch lacks it.
    if Path::new(&lib).join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,-ltorch,--as-needed");
    }
}
