//! The unpickler on arbitrary bytes: errors are fine, panics, hangs and huge allocations are not.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = ti_formats::pickle::load(data, 0, "fuzz");
});
