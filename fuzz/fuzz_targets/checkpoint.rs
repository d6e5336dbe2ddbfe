//! Training checkpoints (`.ckpt`): the unpickler in checkpoint mode, where the classes of
//! Lightning, OmegaConf, numpy and friends become inert values anywhere in the tree, and
//! torch.save containers read in that mode down to the tensors of their state dict.
#![no_main]
use ti_formats::pickle::{self, Mode};
use ti_formats::torch_file::TorchFile;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = pickle::load_mode(data, 0, "fuzz.ckpt", Mode::Checkpoint);
    if let Ok(tf) = TorchFile::from_bytes_checkpoint("fuzz.ckpt", data.to_vec()) {
        for (_, t) in tf.state_dict_tensors() {
            let _ = tf.tensor(t);
        }
    }
});
