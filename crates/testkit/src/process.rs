//! Supervised server processes.
//!
//! A server is started under `sh`, which starts it in the background, prints its pid, and then
//! blocks reading its own stdin. Our end of that pipe lives in [`Supervised`]; when it closes —
//! because the owner called [`Supervised::stop`], was dropped, or the whole test process died,
//! even by SIGKILL — `sh` sees end-of-file, sends the server its stop signal (after a SIGCONT in
//! case it was paused) and waits for it. So no server outlives its owner, and no `unsafe`
//! (`prctl(PR_SET_PDEATHSIG)`) is needed.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use crate::HarnessError;

const SUPERVISOR: &str = r#"
log=$1; sig=$2; cleanup=$3; shift 3
"$@" </dev/null >>"$log" 2>&1 &
child=$!
echo "$child"
cat >/dev/null
kill -s CONT "$child" 2>/dev/null
kill -s "$sig" "$child" 2>/dev/null
wait "$child"
if [ -n "$cleanup" ]; then rm -rf "$cleanup"; fi
"#;

/// A server process under the stdin-pipe supervisor.
#[derive(Debug)]
pub(crate) struct Supervised {
    what: &'static str,
    supervisor: Child,
    stdin: Option<ChildStdin>,
    pid: u32,
    log: PathBuf,
}

impl Supervised {
    /// Starts `program args` with output appended to `log`; `stop_signal` is the signal name
    /// (`TERM`, `INT`, ...) that makes the server shut down promptly. When `cleanup` is given,
    /// the supervisor removes that directory once the server has exited: servers shared by a
    /// whole test process are never dropped, so their temporary directories go this way.
    pub(crate) fn spawn(
        what: &'static str,
        program: &Path,
        args: &[String],
        log: &Path,
        stop_signal: &str,
        cleanup: Option<&Path>,
    ) -> Result<Self, HarnessError> {
        let mut supervisor = Command::new("sh")
            .arg("-c")
            .arg(SUPERVISOR)
            .arg("sh")
            .arg(log)
            .arg(stop_signal)
            .arg(cleanup.map(Path::as_os_str).unwrap_or_default())
            .arg(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(HarnessError::io(format!(
                "start {what} ({})",
                program.display()
            )))?;
        let stdin = supervisor.stdin.take();
        let stdout = supervisor.stdout.take();
        let mut line = String::new();
        if let Some(stdout) = stdout {
            BufReader::new(stdout)
                .read_line(&mut line)
                .map_err(HarnessError::io(format!("read the pid of {what}")))?;
        }
        let pid = line
            .trim()
            .parse::<u32>()
            .map_err(|_| HarnessError::Command {
                what: format!("start {what}"),
                detail: format!("the supervisor printed {line:?} instead of a pid"),
            })?;
        Ok(Self {
            what,
            supervisor,
            stdin,
            pid,
            log: log.to_path_buf(),
        })
    }

    /// The server's own pid (not the supervisor's).
    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }

    /// Whether the server process still exists (a zombie counts as gone).
    pub(crate) fn is_running(&self) -> bool {
        pid_alive(self.pid)
    }

    /// Sends a signal (`STOP`, `CONT`, ...) to the server itself.
    pub(crate) fn signal(&self, signal: &str) -> Result<(), HarnessError> {
        let status = Command::new("kill")
            .arg("-s")
            .arg(signal)
            .arg(self.pid.to_string())
            .status()
            .map_err(HarnessError::io("run kill"))?;
        if status.success() {
            Ok(())
        } else {
            Err(HarnessError::Command {
                what: format!("kill -s {signal} {} ({})", self.pid, self.what),
                detail: status.to_string(),
            })
        }
    }

    /// Stops the server and waits until it has exited.
    pub(crate) fn stop(&mut self) {
        drop(self.stdin.take());
        let _ = self.supervisor.wait();
    }

    /// The last lines of the server's log, for error messages.
    pub(crate) fn log_tail(&self) -> String {
        log_tail(&self.log)
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Whether a process exists and is not a zombie, read from `/proc`.
pub(crate) fn pid_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state is the first field after the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

pub(crate) fn log_tail(path: &Path) -> String {
    let mut text = String::new();
    if let Ok(mut file) = std::fs::File::open(path) {
        let _ = file.read_to_string(&mut text);
    }
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// Polls `ready` until it answers true or `timeout` passes.
pub(crate) fn wait_until(timeout: Duration, mut ready: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if ready() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Runs a command to completion, turning a failure into an error carrying its output.
pub(crate) fn run(what: &str, command: &mut Command) -> Result<(), HarnessError> {
    let output = command
        .stdin(Stdio::null())
        .output()
        .map_err(HarnessError::io(format!("run {what}")))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(HarnessError::Command {
            what: what.to_string(),
            detail: format!(
                "{}\n{}{}",
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ),
        })
    }
}

/// Whether this process runs as root, read from the owner of `/proc/self` (no libc needed).
pub(crate) fn running_as_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|meta| meta.uid() == 0)
}

/// The running process of a server that can be stopped and started again: what
/// [`crate::NatsServer`] and [`crate::PgServer`] share.
#[derive(Debug)]
pub(crate) struct Slot {
    what: &'static str,
    process: Option<Supervised>,
}

impl Slot {
    pub(crate) fn empty(what: &'static str) -> Self {
        Self {
            what,
            process: None,
        }
    }

    pub(crate) fn set(&mut self, process: Supervised) {
        self.process = Some(process);
    }

    pub(crate) fn take(&mut self) -> Option<Supervised> {
        self.process.take()
    }

    pub(crate) fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(Supervised::pid)
    }

    pub(crate) fn is_running(&self) -> bool {
        self.process.as_ref().is_some_and(Supervised::is_running)
    }

    /// Stops the server and waits for it to exit.
    pub(crate) fn stop(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.stop();
        }
    }

    pub(crate) fn signal(&self, signal: &str) -> Result<(), HarnessError> {
        match &self.process {
            Some(process) => process.signal(signal),
            None => Err(HarnessError::Command {
                what: format!("signal {signal} to {}", self.what),
                detail: "the server is stopped".into(),
            }),
        }
    }
}

/// The processes whose parent is `parent` (from `/proc/<pid>/stat`).
pub(crate) fn children_of(parent: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| {
            let pid: u32 = entry.ok()?.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // `pid (comm) state ppid …`: comm may hold spaces, so read after the last ')'.
            let rest = &stat[stat.rfind(')')? + 1..];
            let ppid: u32 = rest.split_whitespace().nth(1)?.parse().ok()?;
            (ppid == parent).then_some(pid)
        })
        .collect()
}
