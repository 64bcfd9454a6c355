# ADR 0035: logs, per event of more than 4 chunks, when its last chunk was written
# (microseconds after the event's `at`) to /tmp/exp/out/fanout2.log. Applies to
# crates/gateway/src/hub.rs since ADR 0035; run from the repository's root.
p = 'crates/gateway/src/hub.rs'
s = open(p).read()
def rep(a, b):
    global s
    assert s.count(a) == 1, a
    s = s.replace(a, b)
rep("""    started: std::time::Instant,
    kind: &'static str,
}""", """    started: std::time::Instant,
    kind: &'static str,
    at: i64,
}""")
rep("""    fn new(members: &Members, event: Arc<Outgoing>, channel: &Channel) -> Self {""",
    """    fn new(members: &Members, event: Arc<Outgoing>, channel: &Channel, at: i64) -> Self {""")
rep("""            started: std::time::Instant::now(),""", """            started: std::time::Instant::now(),
            at,""")
rep("""            self.progress.done.notify_one();""", """            self.progress.done.notify_one();
            if self.chunks() > 4 {
                use std::io::Write;
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_micros() as i64);
                if let Ok(mut f) = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open("/tmp/exp/out/fanout2.log")
                {
                    let _ = writeln!(f, "{} {} {}", self.event.seq, self.at, now - self.at);
                }
            }""")
rep("FanOut::new(members, event, channel)", "FanOut::new(members, event, channel, decoded.at.unix_micros())")
open(p, 'w').write(s)
