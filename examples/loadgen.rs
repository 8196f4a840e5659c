//! Load generator (filled in below).
fn main() {}
