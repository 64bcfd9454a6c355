# ADR 0035: logs, per event and writer, when the fan-out began and ended (microseconds after
# the event's `at`) to /tmp/exp/out/fanout.log. Applies to crates/gateway/src/hub.rs as it was
# before ADR 0035 (one writer per share of the connections); run from the repository's root.
p='crates/gateway/src/hub.rs'; s=open(p).read()
s=s.replace("""struct Delivery {
    members: Arc<Members>,
    event: Arc<Outgoing>,
}""","""struct Delivery {
    members: Arc<Members>,
    event: Arc<Outgoing>,
    diag: (i64, i64),
}
fn diag_now() -> i64 { std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_micros() as i64 }
static DIAG: std::sync::Mutex<Option<std::fs::File>> = std::sync::Mutex::new(None);
fn diag_line(line: String) {
    use std::io::Write;
    let mut f = DIAG.lock().unwrap();
    if f.is_none() { *f = std::fs::OpenOptions::new().create(true).append(true).open("/tmp/exp/out/fanout.log").ok(); }
    if let Some(f) = f.as_mut() { let _ = writeln!(f, "{line}"); }
}""",1)
s=s.replace("""    let current = position.lock().unwrap_or_else(|e| e.into_inner()).seq;
    if message.seq <= current {""","""    let diag_received = diag_now();
    let current = position.lock().unwrap_or_else(|e| e.into_inner()).seq;
    if message.seq <= current {""",1)
s=s.replace("""        let delivery = Delivery {
            members: members.clone(),
            event: event.clone(),
        };""","""        let delivery = Delivery {
            members: members.clone(),
            event: event.clone(),
            diag: (decoded.at.unix_micros(), diag_received),
        };""",1)
s=s.replace("""        let conns = delivery.members.list(shard).clone();""","""        let diag_start = diag_now();
        let conns = delivery.members.list(shard).clone();""",1)
s=s.replace("""            conn.deliver(id, seq, delivery.event.frame(conn.encoding()));
        }
    }""","""            conn.deliver(id, seq, delivery.event.frame(conn.encoding()));
        }
        let (at, received) = delivery.diag;
        diag_line(format!("{seq} {shard} {} {} {} {} {}", conns.len(), received - at, diag_start - at, diag_now() - at, at));
    }""",1)
open(p,'w').write(s)
