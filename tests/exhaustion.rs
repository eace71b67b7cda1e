//! Fork failing for want of processes (RLIMIT_NPROC, as under a tight
//! TasksMax): clear refusals and log events, never a crash or a hang.
//!
//! Alone in its test binary: RLIMIT_NPROC counts every process of the
//! service user (`nobody` here), and other tests' servers run as that user
//! too; cargo runs test binaries one at a time.
mod common;

use common::{Server, NOBODY};

/// Processes whose real uid is `uid`.
fn processes_of(uid: u32) -> u64 {
    let mut n = 0;
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        if e.file_name().to_string_lossy().parse::<u32>().is_err() {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(e.path().join("status")) else {
            continue;
        };
        let s = common::parse_status(&text);
        let real = s
            .get("Uid")
            .and_then(|u| u.split_whitespace().next()?.parse().ok());
        if real == Some(uid) {
            n += 1;
        }
    }
    n
}

/// With room for three children, the fourth and later clients get
/// `! server busy, try again later` and are closed (events "fork_failed"
/// and "refused", reason "cannot start a child"); the admitted ones keep
/// chatting; when one leaves, a new client gets its place.
#[test]
fn fork_failure_refuses_with_a_line() {
    // Only root can start chatd as another user, whose processes alone the
    // limit then counts.
    if !common::have_root("fork_failure_refuses_with_a_line") {
        return;
    }
    let limit = processes_of(NOBODY) + 1 + 3;
    let srv = Server::start_limited(&format!("--nproc={limit}:{limit}"), &[]);
    let mut admitted = Vec::new();
    let mut refused = 0;
    for _ in 0..6 {
        let mut c = srv.connect();
        let first = c.read_line().expect("an answer, not silence");
        if first.contains("Welcome") {
            admitted.push(c);
        } else {
            assert_eq!(first, "! server busy, try again later");
            assert!(c.is_closed());
            refused += 1;
        }
    }
    assert_eq!((admitted.len(), refused), (3, 3));
    let failed = srv.wait_log("event=\"fork_failed\"");
    assert!(
        failed.contains("Resource temporarily unavailable") || failed.contains("EAGAIN"),
        "{failed}"
    );
    let ev = srv.wait_log("reason=\"cannot start a child\"");
    assert!(ev.contains("event=\"refused\""), "{ev}");
    admitted[0].send("still chatting\n");
    admitted[1].expect("still chatting");
    admitted[2].expect("still chatting");
    // One leaves; once its child is reaped a newcomer gets in.
    drop(admitted.remove(0));
    srv.wait_log("event=\"disconnect\"");
    let (_newcomer, nick) = common::wait_for(common::TIMEOUT, || {
        let mut c = srv.connect();
        let first = c.read_line()?;
        first.contains("Welcome").then(|| {
            let nick = first
                .split("You are ")
                .nth(1)
                .unwrap()
                .split('.')
                .next()
                .unwrap()
                .to_string();
            (c, nick)
        })
    })
    .expect("a place freed by a leaving client");
    admitted[0].expect(&format!("{nick} joined"));
    assert!(common::pid_alive(srv.pid()));
}
