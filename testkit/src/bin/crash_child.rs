//! Crash-test child (filled in below).
fn main() {}
