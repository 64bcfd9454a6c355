//! Postgres for tests: ephemeral clusters (run as the `postgres` user when we are root), and a
//! fresh database per test cloned from a template that is prepared once per server.

use std::collections::HashMap;
use std::fmt::Display;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio_postgres::NoTls;

use crate::process::{Slot, Supervised, run, running_as_root, wait_until};
use crate::{HarnessError, free_port};

const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// The advisory lock key under which templates are created, so that test processes sharing a
/// `DATABASE_URL` server do not build the same template twice.
const TEMPLATE_LOCK: i64 = 0x6372_6f75_7069_6572; // "croupier"

/// How a private server is configured.
#[derive(Debug, Clone, Copy, Default)]
pub struct PgServerOptions {
    /// Keep `fsync`, `synchronous_commit` and `full_page_writes` on, as in production.
    /// Tests leave it off for speed; benchmarks turn it on so figures mean something.
    pub durable: bool,
}

/// Where a test's databases come from: a server, and the templates prepared on it.
#[derive(Debug)]
pub struct TestPostgres {
    admin_url: String,
    /// A server we did not start (`DATABASE_URL`): drop test databases after use.
    external: bool,
    templates: Mutex<HashMap<String, Arc<tokio::sync::OnceCell<()>>>>,
}

/// One test's own database. On a server the harness started, it disappears with the server; on
/// a `DATABASE_URL` server it is dropped when this value is.
#[derive(Debug)]
pub struct TestDb {
    pub url: String,
    pub name: String,
    admin_url: String,
    external: bool,
}

/// The Postgres for this test process: `DATABASE_URL` when set, otherwise an ephemeral cluster
/// shared by the tests of this process.
pub fn postgres() -> Result<&'static TestPostgres, HarnessError> {
    static SHARED: OnceLock<Result<TestPostgres, String>> = OnceLock::new();
    SHARED
        .get_or_init(|| shared_postgres().map_err(|e| e.to_string()))
        .as_ref()
        .map_err(|detail| HarnessError::Command {
            what: "provide a Postgres server".into(),
            detail: detail.clone(),
        })
}

fn shared_postgres() -> Result<TestPostgres, HarnessError> {
    if let Some(url) = std::env::var("DATABASE_URL").ok().filter(|u| !u.is_empty()) {
        return Ok(TestPostgres::new(url, true));
    }
    let server = PgServer::start_with(PgServerOptions::default(), true)?;
    let url = server.url();
    std::mem::forget(server.detach());
    Ok(TestPostgres::new(url, false))
}

impl TestPostgres {
    fn new(admin_url: String, external: bool) -> Self {
        Self {
            admin_url,
            external,
            templates: Mutex::new(HashMap::new()),
        }
    }

    /// The URL of the server's maintenance database.
    pub fn admin_url(&self) -> &str {
        &self.admin_url
    }

    /// A fresh, empty database.
    pub async fn empty_database(&self) -> Result<TestDb, HarnessError> {
        self.create_database(None).await
    }

    /// A fresh database cloned from the template `key`, which `init` prepares (e.g. migrates)
    /// the first time it is asked for on this server. `key` must change whenever what `init`
    /// does changes (e.g. include a hash of the migrations), since a `DATABASE_URL` server keeps
    /// templates across runs. `init` gets the template's URL and must close its connections
    /// before it returns: Postgres cannot clone a database somebody is connected to.
    pub async fn database<F, Fut, E>(&self, key: &str, init: F) -> Result<TestDb, HarnessError>
    where
        F: FnOnce(String) -> Fut,
        Fut: Future<Output = Result<(), E>>,
        E: Display,
    {
        let template = format!("tpl_{}", sanitize(key));
        let cell = {
            let mut templates = self.templates.lock().unwrap_or_else(|e| e.into_inner());
            templates.entry(template.clone()).or_default().clone()
        };
        cell.get_or_try_init(|| self.prepare_template(&template, init))
            .await?;
        self.create_database(Some(&template)).await
    }

    /// A fresh database holding a copy of `source` (which nobody may be connected to while it
    /// is copied: the copy waits a few seconds for sessions on their way out).
    pub async fn copy_of(&self, source: &TestDb) -> Result<TestDb, HarnessError> {
        self.create_database(Some(&source.name)).await
    }

    async fn prepare_template<F, Fut, E>(&self, template: &str, init: F) -> Result<(), HarnessError>
    where
        F: FnOnce(String) -> Fut,
        Fut: Future<Output = Result<(), E>>,
        E: Display,
    {
        let admin = connect(&self.admin_url).await?;
        admin
            .execute("SELECT pg_advisory_lock($1)", &[&TEMPLATE_LOCK])
            .await
            .map_err(HarnessError::pg("take the template lock"))?;
        let state: Option<bool> = admin
            .query_opt(
                "SELECT datistemplate FROM pg_database WHERE datname = $1",
                &[&template],
            )
            .await
            .map_err(HarnessError::pg("look up the template"))?
            .map(|row| row.get(0));
        if state != Some(true) {
            if state == Some(false) {
                // A template whose preparation was interrupted: start it again.
                admin
                    .batch_execute(&format!("DROP DATABASE \"{template}\" WITH (FORCE)"))
                    .await
                    .map_err(HarnessError::pg("drop an unfinished template"))?;
            }
            admin
                .batch_execute(&format!("CREATE DATABASE \"{template}\""))
                .await
                .map_err(HarnessError::pg("create the template"))?;
            init(with_database(&self.admin_url, template))
                .await
                .map_err(|e| HarnessError::Command {
                    what: format!("prepare template {template}"),
                    detail: e.to_string(),
                })?;
            admin
                .batch_execute(&format!(
                    "ALTER DATABASE \"{template}\" WITH IS_TEMPLATE true ALLOW_CONNECTIONS false"
                ))
                .await
                .map_err(HarnessError::pg("mark the template"))?;
        }
        admin
            .execute("SELECT pg_advisory_unlock($1)", &[&TEMPLATE_LOCK])
            .await
            .map_err(HarnessError::pg("release the template lock"))?;
        Ok(())
    }

    async fn create_database(&self, template: Option<&str>) -> Result<TestDb, HarnessError> {
        let name = format!("test_{}", &uuid::Uuid::new_v4().simple().to_string()[..16]);
        let admin = connect(&self.admin_url).await?;
        let sql = match template {
            Some(template) => format!("CREATE DATABASE \"{name}\" TEMPLATE \"{template}\""),
            None => format!("CREATE DATABASE \"{name}\""),
        };
        let mut attempts = 0;
        loop {
            match admin.batch_execute(&sql).await {
                Ok(()) => break,
                // The template's last session may still be on its way out (55006: object in use).
                Err(e)
                    if attempts < 100
                        && e.code() == Some(&tokio_postgres::error::SqlState::OBJECT_IN_USE) =>
                {
                    attempts += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => return Err(HarnessError::pg(format!("create database {name}"))(e)),
            }
        }
        Ok(TestDb {
            url: with_database(&self.admin_url, &name),
            name,
            admin_url: self.admin_url.clone(),
            external: self.external,
        })
    }
}

impl TestDb {
    /// A plain connection to this database (as the harness's superuser), its connection task
    /// driven on the current runtime.
    pub async fn client(&self) -> Result<tokio_postgres::Client, HarnessError> {
        connect(&self.url).await
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if !self.external {
            return;
        }
        // Drop runs inside a test's runtime, which cannot be blocked on; a short-lived thread
        // with its own runtime does the clean-up.
        let admin_url = self.admin_url.clone();
        let name = self.name.clone();
        let _ = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async {
                if let Ok(admin) = connect(&admin_url).await {
                    let _ = admin
                        .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                        .await;
                }
            });
        })
        .join();
    }
}

/// A plain connection to `url` (tests use it as the harness's superuser), its connection
/// task driven on the current runtime.
pub async fn connect(url: &str) -> Result<tokio_postgres::Client, HarnessError> {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .map_err(HarnessError::pg(format!("connect to {url}")))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// `url` with its database replaced by `database` (URL form: `postgres://user@host:port/db?..`).
fn with_database(url: &str, database: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("postgres", url));
    let (before_query, query) = match rest.split_once('?') {
        Some((before, query)) => (before, Some(query)),
        None => (rest, None),
    };
    let authority = before_query.split('/').next().unwrap_or(before_query);
    let mut out = format!("{scheme}://{authority}/{database}");
    if let Some(query) = query {
        out.push('?');
        out.push_str(query);
    }
    out
}

fn sanitize(key: &str) -> String {
    key.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .take(50)
        .collect()
}

/// The directory holding `initdb` and `postgres`: `CROUPIER_PG_BIN`, else the newest
/// `/usr/lib/postgresql/<major>/bin`.
fn postgres_bin_dir() -> Result<PathBuf, HarnessError> {
    if let Some(dir) = std::env::var_os("CROUPIER_PG_BIN") {
        return Ok(PathBuf::from(dir));
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .map_err(|_| HarnessError::PostgresBinariesMissing)?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let major = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").is_file().then_some((major, bin))
        })
        .collect();
    found.sort();
    found
        .pop()
        .map(|(_, bin)| bin)
        .ok_or(HarnessError::PostgresBinariesMissing)
}

/// A Postgres cluster owned by a test: stopped when dropped; stoppable, restartable and
/// pausable, for tests of outages.
#[derive(Debug)]
pub struct PgServer {
    bin: PathBuf,
    dir: Option<tempfile::TempDir>,
    dir_path: PathBuf,
    port: u16,
    options: PgServerOptions,
    as_postgres_user: bool,
    shared: bool,
    process: Slot,
}

impl PgServer {
    /// Initialises and starts a private cluster on a free port.
    pub fn start(options: PgServerOptions) -> Result<Self, HarnessError> {
        Self::start_with(options, false)
    }

    fn start_with(options: PgServerOptions, shared: bool) -> Result<Self, HarnessError> {
        let bin = postgres_bin_dir()?;
        let as_postgres_user = running_as_root();
        let dir = tempfile::Builder::new()
            .prefix("croupier-pg-")
            .tempdir()
            .map_err(HarnessError::io("create a Postgres directory"))?;
        let dir_path = dir.path().to_path_buf();
        let mut server = Self {
            bin,
            dir: Some(dir),
            dir_path,
            port: 0,
            options,
            as_postgres_user,
            shared,
            process: Slot::empty("postgres"),
        };
        server.initdb()?;
        let mut last_error = None;
        for _ in 0..3 {
            server.port = free_port()?;
            match server.launch() {
                Ok(()) => return Ok(server),
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.unwrap_or(HarnessError::PostgresBinariesMissing))
    }

    fn data_dir(&self) -> PathBuf {
        self.dir_path.join("data")
    }

    fn socket_dir(&self) -> PathBuf {
        self.dir_path.join("sock")
    }

    /// A command run as the `postgres` user when we are root (Postgres refuses to run as root).
    fn command(&self, program: &Path) -> Command {
        if self.as_postgres_user {
            let mut command = Command::new("setpriv");
            command
                .args([
                    "--reuid=postgres",
                    "--regid=postgres",
                    "--init-groups",
                    "--",
                ])
                .arg(program);
            command
        } else {
            Command::new(program)
        }
    }

    fn initdb(&self) -> Result<(), HarnessError> {
        if self.as_postgres_user {
            // The postgres user must traverse our directory and own the data and sockets.
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&self.dir_path, std::fs::Permissions::from_mode(0o755))
                .map_err(HarnessError::io("open the Postgres directory to its user"))?;
            for (dir, mode) in [(self.data_dir(), "0700"), (self.socket_dir(), "0755")] {
                run(
                    "create a directory owned by postgres",
                    Command::new("install")
                        .args(["-d", "-o", "postgres", "-g", "postgres", "-m", mode])
                        .arg(&dir),
                )?;
            }
        } else {
            std::fs::create_dir_all(self.socket_dir())
                .map_err(HarnessError::io("create the socket directory"))?;
        }
        let initdb = self.bin.join("initdb");
        run(
            "initdb",
            self.command(&initdb)
                .arg("-D")
                .arg(self.data_dir())
                .args([
                    "-U",
                    "postgres",
                    "-A",
                    "trust",
                    "-E",
                    "UTF8",
                    "--locale=C",
                    "--no-sync",
                ])
                .current_dir(&self.dir_path),
        )
    }

    fn launch(&mut self) -> Result<(), HarnessError> {
        let mut args = vec![
            "-D".to_string(),
            self.data_dir().display().to_string(),
            "-p".into(),
            self.port.to_string(),
            "-k".into(),
            self.socket_dir().display().to_string(),
            "-c".into(),
            "listen_addresses=127.0.0.1".into(),
            "-c".into(),
            "max_connections=300".into(),
        ];
        if !self.options.durable {
            for setting in [
                "fsync=off",
                "synchronous_commit=off",
                "full_page_writes=off",
            ] {
                args.push("-c".into());
                args.push(setting.into());
            }
        }
        let (program, args) = if self.as_postgres_user {
            let mut wrapped: Vec<String> = [
                "--reuid=postgres",
                "--regid=postgres",
                "--init-groups",
                "--",
            ]
            .map(String::from)
            .into();
            wrapped.push(self.bin.join("postgres").display().to_string());
            wrapped.extend(args);
            (PathBuf::from("setpriv"), wrapped)
        } else {
            (self.bin.join("postgres"), args)
        };
        let log = self.dir_path.join("postgres.log");
        let cleanup = self.shared.then_some(self.dir_path.as_path());
        // SIGINT is Postgres's fast shutdown: it does not wait for clients to disconnect.
        let process = Supervised::spawn("postgres", &program, &args, &log, "INT", cleanup)?;
        let isready = self.bin.join("pg_isready");
        let port = self.port.to_string();
        let ready = wait_until(READY_TIMEOUT, || {
            !process.is_running()
                || Command::new(&isready)
                    .args(["-q", "-h", "127.0.0.1", "-p", &port, "-U", "postgres"])
                    .status()
                    .is_ok_and(|s| s.success())
        });
        if !ready || !process.is_running() {
            let tail = process.log_tail();
            drop(process);
            return Err(HarnessError::NotReady {
                what: "postgres",
                seconds: READY_TIMEOUT.as_secs(),
                log: log.display().to_string(),
                tail,
            });
        }
        self.process.set(process);
        Ok(())
    }

    fn detach(mut self) -> Option<Supervised> {
        let _ = self.dir.take().map(tempfile::TempDir::keep);
        self.process.take()
    }

    /// The URL of the maintenance database `postgres`.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Databases on this server, cloned from templates, as [`postgres`] gives on the shared one.
    pub fn databases(&self) -> TestPostgres {
        TestPostgres::new(self.url(), false)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The directory holding the cluster's data, sockets and log.
    pub fn dir(&self) -> &Path {
        &self.dir_path
    }

    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }

    pub fn is_running(&self) -> bool {
        self.process.is_running()
    }

    /// Stops the server (fast shutdown) and waits for it; the data is kept for [`Self::restart`].
    pub fn stop(&mut self) {
        self.process.stop();
    }

    /// Starts the server again on the same port with the same data.
    pub fn restart(&mut self) -> Result<(), HarnessError> {
        self.stop();
        self.launch()
    }

    /// Freezes the postmaster (SIGSTOP): new connections hang, as with a stalled server.
    pub fn pause(&self) -> Result<(), HarnessError> {
        self.signal("STOP")
    }

    pub fn resume(&self) -> Result<(), HarnessError> {
        self.signal("CONT")
    }

    fn signal(&self, signal: &str) -> Result<(), HarnessError> {
        self.process.signal(signal)
    }

    /// Freezes the whole cluster: SIGSTOP to the postmaster, then to every process it has
    /// forked (backends, checkpointer, WAL writer…). Connections stay open and nothing answers:
    /// a hung database. [`Self::thaw`] undoes it.
    pub fn freeze(&self) -> Result<(), HarnessError> {
        self.signal("STOP")?;
        self.signal_children("STOP")
    }

    /// Lets a frozen cluster run again (SIGCONT to its processes, children first).
    pub fn thaw(&self) -> Result<(), HarnessError> {
        self.signal_children("CONT")?;
        self.signal("CONT")
    }

    fn signal_children(&self, signal: &str) -> Result<(), HarnessError> {
        let Some(parent) = self.pid() else {
            return Err(HarnessError::Command {
                what: format!("signal {signal} to the Postgres cluster"),
                detail: "the server is stopped".into(),
            });
        };
        let children = crate::process::children_of(parent);
        if children.is_empty() {
            return Ok(());
        }
        let status = std::process::Command::new("kill")
            .arg("-s")
            .arg(signal)
            .args(children.iter().map(u32::to_string))
            .status()
            .map_err(HarnessError::io("run kill"))?;
        // A backend may have exited in between: that is not a failure.
        let _ = status;
        Ok(())
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::{sanitize, with_database};

    #[test]
    fn database_is_replaced_in_a_url() {
        assert_eq!(
            with_database("postgres://u:p@h:5432/postgres?sslmode=disable", "x"),
            "postgres://u:p@h:5432/x?sslmode=disable"
        );
        assert_eq!(with_database("postgres://u@h:1", "x"), "postgres://u@h:1/x");
    }

    #[test]
    fn template_keys_become_safe_identifiers() {
        assert_eq!(sanitize("Croupier-v1.abc"), "croupier_v1_abc");
    }
}
