//! CLIP tokenizer (being written).
