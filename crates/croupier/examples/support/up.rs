//! `just up`'s stack for the benchmarks that run on it (`bench-degraded`, `bench-bets`), and
//! `just up-cluster`'s for the chaos scenarios (`just chaos`, and its subset in `just test`):
//! `ops/scripts/stack.sh up|up-cluster` in a temporary data directory, stopped with
//! `stack.sh down` when dropped. Included with `#[path]` by each of them.

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
    /// The (first) gateway's address.
    pub http_addr: String,
    /// Every gateway's WebSocket URL (one on `just up`, two on `just up-cluster`).
    pub ws_urls: Vec<String>,
    /// The build the stack runs: `release` or `debug`.
    pub profile: &'static str,
}

/// Which recipe starts the stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(dead_code)]
pub enum Topology {
    /// `just up`: one NATS, one `croupier run all`.
    Single,
    /// `just up-cluster`: three NATS nodes, every role twice.
    Cluster,
}

impl Up {
    /// Starts `just up`'s stack with `vars` on top of the defaults (a free gateway address, the
    /// release build, warnings only in the logs, no outside NATS or Postgres), and waits until
    /// the gateway answers and the endpoints file is written.
    #[allow(dead_code)]
    pub async fn start(prefix: &str, vars: &[(&str, &str)]) -> Result<Up> {
        Self::start_as(Topology::Single, "release", prefix, vars).await
    }

    /// Starts the stack of `topology` from the `profile` build; with the cluster, waits until
    /// every gateway answers.
    pub async fn start_as(
        topology: Topology,
        profile: &'static str,
        prefix: &str,
        vars: &[(&str, &str)],
    ) -> Result<Up> {
        let data = tempfile::Builder::new().prefix(prefix).tempdir()?;
        let http_addr = free_addr();
        let log = std::fs::File::create(data.path().join("up.log"))?;
        let mut command = Command::new(root().join("ops/scripts/stack.sh"));
        command
            .arg(match topology {
                Topology::Single => "up",
                Topology::Cluster => "up-cluster",
            })
            .env("CROUPIER_DATA_DIR", data.path())
            .env("CROUPIER_PROFILE", profile)
            .env("CROUPIER_HTTP_ADDR", &http_addr)
            // `CROUPIER_STACK_RUST_LOG` (say `info`) to see more of the services when chasing a failure.
            .env(
                "RUST_LOG",
                std::env::var("CROUPIER_STACK_RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
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
        let mut up = Up {
            data,
            child,
            http_addr,
            ws_urls: Vec::new(),
            profile,
        };
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            let endpoints = up.endpoints();
            if endpoints.contains_key("DATABASE_URL") {
                let urls: Vec<String> = match endpoints.get("CROUPIER_WS_URLS") {
                    Some(list) => list.split(',').map(str::to_string).collect(),
                    None => vec![format!("ws://{}/ws", up.http_addr)],
                };
                let mut ready = true;
                for url in &urls {
                    let addr = url.trim_start_matches("ws://").trim_end_matches("/ws");
                    ready &= tokio::net::TcpStream::connect(addr).await.is_ok();
                }
                if ready {
                    up.http_addr = urls[0]
                        .trim_start_matches("ws://")
                        .trim_end_matches("/ws")
                        .to_string();
                    up.ws_urls = urls;
                    return Ok(up);
                }
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
        let mut command = Command::new(root().join("target").join(self.profile).join("croupier"));
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

    /// The pid `stack.sh` recorded for one of its processes (`croupier`, `nats`, `postgres`;
    /// on the cluster `nats-1`, `gs-2`, `gateway-1`, …).
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
        // `CROUPIER_KEEP_STACK=1` keeps the data directory (every process's log) to read after.
        if std::env::var_os("CROUPIER_KEEP_STACK").is_some() {
            self.data.disable_cleanup(true);
            eprintln!("stack data kept in {}", self.data.path().display());
        }
    }
}

fn free_addr() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").to_string()
}
