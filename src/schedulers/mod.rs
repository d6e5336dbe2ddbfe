//! Noise schedulers (being written).
