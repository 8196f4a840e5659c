//! The wallet binary.
fn main() {}
