//! `just up`'s stack for the benchmarks that run on it (`bench-degraded`, `bench-bets`):
//! `ops/scripts/stack.sh up` in a temporary data directory, with the release build, stopped
//! with `stack.sh down` when dropped. Included with `#[path]` by each of them.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::time::Instant;

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The release binary the stack runs.
pub fn bin() -> PathBuf {
    root().join("target/release/croupier")
}

pub struct Up {
    pub data: tempfile::TempDir,
    child: Child,
    pub http_addr: String,
}

impl Up {
    /// Starts the stack with `vars` on top of the defaults (a free gateway address, the
    /// release build, warnings only in the logs, no outside NATS or Postgres), and waits until
    /// the gateway answers and the endpoints file is written.
    pub async fn start(prefix: &str, vars: &[(&str, &str)]) -> Result<Up> {
        let data = tempfile::Builder::new().prefix(prefix).tempdir()?;
        let http_addr = free_addr();
        let log = std::fs::File::create(data.path().join("up.log"))?;
        let mut command = Command::new(root().join("ops/scripts/stack.sh"));
        command
            .arg("up")
            .env("CROUPIER_DATA_DIR", data.path())
            .env("CROUPIER_PROFILE", "release")
            .env("CROUPIER_HTTP_ADDR", &http_addr)
            .env("RUST_LOG", "warn")
            .env_remove("NATS_URL")
            .env_remove("DATABASE_URL")
            .env_remove("CROUPIER_NATS_PREFIX");
        for (name, value) in vars {
            command.env(name, value);
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("start stack.sh up")?;
        let up = Up {
            data,
            child,
            http_addr,
        };
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            let ready = tokio::net::TcpStream::connect(&up.http_addr).await.is_ok()
                && up.endpoints().contains_key("DATABASE_URL");
            if ready {
                return Ok(up);
            }
            if Instant::now() > deadline {
                bail!(
                    "the stack did not come up; see {}",
                    up.data.path().join("up.log").display()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// `stack.sh <args>` on this stack (a drill, say).
    pub fn stack(&self, args: &[&str]) -> Command {
        let mut command = Command::new(root().join("ops/scripts/stack.sh"));
        command
            .args(args)
            .env("CROUPIER_DATA_DIR", self.data.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        command
    }

    /// The stack's `endpoints.env`, as a map.
    pub fn endpoints(&self) -> HashMap<String, String> {
        std::fs::read_to_string(self.data.path().join("endpoints.env"))
            .unwrap_or_default()
            .lines()
            .filter_map(|line| {
                let (key, value) = line.split_once('=')?;
                Some((key.to_string(), value.trim_matches('\'').to_string()))
            })
            .collect()
    }

    /// `croupier` pointed at this stack through its endpoints file, and nothing else.
    pub fn croupier(&self) -> Command {
        let mut command = Command::new(bin());
        command
            .env(
                "CROUPIER_ENDPOINTS_FILE",
                self.data.path().join("endpoints.env"),
            )
            .env_remove("NATS_URL")
            .env_remove("DATABASE_URL")
            .env_remove("CROUPIER_JWT_SECRET")
            .env_remove("CROUPIER_NATS_PREFIX")
            .stdin(Stdio::null());
        command
    }

    /// The pid `stack.sh` recorded for one of its processes (`croupier`, `nats`, `postgres`).
    #[allow(dead_code)]
    pub fn pid(&self, name: &str) -> Option<u32> {
        std::fs::read_to_string(self.data.path().join(format!("run/{name}.pid")))
            .ok()?
            .trim()
            .parse()
            .ok()
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        let _ = self.stack(&["down"]).status();
        let _ = self.child.wait();
    }
}

fn free_addr() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").to_string()
}
