//! Failpoints: named places on the durability path where a drill can kill
//! the process (SIGKILL, as `kill -9` would).
//!
//! Compiled in only with the cargo feature `drill`; in other builds [`hit`]
//! is an empty inline function. A drill build dies at the first hit of the
//! failpoint named by the environment variable `LANDFALL_FAILPOINT`.

/// After a batch's pending records are flushed, before insertAll.
pub const AFTER_WAL_PENDING: &str = "after-wal-pending";
/// After insertAll returned, before the landed marks are written.
pub const AFTER_INSERT_ALL: &str = "after-insert-all";
/// After the landed marks are applied, before they are flushed.
pub const AFTER_LANDED_APPLY: &str = "after-landed-apply";
/// After the landed marks are flushed, before the offsets are committed.
pub const AFTER_LANDED_FLUSH: &str = "after-landed-flush";
/// After a MERGE statement, before the watermark is stored.
pub const MID_MERGE: &str = "mid-merge";

/// Every failpoint, in the order of the write path.
pub const ALL: &[&str] = &[AFTER_WAL_PENDING, AFTER_INSERT_ALL, AFTER_LANDED_APPLY, AFTER_LANDED_FLUSH, MID_MERGE];

#[cfg(feature = "drill")]
pub fn hit(name: &'static str) {
    static ACTIVE: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    let active = ACTIVE.get_or_init(|| std::env::var("LANDFALL_FAILPOINT").ok().filter(|s| !s.is_empty()));
    if active.as_deref() == Some(name) {
        eprintln!("landfall: failpoint {name} hit; killing the process with SIGKILL");
        // SAFETY: raising a signal has no memory-safety preconditions.
        unsafe {
            libc::raise(libc::SIGKILL);
        }
    }
}

#[cfg(not(feature = "drill"))]
#[inline(always)]
pub fn hit(_name: &'static str) {}
