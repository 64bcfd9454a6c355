#!/usr/bin/env python3
"""The gateway's heap per idle connection, by allocation site (issue 19, ADR 0029).

Reads the dhat profile that `crates/croupier/tests/gateway_heap.rs` writes when run with
GATEWAY_HEAP_PROFILE=/path/dhat.json (taken with every client still connected) and prints each
site's live bytes and blocks divided by the connections then open (1002: a warm-up client of
each kind and 500 of each kind), as a Markdown table. Sites that do not grow with connections
(the runtime, the bus client, the table's feed) land in "fixed", which is not per connection.

    GATEWAY_HEAP_PROFILE=/tmp/dhat.json cargo test -p croupier --test gateway_heap
    python3 docs/experiments/gateway-heap-breakdown.py /tmp/dhat.json [CONNECTIONS]
"""
import json
import re
import sys

# (name, pattern over the site's whole backtrace); the first match wins.
SITES = [
    ("session task: tokio task cell of the upgrade block around `session::run`",
     r"Cell<tokio_util::task::task_tracker::TrackedFuture<gateway::http::upgrade"),
    ("reader task: tokio task cell of `read_loop`",
     r"Cell<tokio_util::task::task_tracker::TrackedFuture<gateway::session::read_loop"),
    ("read buffer: fastwebsockets `BytesMut::with_capacity(8192)`", r"ReadHalf::after_handshake"),
    ("read buffer's shared header (`BytesMut::split_to`)", r"promote_to_shared"),
    ("inbound queue: tokio mpsc block (32 slots of `Inbound`)", r"mpsc/block\.rs[\s\S]*session\.rs"),
    ("inbound queue: tokio mpsc channel state (cache-padded)", r"channel_from_list[\s\S]*session\.rs"),
    ("`Conn` (Arc)", r"ArcInner<gateway::outbox::Conn>"),
    ("tokio I/O registration (`ScheduledIo`)", r"RegistrationSet::allocate[\s\S]*Gateway<B>::run"),
    ("subscriptions: `Vec<(Channel, Joined)>` (4 slots)", r"Subscriptions::insert"),
    ("channel name (`TableId` string)", r"TableId::parse[\s\S]*session\.rs"),
    ("outbox queue: `VecDeque<Queued>` (4 slots, grown by `welcome`)", r"outbox::Outbox::push"),
    ("bets in flight: `FuturesUnordered` (ready queue and stub task)", r"futures_unordered[\s\S]*session\.rs"),
    ("idle check: `Interval` (boxed `Sleep`)", r"internal_interval_at[\s\S]*session\.rs"),
    ("reader stop: `CancellationToken`", r"CancellationToken::new[\s\S]*session\.rs"),
    ("`TcpStream::into_split` (Arc)", r"split_owned::split_owned[\s\S]*session\.rs"),
    ("reader's message buffer (kept for the next message)", r"extend_from_slice[\s\S]*session\.rs:2\d\d"),
    ("`welcome` held in `serve`: session id", r"uuid::fmt[\s\S]*session\.rs"),
    ("`welcome` held in `serve`: player id (players only)", r"PlayerId as core::clone::Clone[\s\S]*session\.rs"),
    ("token: `Verified` player id (players only)", r"PlayerId::parse[\s\S]*auth::verify_token"),
    ("`Heard` (Arc)", r"ArcInner<gateway::session::Heard>"),
    ("hub membership lists (`Vec<Arc<Conn>>`, amortised)", r"gateway::hub::Members"),
]


def main() -> None:
    profile = json.load(open(sys.argv[1]))
    connections = int(sys.argv[2]) if len(sys.argv) > 2 else 1002
    frames = profile["ftbl"]
    totals: dict[str, list[int]] = {}
    for site in profile["pps"]:
        if site["eb"] == 0:
            continue
        trace = "\n".join(frames[i] for i in site["fs"])
        name = next((n for n, pattern in SITES if re.search(pattern, trace)), "fixed (not per connection)")
        bytes_blocks = totals.setdefault(name, [0, 0])
        bytes_blocks[0] += site["eb"]
        bytes_blocks[1] += site["ebk"]
    print("| site | bytes per connection | blocks per connection |")
    print("|---|---:|---:|")
    per_connection = [0.0, 0.0]
    for name, (b, k) in sorted(totals.items(), key=lambda item: -item[1][0]):
        if name.startswith("fixed"):
            continue
        per_connection[0] += b / connections
        per_connection[1] += k / connections
        print(f"| {name} | {b / connections:.0f} | {k / connections:.2f} |")
    print(f"| **per connection** | **{per_connection[0]:.0f}** | **{per_connection[1]:.2f}** |")
    fixed = totals.get("fixed (not per connection)", [0, 0])
    print(f"\nfixed (not per connection): {fixed[0]} bytes in {fixed[1]} blocks")


if __name__ == "__main__":
    main()
