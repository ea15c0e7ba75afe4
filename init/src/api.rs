//! The node API on the node (issue 14): init's half. With `[api]` in the
//! machine config, init writes the identity for cairnd on /run, supervises
//! cairnd as an unprivileged service, and serves the control socket that
//! cairnd asks for what only PID 1 can do. Nothing here is needed to boot
//! or to bless: a failure is logged and the node goes on.

use crate::control::{Node, Paths, Power, Server};
use crate::health::CheckResult;
use crate::supervisor::Console;
use contract::api::{Api, CAIRND, GID, SECRETS_DIR, SERVICE_NAME, UID};
use contract::machine::{Health, Restart, Service};
use contract::update::{Attempt, Update};
use serde_json::{json, Value};
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The file names cairnd reads in its `--secrets` directory (api::pki).
const SECRET_FILES: [&str; 3] = ["ca.crt", "server.crt", "server.key"];

/// Writes `[api]`'s PEM blocks to `dir` for cairnd: the directory 0700 and
/// the files 0600, all owned by cairnd, written fresh at every boot (/run
/// is RAM). The key's text is never logged.
pub fn write_secrets(api: &Api, dir: &Path, owner: (u32, u32)) -> io::Result<()> {
    let _ = fs::remove_dir_all(dir);
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    std::os::unix::fs::chown(dir, Some(owner.0), Some(owner.1))?;
    for (name, pem) in SECRET_FILES.iter().zip([&api.ca, &api.crt, &api.key]) {
        let p = dir.join(name);
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&p)?;
        f.write_all(pem.trim().as_bytes())?;
        f.write_all(b"\n")?;
        std::os::unix::fs::chown(&p, Some(owner.0), Some(owner.1))?;
    }
    Ok(())
}

/// cairnd as a supervised service: its own uid and gid, no capabilities
/// (its port is above 1024 unless `listen` says otherwise, which then
/// fails to bind and is logged), restarted with backoff whenever it ends.
pub fn service(api: &Api) -> Service {
    Service {
        name: SERVICE_NAME.into(),
        exec: CAIRND.into(),
        args: vec![
            "--listen".into(),
            api.listen.clone(),
            "--secrets".into(),
            SECRETS_DIR.into(),
        ],
        restart: Restart::Always,
        user: UID,
        group: GID,
        capabilities: Vec::new(),
    }
}

/// What the control socket does on a real node.
pub struct LiveNode {
    pub health: Vec<Health>,
    pub console: Console,
    /// The boot disk (`/dev/vda`).
    pub disk: PathBuf,
    pub running: String,
    pub state: PathBuf,
    pub work: PathBuf,
}

impl Node for LiveNode {
    fn health(&self) -> Vec<CheckResult> {
        crate::health::run_now(&self.health, &self.console)
    }

    /// The main loop's own clean shutdown (services stopped, filesystems
    /// unmounted): the signals it waits for, sent to this process.
    fn power(&self, how: Power) {
        let sig = match how {
            Power::Reboot => libc::SIGTERM,
            Power::PowerOff => libc::SIGUSR2,
        };
        // SAFETY: signalling ourselves; the signal is blocked in every
        // thread and taken by the main loop's sigtimedwait.
        unsafe { libc::kill(libc::getpid(), sig) };
    }

    fn rollback(&self) -> Result<Value, String> {
        let r = installer::rollback::rollback_live(&self.disk).map_err(|e| e.to_string())?;
        Ok(json!({
            "from_version": r.from_version,
            "to_version": r.to_version,
            "to_slot": r.to_slot,
            "renames": r.renames,
        }))
    }

    fn upgrade(&self, cfg: &Update) -> Result<Attempt, String> {
        crate::update::check_now(cfg, &self.disk, &self.running, &self.state, &self.work)
    }

    fn upgrade_bundle(
        &self,
        source: &str,
        size: u64,
        r: Box<dyn io::Read + Send>,
    ) -> Result<Attempt, String> {
        crate::update::install_stream_now(
            source,
            size,
            r,
            &self.disk,
            &self.running,
            &self.state,
            &self.work,
        )
    }
}

/// Binds the control socket and serves it on its own threads.
pub fn serve_control(node: LiveNode, console: Console) {
    let server = Arc::new(Server {
        paths: Paths::node(),
        ring: &crate::ring::RING,
        node: Arc::new(node),
        console,
        peers: crate::control::peer_allowed,
    });
    match server.bind() {
        Ok(l) => {
            if let Err(e) = server.clone().spawn(l) {
                crate::say!("control socket: no thread: {e}");
            }
        }
        Err(e) => crate::say!(
            "control socket {}: {e}; the node API cannot reach init",
            contract::control::SOCKET
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    #[test]
    fn secrets_are_private_and_complete() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("api");
        let me = (unsafe { libc::getuid() }, unsafe { libc::getgid() });
        let api = Api {
            listen: "0.0.0.0:50000".into(),
            ca: "CA".into(),
            crt: "CRT".into(),
            key: "KEY".into(),
        };
        // A stale file from an earlier run is gone afterwards.
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("stale"), "x").unwrap();
        write_secrets(&api, &dir, me).unwrap();
        let m = fs::metadata(&dir).unwrap();
        assert_eq!(m.permissions().mode() & 0o777, 0o700);
        let mut names: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["ca.crt", "server.crt", "server.key"]);
        for (n, want) in SECRET_FILES.iter().zip(["CA\n", "CRT\n", "KEY\n"]) {
            let m = fs::metadata(dir.join(n)).unwrap();
            assert_eq!(m.permissions().mode() & 0o777, 0o600, "{n}");
            assert_eq!(m.uid(), me.0);
            assert_eq!(fs::read_to_string(dir.join(n)).unwrap(), want);
        }
    }

    #[test]
    fn cairnd_runs_unprivileged_and_always_restarts() {
        let api = Api {
            listen: "127.0.0.1:50001".into(),
            ca: String::new(),
            crt: String::new(),
            key: String::new(),
        };
        let s = service(&api);
        assert_eq!((s.user, s.group), (UID, GID));
        assert!(s.capabilities.is_empty());
        assert_eq!(s.restart, Restart::Always);
        assert_eq!(s.exec, CAIRND);
        assert_eq!(
            s.args,
            ["--listen", "127.0.0.1:50001", "--secrets", SECRETS_DIR]
        );
    }
}
