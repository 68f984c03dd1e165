//! Starting a local BigQuery emulator for a drill that was given no endpoint,
//! with the project's own `scripts/bq-emulator.sh` (which installs it on first use).

use std::path::PathBuf;
use std::process::Command;

/// A running emulator; stopped (and its data removed) on drop.
pub struct Emulator {
    pub endpoint: String,
    dir: tempfile::TempDir,
    script: PathBuf,
}

impl Emulator {
    pub async fn start() -> anyhow::Result<Emulator> {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/bq-emulator.sh");
        anyhow::ensure!(
            script.exists(),
            "no --endpoint given and {} is missing: pass --endpoint (or LANDFALL_BQ_ENDPOINT) of a running emulator",
            script.display()
        );
        let dir = tempfile::Builder::new().prefix("landfall-drill-emulator").tempdir()?;
        let run = |args: &[&std::ffi::OsStr]| -> anyhow::Result<()> {
            let status = Command::new("bash").arg(&script).args(args).status()?;
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
