//! A seed for runs given none. It is logged (train) or written into the file name and PNG
//! metadata (generate), so any run can be repeated with `--seed`.

/// A seed from the clock, below 2^32 (short to type, and within every generator's range).
pub fn clock_seed() -> u64 {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    (nanos % (1u128 << 32)) as u64
}
