//! A1111 PNG embeddings: text chunks, base64 JSON, and the pixel-encoded copy.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let mut bytes = b"\x89PNG\r\n\x1a\n".to_vec();
    bytes.extend_from_slice(data.strip_prefix(b"\x89PNG\r\n\x1a\n").unwrap_or(data));
    let _ = ti_formats::embeddings::read_bytes("fuzz.png", &bytes);
});
