//! spean-bench: being written.

fn main() {}
