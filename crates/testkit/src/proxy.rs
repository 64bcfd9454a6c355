//! A TCP proxy in front of a Postgres server, for drills that break one service's database
//! connections while the database itself stays up (and other processes keep using it directly).
//!
//! [`PgProxy::start`] listens on `127.0.0.1:0` and forwards every connection to the server of
//! a `postgres://` URL; [`PgProxy::url`] is that URL through the proxy. Controls:
//!
//! - [`PgProxy::cut_all`]: every open connection is cut now (nothing more is forwarded either
//!   way; both sides are closed);
//! - [`PgProxy::refuse`]: new connections are accepted and closed at once, until allowed again;
//! - [`PgProxy::arm`]: cut one connection at a chosen point of the Postgres frontend protocol
//!   (client → server): at a `CopyData` message (mid-`COPY`, not forwarded), or at a simple
//!   query `COMMIT` — before forwarding it, or right after forwarding it without forwarding the
//!   server's answer. tokio-postgres' `Transaction::commit` sends `COMMIT` as a simple query.
//!   A trigger fires once, on the next matching message of any connection whose current
//!   transaction has run a statement containing the given text, and says so ([`Armed`]).
//!
//! The protocol as read here: the first packet has no type byte (length-prefixed; an
//! `SSLRequest`/`GSSENCRequest` may come first, answered by one byte, then the real startup
//! packet); afterwards each message is one type byte and a four-byte big-endian length that
//! counts itself. Statements are known from simple queries (`Q`) and from `Parse` (`P`, named
//! statement → SQL) followed by `Bind` (`B`, which names the statement it runs). Plaintext
//! only: a server that accepts TLS would make the rest unreadable (tests connect with `NoTls`).
//!
//! A cut closes the client's side at once and ends the server's side cleanly after what was
//! forwarded (the server reads a forwarded `COMMIT` before the end of its input, and commits);
//! whatever the server still says is read and dropped.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::HarnessError;

/// How long a cut connection's server side is read (and dropped) after its end was sent, so
/// the server takes everything forwarded before it sees the connection go.
const DRAIN: Duration = Duration::from_secs(5);

/// Statements remembered per connection for [`PgProxy::arm`]'s `within` (the current
/// transaction's, or the latest ones outside a transaction block).
const REMEMBERED_STATEMENTS: usize = 64;

/// Where an armed trigger cuts a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CutAt {
    /// At a `CopyData` message from the client (mid-`COPY … FROM STDIN`); not forwarded.
    CopyData,
    /// At an `Execute` message (extended protocol); not forwarded. Statements pipelined
    /// before it reach the server; it and those after it do not (mid-pipeline).
    Execute,
    /// At the simple query `COMMIT`, before forwarding it: nothing of the transaction commits.
    BeforeCommit,
    /// Right after forwarding the simple query `COMMIT`; the server's answer is not forwarded:
    /// the transaction commits, and the client cannot know.
    AfterCommit,
}

/// A trigger set by [`PgProxy::arm`]: whether (and when) it fired.
#[derive(Debug, Clone)]
pub struct Armed {
    fired: watch::Receiver<bool>,
}

impl Armed {
    /// Whether it has cut a connection.
    pub fn has_fired(&self) -> bool {
        *self.fired.borrow()
    }

    /// Waits up to `timeout` for it to fire; whether it did.
    pub async fn fired(&self, timeout: Duration) -> bool {
        let mut fired = self.fired.clone();
        tokio::time::timeout(timeout, fired.wait_for(|f| *f))
            .await
            .is_ok_and(|r| r.is_ok())
    }
}

/// A proxy in front of one Postgres server; stops (with every connection) when dropped.
#[derive(Debug)]
pub struct PgProxy {
    addr: SocketAddr,
    url: String,
    shared: Arc<Shared>,
    accept: tokio::task::JoinHandle<()>,
}

#[derive(Debug)]
struct Shared {
    target: SocketAddr,
    refusing: AtomicBool,
    cut: watch::Sender<u64>,
    triggers: Mutex<Vec<Trigger>>,
    accepted: AtomicU64,
}

#[derive(Debug)]
struct Trigger {
    at: CutAt,
    within: String,
    fired: watch::Sender<bool>,
}

impl Drop for PgProxy {
    fn drop(&mut self) {
        // The accept task owns the connections' tasks: they go with it.
        self.accept.abort();
    }
}

impl PgProxy {
    /// A proxy in front of the server of `database_url` (`postgres://user@host:port/db?…`).
    pub async fn start(database_url: &str) -> Result<PgProxy, HarnessError> {
        let (target, through) =
            split_authority(database_url).ok_or_else(|| HarnessError::Command {
                what: "proxy a database URL".into(),
                detail: format!("not a postgres://user@host:port/db URL: {database_url}"),
            })?;
        let target = tokio::net::lookup_host(target.as_str())
            .await
            .map_err(HarnessError::io(format!("resolve {target}")))?
            .next()
            .ok_or_else(|| HarnessError::Command {
                what: "proxy a database URL".into(),
                detail: format!("{target} resolves to nothing"),
            })?;
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(HarnessError::io("bind the proxy"))?;
        let addr = listener
            .local_addr()
            .map_err(HarnessError::io("read the proxy's address"))?;
        let shared = Arc::new(Shared {
            target,
            refusing: AtomicBool::new(false),
            cut: watch::channel(0).0,
            triggers: Mutex::new(Vec::new()),
            accepted: AtomicU64::new(0),
        });
        let accept = tokio::spawn(accept_loop(listener, shared.clone()));
        Ok(PgProxy {
            addr,
            url: through(&addr.to_string()),
            shared,
            accept,
        })
    }

    /// Where the proxy listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The database URL through the proxy.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Connections accepted and forwarded so far (refused ones not counted).
    pub fn connections(&self) -> u64 {
        self.shared.accepted.load(Ordering::Relaxed)
    }

    /// Cuts every open connection now: nothing more is forwarded, both sides are closed.
    pub fn cut_all(&self) {
        self.shared.cut.send_modify(|epoch| *epoch += 1);
    }

    /// While `refusing`, new connections are accepted and closed at once.
    pub fn refuse(&self, refusing: bool) {
        self.shared.refusing.store(refusing, Ordering::SeqCst);
    }

    /// Cuts the next connection that reaches `at` in a transaction that has run a statement
    /// containing `within` (`""`: any), once.
    pub fn arm(&self, at: CutAt, within: &str) -> Armed {
        let (fired, receiver) = watch::channel(false);
        lock(&self.shared.triggers).push(Trigger {
            at,
            within: within.to_string(),
            fired,
        });
        Armed { fired: receiver }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// `host:port` of a `postgres://` URL, and a function giving the URL with another authority.
fn split_authority(url: &str) -> Option<(String, impl Fn(&str) -> String)> {
    let (scheme, rest) = url.split_once("://")?;
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let (user, host) = match authority.rsplit_once('@') {
        Some((user, host)) => (format!("{user}@"), host),
        None => (String::new(), authority),
    };
    if host.is_empty() || host.contains(',') {
        return None;
    }
    let target = if host
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        host.to_string()
    } else {
        format!("{host}:5432")
    };
    let (scheme, tail) = (scheme.to_string(), tail.to_string());
    Some((target, move |addr: &str| {
        format!("{scheme}://{user}{addr}{tail}")
    }))
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    if shared.refusing.load(Ordering::SeqCst) {
                        drop(stream);
                        continue;
                    }
                    shared.accepted.fetch_add(1, Ordering::Relaxed);
                    connections.spawn(forward(shared.clone(), stream));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// Forwards one connection until either side ends it or it is cut.
async fn forward(shared: Arc<Shared>, client: TcpStream) {
    let mut cut = shared.cut.subscribe();
    cut.mark_unchanged();
    let Ok(server) = TcpStream::connect(shared.target).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (mut client_in, mut client_out) = client.into_split();
    let (mut server_in, mut server_out) = server.into_split();
    tokio::select! {
        _ = upstream(&shared, &mut client_in, &mut server_out) => {}
        _ = downstream(&mut server_in, &mut client_out) => {}
        _ = cut.changed() => {}
    }
    drop(client_in);
    drop(client_out);
    let _ = server_out.shutdown().await;
    let _ = tokio::time::timeout(DRAIN, async {
        let mut buf = vec![0u8; 8192];
        while server_in.read(&mut buf).await.is_ok_and(|n| n > 0) {}
    })
    .await;
}

async fn downstream(from: &mut OwnedReadHalf, to: &mut OwnedWriteHalf) -> std::io::Result<()> {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        to.write_all(&buf[..n]).await?;
    }
}

/// Client → server, message by message; returns when the client ends or a trigger cuts.
async fn upstream(
    shared: &Shared,
    from: &mut OwnedReadHalf,
    to: &mut OwnedWriteHalf,
) -> std::io::Result<()> {
    let mut session = Session::default();
    let mut buf: Vec<u8> = Vec::with_capacity(16 * 1024);
    loop {
        while let Some(frame) = session.next_frame(&mut buf)? {
            let verdict = {
                let mut triggers = lock(&shared.triggers);
                session.judge(&frame, &mut triggers)
            };
            match verdict {
                Verdict::Forward => to.write_all(&frame.bytes).await?,
                Verdict::CutBefore => return Ok(()),
                Verdict::ForwardThenCut => {
                    to.write_all(&frame.bytes).await?;
                    return Ok(());
                }
            }
        }
        if from.read_buf(&mut buf).await? == 0 {
            return Ok(());
        }
    }
}

/// One whole message from the client: its type byte (none for the startup packets) and its
/// bytes as sent (type, length and body).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Frame {
    tag: Option<u8>,
    bytes: Vec<u8>,
}

impl Frame {
    fn body(&self) -> &[u8] {
        let header = if self.tag.is_some() { 5 } else { 4 };
        &self.bytes[header.min(self.bytes.len())..]
    }
}

/// What to do with a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Forward,
    CutBefore,
    ForwardThenCut,
}

/// What the proxy knows of one connection's client side.
#[derive(Debug, Default)]
struct Session {
    /// Past the startup packet (typed messages from now on).
    started: bool,
    /// Prepared statements by name (`""` is the unnamed one).
    statements: HashMap<String, String>,
    /// The SQL run in the current transaction (or lately, outside one), newest last.
    recent: VecDeque<String>,
}

const SSL_REQUEST: i32 = 80_877_103;
const GSSENC_REQUEST: i32 = 80_877_104;

impl Session {
    /// Takes the next whole message off the front of `buf`, if it holds one.
    fn next_frame(&mut self, buf: &mut Vec<u8>) -> std::io::Result<Option<Frame>> {
        let (header, tag) = if self.started {
            (5, buf.first().copied())
        } else {
            (4, None)
        };
        if buf.len() < header {
            return Ok(None);
        }
        let at = header - 4;
        let length = i32::from_be_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]);
        if length < 4 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("a frontend message with length {length}"),
            ));
        }
        let total = at + length as usize;
        if buf.len() < total {
            return Ok(None);
        }
        let bytes: Vec<u8> = buf.drain(..total).collect();
        let frame = Frame { tag, bytes };
        if !self.started {
            let body = frame.body();
            let code =
                (body.len() >= 4).then(|| i32::from_be_bytes([body[0], body[1], body[2], body[3]]));
            // After an SSLRequest or GSSENCRequest (answered by one byte), the startup packet.
            self.started = !matches!(code, Some(SSL_REQUEST | GSSENC_REQUEST));
        }
        Ok(Some(frame))
    }

    /// Notes what `frame` says about the connection and decides whether an armed trigger cuts
    /// it here (that trigger fires and is removed).
    fn judge(&mut self, frame: &Frame, triggers: &mut Vec<Trigger>) -> Verdict {
        let mut ends_transaction = false;
        let at = match frame.tag {
            Some(b'Q') => {
                let sql = cstr(frame.body()).0;
                let word = first_word(&sql);
                if word.eq_ignore_ascii_case("BEGIN") || word.eq_ignore_ascii_case("START") {
                    self.recent.clear();
                }
                ends_transaction = ["COMMIT", "ROLLBACK", "END", "ABORT"]
                    .iter()
                    .any(|w| word.eq_ignore_ascii_case(w));
                let commit = is_commit(&sql);
                self.remember(sql);
                commit.then_some([CutAt::BeforeCommit, CutAt::AfterCommit])
            }
            Some(b'P') => {
                let (name, rest) = cstr(frame.body());
                let (sql, _) = cstr(rest);
                self.statements.insert(name, sql);
                None
            }
            Some(b'B') => {
                let (_portal, rest) = cstr(frame.body());
                let (name, _) = cstr(rest);
                if let Some(sql) = self.statements.get(&name).cloned() {
                    self.remember(sql);
                }
                None
            }
            Some(b'C') => {
                // Close: 'S' and a statement name (or 'P' and a portal's).
                let body = frame.body();
                if body.first() == Some(&b'S') {
                    self.statements.remove(&cstr(&body[1..]).0);
                }
                None
            }
            Some(b'd') => Some([CutAt::CopyData, CutAt::CopyData]),
            Some(b'E') => Some([CutAt::Execute, CutAt::Execute]),
            _ => None,
        };
        let mut verdict = Verdict::Forward;
        if let Some(points) = at {
            let hit = triggers.iter().position(|t| {
                points.contains(&t.at) && self.recent.iter().any(|sql| sql.contains(&t.within))
            });
            if let Some(index) = hit {
                let trigger = triggers.remove(index);
                trigger.fired.send_replace(true);
                verdict = match trigger.at {
                    CutAt::AfterCommit => Verdict::ForwardThenCut,
                    CutAt::CopyData | CutAt::Execute | CutAt::BeforeCommit => Verdict::CutBefore,
                };
            }
        }
        if ends_transaction {
            self.recent.clear();
        }
        verdict
    }

    fn remember(&mut self, sql: String) {
        if self.recent.len() >= REMEMBERED_STATEMENTS {
            self.recent.pop_front();
        }
        self.recent.push_back(sql);
    }
}

/// A NUL-terminated string at the start of `bytes`, and what follows it.
fn cstr(bytes: &[u8]) -> (String, &[u8]) {
    let end = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
    let rest = bytes.get(end + 1..).unwrap_or(&[]);
    (String::from_utf8_lossy(&bytes[..end]).into_owned(), rest)
}

fn first_word(sql: &str) -> &str {
    sql.trim_start()
        .split(|c: char| !c.is_ascii_alphabetic())
        .next()
        .unwrap_or("")
}

/// `COMMIT` (as `Transaction::commit` sends it), with or without `;`, any case.
fn is_commit(sql: &str) -> bool {
    let sql = sql.trim().trim_end_matches(';').trim_end();
    sql.eq_ignore_ascii_case("COMMIT")
        || sql.eq_ignore_ascii_case("COMMIT WORK")
        || sql.eq_ignore_ascii_case("COMMIT TRANSACTION")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn typed(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut bytes = vec![tag];
        bytes.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
        bytes.extend_from_slice(body);
        bytes
    }

    fn untyped(body: &[u8]) -> Vec<u8> {
        let mut bytes = (body.len() as i32 + 4).to_be_bytes().to_vec();
        bytes.extend_from_slice(body);
        bytes
    }

    fn query(sql: &str) -> Vec<u8> {
        typed(b'Q', format!("{sql}\0").as_bytes())
    }

    fn parse(name: &str, sql: &str) -> Vec<u8> {
        typed(b'P', format!("{name}\0{sql}\0\0\0").as_bytes())
    }

    fn bind(name: &str) -> Vec<u8> {
        typed(b'B', format!("\0{name}\0\0\0\0\0\0\0").as_bytes())
    }

    fn startup() -> Vec<u8> {
        let mut body = 196_608i32.to_be_bytes().to_vec();
        body.extend_from_slice(b"user\0postgres\0\0");
        untyped(&body)
    }

    fn trigger(at: CutAt, within: &str) -> (Trigger, watch::Receiver<bool>) {
        let (fired, receiver) = watch::channel(false);
        let trigger = Trigger {
            at,
            within: within.into(),
            fired,
        };
        (trigger, receiver)
    }

    /// Feeds `bytes` in pieces of `step` and returns every frame with its verdict.
    fn run(bytes: &[u8], step: usize, triggers: &mut Vec<Trigger>) -> Vec<(Frame, Verdict)> {
        let mut session = Session::default();
        let mut buf = Vec::new();
        let mut out = Vec::new();
        for piece in bytes.chunks(step) {
            buf.extend_from_slice(piece);
            while let Some(frame) = session.next_frame(&mut buf).expect("frame") {
                let verdict = session.judge(&frame, triggers);
                out.push((frame, verdict));
            }
        }
        assert!(buf.is_empty(), "bytes left over: {buf:?}");
        out
    }

    fn placement() -> Vec<u8> {
        [
            startup(),
            typed(b'p', b"secret\0"),
            query("BEGIN"),
            parse("s1", "COPY bets (bet_id) FROM STDIN (FORMAT binary)"),
            typed(b'S', b""),
            bind("s1"),
            typed(b'E', b"\0\0\0\0\0"),
            typed(b'd', b"PGCOPY\n\xff\r\n\0"),
            typed(b'c', b""),
            query("COMMIT"),
            typed(b'X', b""),
        ]
        .concat()
    }

    #[test]
    fn messages_are_framed_whatever_pieces_they_arrive_in() {
        let bytes = placement();
        for step in [1, 3, 7, 64, bytes.len()] {
            let frames = run(&bytes, step, &mut Vec::new());
            let tags: Vec<Option<u8>> = frames.iter().map(|(f, _)| f.tag).collect();
            assert_eq!(
                tags,
                [
                    None,
                    Some(b'p'),
                    Some(b'Q'),
                    Some(b'P'),
                    Some(b'S'),
                    Some(b'B'),
                    Some(b'E')
                ]
                .into_iter()
                .chain([Some(b'd'), Some(b'c'), Some(b'Q'), Some(b'X')])
                .collect::<Vec<_>>(),
                "step {step}"
            );
            assert!(frames.iter().all(|(_, v)| *v == Verdict::Forward));
            let forwarded: Vec<u8> = frames.into_iter().flat_map(|(f, _)| f.bytes).collect();
            assert_eq!(forwarded, bytes, "forwarded as received");
        }
    }

    #[test]
    fn an_ssl_request_is_followed_by_the_startup_packet() {
        let bytes = [
            untyped(&SSL_REQUEST.to_be_bytes()),
            startup(),
            query("SELECT 1"),
        ]
        .concat();
        let frames = run(&bytes, 2, &mut Vec::new());
        let tags: Vec<Option<u8>> = frames.iter().map(|(f, _)| f.tag).collect();
        assert_eq!(tags, [None, None, Some(b'Q')]);
    }

    #[test]
    fn a_copy_trigger_cuts_at_the_copy_data_of_a_matching_transaction_once() {
        let (copy, fired) = trigger(CutAt::CopyData, "COPY bets");
        let (elsewhere, other) = trigger(CutAt::CopyData, "COPY bet_results");
        let mut triggers = vec![elsewhere, copy];
        let frames = run(&placement(), 5, &mut triggers);
        let cut: Vec<_> = frames
            .iter()
            .filter(|(_, v)| *v != Verdict::Forward)
            .collect();
        assert_eq!(cut.len(), 1, "{cut:?}");
        assert_eq!(cut[0].0.tag, Some(b'd'));
        assert_eq!(cut[0].1, Verdict::CutBefore);
        assert!(*fired.borrow());
        assert!(
            !*other.borrow(),
            "a trigger for another statement stays armed"
        );
        assert_eq!(triggers.len(), 1);
        // Fired once: the same placement again passes.
        let frames = run(&placement(), 64, &mut vec![]);
        assert!(frames.iter().all(|(_, v)| *v == Verdict::Forward));
    }

    #[test]
    fn an_execute_trigger_cuts_at_the_execute_of_its_statement() {
        let (armed, fired) = trigger(CutAt::Execute, "bets (bet_id");
        let mut triggers = vec![armed];
        let frames = run(&placement(), 3, &mut triggers);
        let cut: Vec<_> = frames
            .iter()
            .filter(|(_, v)| *v != Verdict::Forward)
            .collect();
        assert_eq!(cut.len(), 1, "{cut:?}");
        assert_eq!(cut[0].0.tag, Some(b'E'));
        assert_eq!(cut[0].1, Verdict::CutBefore);
        assert!(*fired.borrow());
    }

    #[test]
    fn commit_triggers_cut_before_or_after_forwarding_the_commit() {
        for (at, verdict) in [
            (CutAt::BeforeCommit, Verdict::CutBefore),
            (CutAt::AfterCommit, Verdict::ForwardThenCut),
        ] {
            let (armed, fired) = trigger(at, "COPY bets");
            let mut triggers = vec![armed];
            let frames = run(&placement(), 4, &mut triggers);
            let cut: Vec<_> = frames
                .iter()
                .filter(|(_, v)| *v != Verdict::Forward)
                .collect();
            assert_eq!(cut.len(), 1);
            assert_eq!(cut[0].0.bytes, query("COMMIT"));
            assert_eq!(cut[0].1, verdict);
            assert!(*fired.borrow());
        }
    }

    #[test]
    fn a_commit_trigger_ignores_transactions_without_its_statement() {
        let (armed, fired) = trigger(CutAt::AfterCommit, "COPY bets");
        let mut triggers = vec![armed];
        let other = [
            startup(),
            query("BEGIN"),
            query("SELECT position FROM event_head FOR UPDATE"),
            query("COMMIT"),
            // The earlier transaction's statements do not count for the next one.
            parse("s1", "COPY bets (bet_id) FROM STDIN (FORMAT binary)"),
            query("ROLLBACK"),
            query("BEGIN"),
            query("commit;"),
        ]
        .concat();
        let frames = run(&other, 9, &mut triggers);
        assert!(frames.iter().all(|(_, v)| *v == Verdict::Forward));
        assert!(!*fired.borrow());
        assert_eq!(triggers.len(), 1, "still armed");
    }

    #[test]
    fn a_message_with_an_impossible_length_is_an_error() {
        let mut session = Session::default();
        let mut buf = [startup(), vec![b'Q', 0, 0, 0, 2]].concat();
        assert!(session.next_frame(&mut buf).expect("startup").is_some());
        assert!(session.next_frame(&mut buf).is_err());
    }

    #[test]
    fn urls_are_rewritten_to_the_proxy() {
        let (target, through) =
            split_authority("postgres://postgres@127.0.0.1:5433/db_1?sslmode=disable")
                .expect("url");
        assert_eq!(target, "127.0.0.1:5433");
        assert_eq!(
            through("127.0.0.1:40000"),
            "postgres://postgres@127.0.0.1:40000/db_1?sslmode=disable"
        );
        let (target, through) = split_authority("postgresql://u:p@db/x").expect("url");
        assert_eq!(target, "db:5432");
        assert_eq!(through("h:1"), "postgresql://u:p@h:1/x");
        assert!(split_authority("host=localhost port=5432").is_none());
    }

    /// A real server behind the proxy: a transaction cut right after its `COMMIT` fails at the
    /// client and stands in the database; one cut before it does not.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_commit_cut_after_forwarding_stands_and_one_cut_before_does_not() {
        let db = crate::postgres()
            .expect("postgres")
            .empty_database()
            .await
            .expect("database");
        let direct = crate::pg_connect(&db.url).await.expect("connect");
        direct
            .batch_execute("CREATE TABLE proxied (n int PRIMARY KEY)")
            .await
            .expect("table");
        let proxy = PgProxy::start(&db.url).await.expect("proxy");
        for (n, at) in [
            (1, CutAt::AfterCommit),
            (2, CutAt::BeforeCommit),
            (3, CutAt::CopyData),
        ] {
            let mut client = crate::pg_connect(proxy.url()).await.expect("connect");
            let armed = proxy.arm(at, "proxied");
            let tx = client.transaction().await.expect("begin");
            if at == CutAt::CopyData {
                use futures_util::SinkExt;
                let sink = tx
                    .copy_in::<_, &'static [u8]>("COPY proxied (n) FROM STDIN")
                    .await
                    .expect("copy");
                futures_util::pin_mut!(sink);
                let sent = async {
                    sink.send(&b"3\n"[..]).await?;
                    sink.finish().await
                };
                assert!(sent.await.is_err(), "the COPY is cut");
            } else {
                tx.execute("INSERT INTO proxied VALUES ($1)", &[&n])
                    .await
                    .expect("insert");
                assert!(tx.commit().await.is_err(), "the client never hears back");
            }
            assert!(armed.has_fired());
            let stored = || async {
                direct
                    .query_one("SELECT count(*) FROM proxied WHERE n = $1", &[&n])
                    .await
                    .expect("count")
                    .get::<_, i64>(0)
            };
            if at == CutAt::AfterCommit {
                // The server commits once it reads the COMMIT; give it a moment.
                let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
                while stored().await == 0 {
                    assert!(tokio::time::Instant::now() < deadline, "never committed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            } else {
                tokio::time::sleep(Duration::from_millis(300)).await;
                assert_eq!(stored().await, 0, "{at:?}: nothing stands");
            }
        }
        // Refused, then allowed again; and a cut of everything.
        proxy.refuse(true);
        assert!(crate::pg_connect(proxy.url()).await.is_err());
        proxy.refuse(false);
        let client = crate::pg_connect(proxy.url()).await.expect("connect again");
        client.simple_query("SELECT 1").await.expect("query");
        proxy.cut_all();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while client.simple_query("SELECT 1").await.is_ok() {
            assert!(tokio::time::Instant::now() < deadline, "never cut");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
