//! What loadgen reads about the processes it measures, from `/proc`: a process's resident
//! memory and CPU time, and the kernel's memory for TCP sockets (which no process's RSS shows).

use serde::Serialize;

/// `USER_HZ`: the unit of `utime` and `stime` in `/proc/<pid>/stat`, 100 on every Linux ABI
/// (the kernel converts from its own tick rate before exporting them).
const USER_HZ: u64 = 100;

/// `VmRSS` of a process, in KiB.
pub(super) fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
}

/// User + system CPU time a process (all its threads) has used so far, in milliseconds (10 ms
/// resolution).
pub(super) fn cpu_ms(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_cpu_ticks(&stat).map(|ticks| ticks * 1000 / USER_HZ)
}

/// `utime + stime` from a `/proc/<pid>/stat` line. The command name (field 2) is in
/// parentheses and may hold spaces or parentheses itself, so the fields are counted from the
/// last `)`: `utime` and `stime` are fields 14 and 15, the 12th and 13th after it.
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// The memory the kernel holds for TCP sockets, machine-wide (`/proc/net/sockstat`, `TCP: …
/// mem <pages>`), in KiB: send and receive queues of both ends on loopback.
pub(super) fn kernel_tcp_kib() -> Option<u64> {
    let sockstat = std::fs::read_to_string("/proc/net/sockstat").ok()?;
    parse_tcp_mem_pages(&sockstat).map(|pages| pages * 4)
}

fn parse_tcp_mem_pages(sockstat: &str) -> Option<u64> {
    let line = sockstat.lines().find(|l| l.starts_with("TCP:"))?;
    let mut words = line.split_ascii_whitespace();
    while let Some(word) = words.next() {
        if word == "mem" {
            return words.next()?.parse().ok();
        }
    }
    None
}

/// The memory of the processes measured, and of the kernel's TCP sockets, at one moment.
#[derive(Debug, Clone, Serialize)]
pub struct MemorySample {
    /// `before` (no clients yet), `connected`, `measured` (after the measurement at the
    /// publish rate), `burst` (a share of clients not reading, right after a burst of events),
    /// `after_burst` (those clients read again and caught up).
    pub at: &'static str,
    pub server_rss_kib: Option<u64>,
    pub bus_rss_kib: Option<u64>,
    pub kernel_tcp_kib: Option<u64>,
}

impl MemorySample {
    pub(super) fn take(at: &'static str, server: Option<u32>, bus: Option<u32>) -> Self {
        Self {
            at,
            server_rss_kib: server.and_then(rss_kib),
            bus_rss_kib: bus.and_then(rss_kib),
            kernel_tcp_kib: kernel_tcp_kib(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_are_counted_after_a_command_name_with_spaces_and_parentheses() {
        let stat = "4242 (we (ird) name) S 1 4242 4242 0 -1 4194560 100 0 0 0 \
                    37 5 0 0 20 0 3 0 123 4567 89";
        assert_eq!(parse_cpu_ticks(stat), Some(42));
        assert_eq!(parse_cpu_ticks("4242 (short"), None);
    }

    #[test]
    fn tcp_memory_is_read_from_sockstat() {
        let sockstat = "sockets: used 180\n\
                        TCP: inuse 12 orphan 0 tw 3 alloc 14 mem 7\n\
                        UDP: inuse 1 mem 2\n";
        assert_eq!(parse_tcp_mem_pages(sockstat), Some(7));
        assert_eq!(parse_tcp_mem_pages("UDP: inuse 1 mem 2\n"), None);
    }

    #[test]
    fn this_process_has_memory_and_cpu_time() {
        let me = std::process::id();
        assert!(rss_kib(me).is_some_and(|kib| kib > 0));
        let spin = std::time::Instant::now();
        while spin.elapsed() < std::time::Duration::from_millis(30) {}
        assert!(cpu_ms(me).is_some_and(|ms| ms >= 10));
        assert!(kernel_tcp_kib().is_some());
    }
}
