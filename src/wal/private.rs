//! The WAL holds row data (names, e-mail addresses, amounts) until it is
//! pruned: only its owner may read it (docs/security.md).
//!
//! Guarantees, whatever the umask:
//!
//! * a WAL directory landfall creates is created mode 0700 (no moment at
//!   which another user could open it);
//! * on every open, the directory is made 0700 and everything in it 0700
//!   (directories) or 0600 (files); an entry that group or others could
//!   read or write is reported (WARN, naming it and its old mode) and
//!   fixed. An entry landfall cannot fix (owned by another user) is
//!   reported with what to do, and the open goes on: the directory's 0700
//!   already keeps other users out of what is under it.
//!
//! Files sled creates later are under the 0700 directory; `landfall run`
//! also sets the process umask to 0077 (`main.rs`).

use std::path::{Path, PathBuf};

/// What [`secure`] found and did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Secured {
    /// Entries that group or others could read or write, with their old mode, now fixed.
    pub fixed: Vec<(PathBuf, u32)>,
    /// Entries still open to group or others (not ours to change), with the error.
    pub unfixed: Vec<(PathBuf, String)>,
}

/// Creates `dir` (and missing parents) if needed; the WAL directory itself mode 0700.
pub fn create_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)?;
        }
        match std::fs::DirBuilder::new().mode(0o700).create(dir) {
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
            other => other,
        }
    }
    #[cfg(not(unix))]
    std::fs::create_dir_all(dir)
}

/// Makes `dir` and everything under it private to its owner (module docs).
pub fn secure(dir: &Path) -> Secured {
    let mut out = Secured::default();
    #[cfg(unix)]
    visit(dir, &mut out);
    for (path, mode) in &out.fixed {
        tracing::warn!(path = %path.display(), mode = format!("{mode:o}"),
            "the WAL was readable or writable by group or others (it holds row data): made private to its owner");
    }
    for (path, error) in &out.unfixed {
        tracing::warn!(path = %path.display(), error = %error,
            "a WAL entry is open to group or others and landfall cannot change it: chown it to the user landfall runs as \
             (or chmod go-rwx it); the WAL directory itself keeps others out");
    }
    out
}

#[cfg(unix)]
fn visit(path: &Path, out: &mut Secured) {
    use std::os::unix::fs::PermissionsExt;
    let Ok(meta) = std::fs::symlink_metadata(path) else { return };
    if meta.file_type().is_symlink() {
        return;
    }
    let mode = meta.permissions().mode() & 0o7777;
    let want = if meta.is_dir() { 0o700 } else { 0o600 };
    if mode & 0o077 != 0 || mode & want != want {
        match std::fs::set_permissions(path, std::fs::Permissions::from_mode((mode & !0o077) | want)) {
            Ok(()) if mode & 0o077 != 0 => out.fixed.push((path.to_owned(), mode)),
            Ok(()) => {}
            Err(e) if mode & 0o077 != 0 => out.unfixed.push((path.to_owned(), e.to_string())),
            Err(_) => {}
        }
    }
    if meta.is_dir() {
        if let Ok(entries) = std::fs::read_dir(path) {
            for e in entries.flatten() {
                visit(&e.path(), out);
            }
        }
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn a_new_wal_is_private_and_an_open_one_is_reported_and_fixed() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("nested/wal");
        {
            let wal = crate::wal::Wal::open(&dir).unwrap();
            let mut b = crate::wal::WalBatch::default();
            b.add_to_counter("x", 1);
            wal.flush(&b).unwrap();
        }
        // sled's own files are created with the umask's modes (0644 under
        // 022): every one is private after the open.
        let mut seen = 0;
        let mut walk = vec![dir.clone()];
        while let Some(p) = walk.pop() {
            let m = mode(&p);
            if p.is_dir() {
                assert_eq!(m, 0o700, "{}", p.display());
                walk.extend(std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
            } else {
                assert_eq!(m, 0o600, "{}", p.display());
                seen += 1;
            }
        }
        assert!(seen >= 2, "sled wrote files: {seen}");
        // Someone opened it up: the next open says so and closes it again.
        let file = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).find(|p| p.is_file()).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let found = secure(&dir);
        assert_eq!(found.fixed, vec![(dir.clone(), 0o755), (file.clone(), 0o644)]);
        assert!(found.unfixed.is_empty());
        assert_eq!((mode(&dir), mode(&file)), (0o700, 0o600));
        assert_eq!(secure(&dir), Secured::default(), "nothing left to fix");
    }
}
