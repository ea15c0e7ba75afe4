//! A real registry for tests: Debian's `docker-registry` (distribution
//! 2.8) on 127.0.0.1:<free port> with its own storage directory, started by
//! the test and killed when dropped (the builder's push/pull tests, the
//! installer's update test, and the e2e update scenarios).

use std::fs;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// A `docker-registry` on 127.0.0.1:<free port>, killed on drop.
pub struct Registry {
    child: Child,
    pub port: u16,
    pub root: tempfile::TempDir,
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Registry {
    pub fn start() -> Registry {
        Self::start_with(None, None)
    }

    /// With `Some((user, password))`, the registry requires htpasswd basic
    /// auth for everything; with `Some(dir)` it serves HTTPS with
    /// `dir/leaf.pem` and `dir/leaf.key`.
    ///
    /// The port is picked free and then released before the registry binds
    /// it, so another process may take it in between (seen in CI as
    /// "Connection refused" from a registry that had exited with "address
    /// already in use"): such a start is retried on a new port.
    pub fn start_with(user: Option<(&str, &str)>, tls: Option<&Path>) -> Registry {
        let mut last = String::new();
        for _ in 0..5 {
            match Self::try_start(user, tls) {
                Ok(r) => return r,
                Err(log) if log.contains("address already in use") => last = log,
                Err(log) => panic!("registry did not start: {log}"),
            }
        }
        panic!("registry did not start after 5 ports: {last}")
    }

    /// One start on a free port; `Err` carries the registry's log. Ready
    /// means the registry said it listens *and* a TCP connect succeeds
    /// (a connect alone could reach whoever else holds the port).
    fn try_start(user: Option<(&str, &str)>, tls: Option<&Path>) -> Result<Registry, String> {
        let root = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut cfg = format!(
            "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
            root.path().join("store").display()
        );
        if let Some(dir) = tls {
            cfg.push_str(&format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                dir.join("leaf.pem").display(),
                dir.join("leaf.key").display()
            ));
        }
        if let Some((u, p)) = user {
            let htpasswd = root.path().join("htpasswd");
            let o = Command::new("htpasswd")
                .args(["-Bbn", u, p])
                .output()
                .expect("htpasswd (apache2-utils)");
            assert!(o.status.success());
            fs::write(&htpasswd, &o.stdout).unwrap();
            cfg.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: cairn-test\n    path: {}\n",
                htpasswd.display()
            ));
        }
        let cfg_path = root.path().join("config.yml");
        fs::write(&cfg_path, cfg).unwrap();
        let log = fs::File::create(root.path().join("registry.log")).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&cfg_path)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("docker-registry (Debian package docker-registry)");
        let mut r = Registry { child, port, root };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if r.log().contains("listening on") && TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(r);
            }
            if let Ok(Some(_)) = r.child.try_wait() {
                return Err(r.log());
            }
            if Instant::now() > deadline {
                let log = r.log();
                r.stop();
                return Err(format!("not listening after 20 s: {log}"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.root.path().join("registry.log")).unwrap_or_default()
    }

    /// Access-log lines of GETs of a blob.
    pub fn blob_gets(&self, hex: &str) -> usize {
        let needle = format!("\"GET /v2/cairn/blobs/sha256:{hex} ");
        self.log().lines().filter(|l| l.contains(&needle)).count()
    }

    /// Where the registry keeps a blob's bytes (distribution's layout).
    pub fn blob_data(&self, hex: &str) -> PathBuf {
        self.root
            .path()
            .join("store/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }
}

impl Registry {
    /// Stops the registry now (a test of a registry gone away).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}
