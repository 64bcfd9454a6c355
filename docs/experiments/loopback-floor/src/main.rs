//! The kernel's floor for fan-out on this machine, with no gateway at all: what does it cost to
//! put one small message on each of N loopback TCP connections, with a reader in the same
//! machine taking them off? `just bench-gateway` runs the generator and the gateway on the same
//! cores, so every delivery costs a send and a receive on them; this program does only that,
//! with the least user-space work there is (blocking `send`s in a loop, or io_uring batches of
//! them; one `mio` poll loop reading), and reports how long it took.
//!
//! It is an experiment behind ADR 0017, not a test:
//!
//! ```text
//! docs/experiments/loopback-floor.sh        # the configurations in turn, three runs each
//! FLOOR_SENDERS=1 FLOOR_READER=none target/experiments/release/loopback-floor   # one of them
//! ```
//!
//! Environment: `FLOOR_CLIENTS` (10000; fewer when the open-file limit cannot hold two sockets
//! per client), `FLOOR_SENDERS` (threads sending, 2), `FLOOR_READER` (`epoll` or `none`),
//! `FLOOR_URING` (0 = `send` per socket; k = io_uring submissions of k sends), `FLOOR_BYTES`
//! (200, about one event frame), `FLOOR_ROUNDS` (30, one every 200 ms; the first 5 are warm-up),
//! `FLOOR_CC` (the senders' TCP congestion control; the system's default when unset),
//! `FLOOR_JSON` (also write the latency percentiles there; `just bench-gateway` does).
//!
//! Output: the median over rounds of the time from the first send to the last send returning;
//! latency percentiles over every message of the measured rounds, from the round's start to the
//! reader holding the message; and CPU per round of the senders and of the reader (from
//! `/proc/thread-self/stat`, 10 ms ticks summed over the measured rounds).
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

const WARM_UP: usize = 5;

fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// User + system CPU time of the calling thread.
fn thread_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap_or_default();
    // Fields after the command's closing parenthesis: state is field 3; utime and stime 14, 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i).and_then(|v| v.parse::<u64>().ok()))
        .sum();
    Duration::from_millis(ticks * 10) // USER_HZ is 100 on Linux
}

struct Config {
    clients: usize,
    senders: usize,
    reader: bool,
    uring: usize,
    bytes: usize,
    rounds: usize,
    congestion: Option<String>,
}

fn main() -> std::io::Result<()> {
    let limit = rlimit::increase_nofile_limit(u64::MAX).unwrap_or(1024);
    let wanted: usize = env("FLOOR_CLIENTS", 10_000);
    let room = (limit.saturating_sub(64) / 2) as usize;
    let config = Config {
        clients: wanted.min(room),
        senders: env("FLOOR_SENDERS", 2usize).max(1),
        reader: std::env::var("FLOOR_READER").map_or(true, |v| v != "none"),
        uring: env("FLOOR_URING", 0),
        bytes: env("FLOOR_BYTES", 200usize).max(2),
        // A message's first byte is its round.
        rounds: env("FLOOR_ROUNDS", 30usize).clamp(WARM_UP + 1, 255),
        congestion: std::env::var("FLOOR_CC").ok().filter(|v| !v.is_empty()),
    };
    if config.clients < wanted {
        eprintln!(
            "open-file limit {limit}: {} clients instead of {wanted}",
            config.clients
        );
    }
    run(&config)
}

fn run(config: &Config) -> std::io::Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let address = listener.local_addr()?;
    let mut readers = Vec::with_capacity(config.clients);
    let mut writers = Vec::with_capacity(config.clients);
    for _ in 0..config.clients {
        let client = TcpStream::connect(address)?;
        let (server, _) = listener.accept()?;
        server.set_nodelay(true)?;
        if let Some(algorithm) = &config.congestion {
            set_congestion(&server, algorithm)?;
        }
        client.set_nonblocking(true)?;
        readers.push(mio::net::TcpStream::from_std(client));
        writers.push(server);
    }

    let epoch = Instant::now();
    let round_start: Arc<Vec<AtomicU64>> =
        Arc::new((0..config.rounds).map(|_| AtomicU64::new(0)).collect());
    let done = Arc::new(AtomicBool::new(false));
    // Without a reader the clients' sockets stay open, unread, until the end (closed, they
    // would turn the sends into resets and errors).
    let mut unread = Vec::new();
    let reader = if config.reader {
        let (round_start, done) = (round_start.clone(), done.clone());
        let (bytes, expected) = (config.bytes, config.clients * config.rounds);
        Some(std::thread::spawn(move || {
            read_all(readers, bytes, expected, epoch, &round_start, &done)
        }))
    } else {
        unread = readers;
        None
    };

    // Senders: persistent threads, each with its share of the connections; a barrier starts a
    // round and another one ends it.
    let start = Arc::new(Barrier::new(config.senders + 1));
    let end = Arc::new(Barrier::new(config.senders + 1));
    let mut shares: Vec<Vec<TcpStream>> = (0..config.senders).map(|_| Vec::new()).collect();
    for (i, writer) in writers.into_iter().enumerate() {
        shares[i % config.senders].push(writer);
    }
    let senders: Vec<_> = shares
        .into_iter()
        .map(|share| {
            let (start, end) = (start.clone(), end.clone());
            let (rounds, bytes, uring) = (config.rounds, config.bytes, config.uring);
            std::thread::spawn(move || send_rounds(&share, rounds, bytes, uring, &start, &end))
        })
        .collect();

    std::thread::sleep(Duration::from_millis(300));
    let mut send_ms = Vec::new();
    for (round, slot) in round_start.iter().enumerate() {
        let began = Instant::now();
        slot.store(epoch.elapsed().as_micros() as u64, Ordering::Release);
        start.wait();
        end.wait();
        if round >= WARM_UP {
            send_ms.push(began.elapsed().as_secs_f64() * 1e3);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let measured = (config.rounds - WARM_UP) as f64;
    let sender_cpu: Duration = senders
        .into_iter()
        .map(|s| s.join().unwrap_or_default())
        .sum();
    done.store(true, Ordering::Release);
    drop(unread);
    let (mut latencies, reader_cpu) = match reader {
        Some(reader) => reader.join().unwrap_or_default(),
        None => (Vec::new(), Duration::ZERO),
    };

    send_ms.sort_by(f64::total_cmp);
    latencies.sort_unstable();
    let pct = |q: f64| {
        latencies
            .get(((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1)))
            .map_or(f64::NAN, |&us| us as f64 / 1e3)
    };
    println!(
        "clients {} senders {} reader {} io_uring {} cc {} | send {:.1} ms | latency p50 {:.1} p99 {:.1} ms | CPU/round senders {:.1} ms reader {:.1} ms",
        config.clients,
        config.senders,
        if config.reader { "epoll" } else { "none" },
        config.uring,
        config.congestion.as_deref().unwrap_or("default"),
        send_ms[send_ms.len() / 2],
        pct(0.5),
        pct(0.99),
        sender_cpu.as_secs_f64() * 1e3 / measured,
        reader_cpu.as_secs_f64() * 1e3 / measured,
    );
    if let Ok(path) = std::env::var("FLOOR_JSON") {
        let json = format!(
            "{{\"clients\": {}, \"p50\": {:.3}, \"p99\": {:.3}, \"p999\": {:.3}}}\n",
            config.clients,
            pct(0.5),
            pct(0.99),
            pct(0.999)
        );
        std::fs::write(path, json)?;
    }
    Ok(())
}

/// TCP_CONGESTION on the sending socket (`reno`, `cubic`, `bbr`: what the kernel allows).
fn set_congestion(socket: &TcpStream, algorithm: &str) -> std::io::Result<()> {
    // SAFETY: the pointer and length describe `algorithm`'s bytes, valid for the call.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_CONGESTION,
            algorithm.as_ptr().cast(),
            algorithm.len() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Sends every round's message to each connection of `share`; returns the CPU time of the
/// measured rounds.
fn send_rounds(
    share: &[TcpStream],
    rounds: usize,
    bytes: usize,
    uring: usize,
    start: &Barrier,
    end: &Barrier,
) -> Duration {
    // A ring that cannot be had ends the run: falling back to `send` would report io_uring
    // figures that are not.
    let mut ring = (uring > 0).then(|| {
        io_uring::IoUring::new(4096).unwrap_or_else(|error| {
            eprintln!("io_uring unavailable: {error}");
            std::process::exit(1)
        })
    });
    let mut message = vec![b'x'; bytes];
    let mut cpu_at_warm_up = Duration::ZERO;
    for round in 0..rounds {
        start.wait();
        if round == WARM_UP {
            cpu_at_warm_up = thread_cpu();
        }
        message[0] = round as u8;
        match &mut ring {
            Some(ring) => send_uring(ring, share, &message, uring),
            None => {
                let failed = share
                    .iter()
                    .filter(|socket| (&**socket).write_all(&message).is_err())
                    .count();
                if failed > 0 {
                    eprintln!("{failed} sends failed");
                }
            }
        }
        end.wait();
    }
    thread_cpu().saturating_sub(cpu_at_warm_up)
}

/// One `Send` per connection, submitted `batch` at a time (MSG_DONTWAIT: a full socket fails
/// instead of waiting, which never happens at these sizes and is counted if it does).
fn send_uring(ring: &mut io_uring::IoUring, share: &[TcpStream], message: &[u8], batch: usize) {
    let mut in_flight = 0usize;
    let mut short = 0usize;
    let mut reap = |ring: &mut io_uring::IoUring, in_flight: &mut usize| {
        for completion in ring.completion() {
            *in_flight -= 1;
            if usize::try_from(completion.result()).ok() != Some(message.len()) {
                short += 1;
            }
        }
    };
    for socket in share {
        let send = io_uring::opcode::Send::new(
            io_uring::types::Fd(socket.as_raw_fd()),
            message.as_ptr(),
            message.len() as u32,
        )
        .flags(libc::MSG_DONTWAIT)
        .build();
        // SAFETY: `message` outlives every submission: all are reaped before returning.
        while unsafe { ring.submission().push(&send) }.is_err() {
            let _ = ring.submit_and_wait(1);
            reap(ring, &mut in_flight);
        }
        in_flight += 1;
        if ring.submission().len() >= batch {
            let _ = ring.submit();
            reap(ring, &mut in_flight);
        }
    }
    while in_flight > 0 {
        let _ = ring.submit_and_wait(in_flight);
        reap(ring, &mut in_flight);
    }
    if short > 0 {
        eprintln!("{short} io_uring sends were short or failed");
    }
}

/// Reads until every message arrived (or `done` and 2 s of silence); returns each message's
/// latency in µs from its round's start, and the CPU time spent.
fn read_all(
    mut readers: Vec<mio::net::TcpStream>,
    bytes: usize,
    expected: usize,
    epoch: Instant,
    round_start: &[AtomicU64],
    done: &AtomicBool,
) -> (Vec<u64>, Duration) {
    let mut latencies = Vec::with_capacity(expected);
    let Ok(mut poll) = mio::Poll::new() else {
        return (latencies, Duration::ZERO);
    };
    for (i, reader) in readers.iter_mut().enumerate() {
        let _ = poll
            .registry()
            .register(reader, mio::Token(i), mio::Interest::READABLE);
    }
    // Bytes into the current message, per connection (a read may split or join messages).
    let mut offset = vec![0usize; readers.len()];
    let mut events = mio::Events::with_capacity(1024);
    let mut buffer = vec![0u8; 64 * 1024];
    let mut received = 0usize;
    let mut cpu_at_warm_up = None;
    while received < expected {
        let timeout = if done.load(Ordering::Acquire) {
            Duration::from_secs(2)
        } else {
            Duration::from_secs(10)
        };
        if poll.poll(&mut events, Some(timeout)).is_err() || events.is_empty() {
            break;
        }
        let now = epoch.elapsed().as_micros() as u64;
        for event in &events {
            let i = event.token().0;
            // One read per readiness while it fills less than the buffer: a short read means
            // the socket is empty (edge-triggered: the next data raises a new event).
            loop {
                let n = match readers[i].read(&mut buffer) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                let mut at = 0;
                while at < n {
                    if offset[i] == 0 {
                        let round = usize::from(buffer[at]);
                        if round >= WARM_UP && cpu_at_warm_up.is_none() {
                            cpu_at_warm_up = Some(thread_cpu());
                        }
                        if round >= WARM_UP {
                            let started = round_start[round].load(Ordering::Acquire);
                            latencies.push(now.saturating_sub(started));
                        }
                        received += 1;
                    }
                    let take = (bytes - offset[i]).min(n - at);
                    offset[i] = (offset[i] + take) % bytes;
                    at += take;
                }
                if n < buffer.len() {
                    break;
                }
            }
        }
    }
    let cpu = cpu_at_warm_up.map_or(Duration::ZERO, |c| thread_cpu().saturating_sub(c));
    (latencies, cpu)
}
