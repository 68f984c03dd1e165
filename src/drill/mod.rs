//! Crash-recovery drills and fault injection (cargo feature `drill`).

pub mod proxy;
