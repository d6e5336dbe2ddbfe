//! safetensors headers and the embedding classification behind them.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = ti_formats::safetensors_io::metadata("fuzz", data);
    let _ = ti_formats::safetensors_io::read_all("fuzz", data);
    let _ = ti_formats::embeddings::read_bytes("fuzz.safetensors", data);
});
