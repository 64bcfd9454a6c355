//! The harness proves its own promises against real servers: isolation between parallel tests,
//! servers gone after their owner is dropped or dies, and inadequate servers refused.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use testkit::{HarnessError, NatsServer, PgServer, PgServerOptions, TestDb, TestNats};

fn pid_exists(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
    })
}

fn wait_gone(pid: u32) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if !pid_exists(pid) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

async fn migrated_db() -> TestDb {
    testkit::postgres()
        .expect("postgres")
        .database("harness-selftest-v1", |url| async move {
            let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
            let driver = tokio::spawn(connection);
            client
                .batch_execute("CREATE TABLE marks (owner text NOT NULL)")
                .await?;
            drop(client);
            let _ = driver.await;
            Ok::<_, tokio_postgres::Error>(())
        })
        .await
        .expect("database from template")
}

/// One simulated test: writes its marker to its database and its namespace, then reads back
/// everything it can see.
async fn one_test(owner: &str) -> (Vec<String>, Vec<String>) {
    let db = migrated_db().await;
    let TestNats { url, prefix } = testkit::nats().expect("nats");
    let client = db.client().await.expect("connect");
    client
        .execute("INSERT INTO marks VALUES ($1)", &[&owner])
        .await
        .expect("insert");

    let nats = async_nats::connect(&url).await.expect("nats connect");
    let js = async_nats::jetstream::new(nats);
    let stream = format!("{prefix}_MARKS");
    js.get_or_create_stream(async_nats::jetstream::stream::Config {
        name: stream.clone(),
        subjects: vec![format!("{prefix}.marks")],
        ..Default::default()
    })
    .await
    .expect("create stream");
    js.publish(format!("{prefix}.marks"), owner.to_string().into())
        .await
        .expect("publish")
        .await
        .expect("ack");
    // Give a concurrent test time to write its own data before we look.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let rows: Vec<String> = client
        .query("SELECT owner FROM marks", &[])
        .await
        .expect("select")
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut streams: Vec<String> = Vec::new();
    let mut names = js.stream_names();
    while let Some(name) = names.next().await {
        let name = name.expect("stream name");
        if name.ends_with("_MARKS") {
            streams.push(name);
        }
    }
    let own = streams.iter().filter(|s| **s == stream).count();
    assert_eq!(own, 1, "the test sees its own stream");
    (
        rows,
        streams
            .into_iter()
            .filter(|s| s.starts_with(&prefix))
            .collect(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_tests_do_not_see_each_others_data() {
    testkit::init_logging();
    let (a, b) = tokio::join!(tokio::spawn(one_test("a")), tokio::spawn(one_test("b")));
    let (rows_a, streams_a) = a.expect("test a");
    let (rows_b, streams_b) = b.expect("test b");
    assert_eq!(rows_a, vec!["a".to_string()]);
    assert_eq!(rows_b, vec!["b".to_string()]);
    assert_eq!(streams_a.len(), 1);
    assert_eq!(streams_b.len(), 1);
    assert_ne!(streams_a, streams_b);
}

#[tokio::test]
async fn databases_are_cloned_from_a_template_prepared_once() {
    let first = migrated_db().await;
    let second = migrated_db().await;
    assert_ne!(first.name, second.name);
    for db in [&first, &second] {
        let client = db.client().await.expect("connect");
        let count: i64 = client
            .query_one("SELECT count(*) FROM marks", &[])
            .await
            .expect("the template's table is there")
            .get(0);
        assert_eq!(count, 0);
    }
}

#[test]
fn a_started_nats_server_is_gone_after_drop() {
    let server = NatsServer::start().expect("start nats");
    let pid = server.pid().expect("pid");
    assert!(pid_exists(pid));
    testkit::check_nats_adequate(&server.url()).expect("our own server is adequate");
    drop(server);
    assert!(!pid_exists(pid), "nats-server {pid} still runs after drop");
}

#[test]
fn a_started_postgres_server_is_gone_after_drop() {
    let server = PgServer::start(PgServerOptions::default()).expect("start postgres");
    let pid = server.pid().expect("pid");
    assert!(pid_exists(pid));
    drop(server);
    assert!(!pid_exists(pid), "postgres {pid} still runs after drop");
}

#[tokio::test]
async fn a_restarted_nats_server_keeps_its_streams() {
    let mut server = NatsServer::start().expect("start nats");
    let js = async_nats::jetstream::new(async_nats::connect(server.url()).await.expect("connect"));
    js.get_or_create_stream(async_nats::jetstream::stream::Config {
        name: "KEEP".into(),
        subjects: vec!["keep.>".into()],
        ..Default::default()
    })
    .await
    .expect("stream");
    js.publish("keep.x", "1".into())
        .await
        .expect("publish")
        .await
        .expect("ack");
    server.restart().expect("restart");
    let js =
        async_nats::jetstream::new(async_nats::connect(server.url()).await.expect("reconnect"));
    let mut stream = js.get_stream("KEEP").await.expect("stream survives");
    assert_eq!(stream.info().await.expect("info").state.messages, 1);
}

#[test]
fn a_nats_server_without_jetstream_is_refused_with_a_clear_message() {
    let server = NatsServer::start_without_jetstream().expect("start nats");
    let error = testkit::check_nats_adequate(&server.url()).expect_err("must be refused");
    assert!(matches!(error, HarnessError::InadequateNats { .. }));
    let message = error.to_string();
    assert!(message.contains("without JetStream"), "{message}");
    assert!(message.contains("unset it"), "{message}");
}

/// A stand-in that greets like nats-server 2.9 (Debian 12's version): only its INFO line is
/// read, which is all the adequacy check looks at.
fn old_server_greeting() -> (String, std::thread::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("nats://{}", listener.local_addr().expect("addr"));
    let handle = std::thread::spawn(move || {
        for _ in 0..2 {
            if let Ok((mut socket, _)) = listener.accept() {
                let _ = socket.write_all(
                    b"INFO {\"server_id\":\"x\",\"version\":\"2.9.25\",\"jetstream\":true,\"max_payload\":1048576}\r\n",
                );
            }
        }
    });
    (url, handle)
}

#[test]
fn a_nats_server_older_than_2_10_is_refused_with_a_clear_message() {
    let (url, _greeter) = old_server_greeting();
    let error = testkit::check_nats_adequate(&url).expect_err("must be refused");
    assert!(
        error.to_string().contains("2.9.25 is older than 2.10"),
        "{error}"
    );
}

/// Run by the test below in a child process, with `NATS_URL` set there.
#[test]
#[ignore = "run by nats_url_naming_an_inadequate_server_is_refused_by_the_harness"]
fn probe_nats_from_environment() {
    match testkit::nats() {
        Ok(nats) => println!("PROBE accepted {}", nats.url),
        Err(e) => println!("PROBE refused: {e}"),
    }
}

#[test]
fn nats_url_naming_an_inadequate_server_is_refused_by_the_harness() {
    let (url, _greeter) = old_server_greeting();
    let output = Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--ignored",
            "--exact",
            "probe_nats_from_environment",
            "--nocapture",
        ])
        .env("NATS_URL", &url)
        .output()
        .expect("run probe");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("PROBE refused"), "{stdout}");
    assert!(stdout.contains("is not adequate"), "{stdout}");
}

/// Run by the test below in a child process that gets killed.
#[test]
#[ignore = "run by servers_die_with_a_killed_test_process"]
fn probe_start_servers_and_wait() {
    let nats = NatsServer::start().expect("nats");
    let pg = PgServer::start(PgServerOptions::default()).expect("postgres");
    println!(
        "PIDS {} {}",
        nats.pid().expect("pid"),
        pg.pid().expect("pid")
    );
    println!("DIRS {} {}", nats.dir().display(), pg.dir().display());
    std::thread::sleep(Duration::from_secs(60));
}

#[test]
fn servers_die_with_a_killed_test_process() {
    let mut child = Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--ignored",
            "--exact",
            "probe_start_servers_and_wait",
            "--nocapture",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("run probe");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines().map_while(Result::ok);
    let pids: Vec<u32> = lines
        .find_map(|line| line.strip_prefix("PIDS ").map(str::to_owned))
        .expect("probe prints its server pids")
        .split_whitespace()
        .map(|p| p.parse().expect("pid"))
        .collect();
    let dirs: Vec<String> = lines
        .find_map(|line| line.strip_prefix("DIRS ").map(str::to_owned))
        .expect("probe prints its server directories")
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    assert_eq!(pids.len(), 2);
    child.kill().expect("SIGKILL the test process");
    let _ = child.wait();
    for pid in pids {
        assert!(
            wait_gone(pid),
            "server {pid} outlived its killed test process"
        );
    }
    // A killed owner cannot remove its private servers' directories; this test does.
    for dir in dirs {
        let _ = std::fs::remove_dir_all(dir);
    }
}
