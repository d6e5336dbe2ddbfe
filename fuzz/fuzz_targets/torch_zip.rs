//! torch.save containers (zip and legacy) and every tensor they reference.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(tf) = ti_formats::torch_file::TorchFile::from_bytes("fuzz", data.to_vec()) {
        for (_, t) in tf.tensors() {
            let _ = tf.tensor(t);
        }
    }
    let _ = ti_formats::embeddings::read_bytes("fuzz.pt", data);
});
