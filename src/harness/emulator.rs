//! A local BigQuery emulator of its own, started with the project's
//! `scripts/bq-emulator.sh` (which installs it on first use): for a drill
//! given no endpoint, and for each end-to-end test binary (a fresh catalog
//! per binary: the emulator's table lookups slow down with every table it
//! holds, so one emulator shared by the whole test run made each later test
//! slower).

use std::path::PathBuf;
use std::process::Command;

/// A running emulator; stopped (and its data removed) on drop, or, if it
/// was started with [`Emulator::start_owned`], when this process exits.
pub struct Emulator {
    pub endpoint: String,
    dir: tempfile::TempDir,
    script: PathBuf,
}

impl Emulator {
    /// Starts an emulator that lives until this value is dropped.
    pub fn start() -> anyhow::Result<Emulator> {
        Emulator::start_with(false)
    }

    /// Starts an emulator that also stops (and deletes its data) by itself
    /// once this process has exited: for a value kept in a `static`, which
    /// is never dropped.
    pub fn start_owned() -> anyhow::Result<Emulator> {
        Emulator::start_with(true)
    }

    fn start_with(owned: bool) -> anyhow::Result<Emulator> {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/bq-emulator.sh");
        anyhow::ensure!(
            script.exists(),
            "{} is missing: pass the endpoint (LANDFALL_BQ_ENDPOINT) of a running emulator instead",
            script.display()
        );
        let dir = tempfile::Builder::new().prefix("landfall-emulator").tempdir()?;
        let run = |args: &[&std::ffi::OsStr]| -> anyhow::Result<()> {
            let mut cmd = Command::new("bash");
            cmd.arg(&script).args(args);
            if owned {
                cmd.env("LANDFALL_EMULATOR_OWNER_PID", std::process::id().to_string()).env("LANDFALL_EMULATOR_CLEANUP_DIR", dir.path());
            }
            let status = cmd.status()?;
            anyhow::ensure!(status.success(), "{} {:?} failed", script.display(), args);
            Ok(())
        };
        run(&["setup".as_ref()])?;
        let data = dir.path().join("emu");
        let port_file = dir.path().join("endpoint");
        run(&["start".as_ref(), data.as_os_str(), port_file.as_os_str()])?;
        let endpoint = std::fs::read_to_string(&port_file)?.trim().to_owned();
        Ok(Emulator { endpoint, dir, script })
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        let _ = Command::new("bash").arg(&self.script).arg("stop").arg(self.dir.path().join("emu")).status();
    }
}
