//! The sandbox under attack, through the fault hook (cargo feature
//! `fault-injection`, which tests/all.sh enables): forbidden syscalls die by
//! SIGSYS and are logged as security events, a write into another client's
//! slot faults, Landlock holds on its own, a panic is one line and an exit.
//! In every case the other clients keep chatting.
#![cfg(feature = "fault-injection")]

mod common;
use common::*;

/// Connects a client, makes its child perform `fault`, and checks that the
/// child dies with `needle` in the master's log while `a` and `b` chat on.
fn fault_kills(
    server: &Server,
    a: &mut Client,
    b: &mut Client,
    fault: &str,
    needle: &str,
    n: usize,
) {
    let (mut x, x_nick) = server.join();
    a.expect(&format!("{x_nick} joined"));
    b.expect(&format!("{x_nick} joined"));
    x.send(&format!("/fault {fault}\n"));
    let lines = x.read_to_eof();
    assert!(
        !lines.iter().any(|l| l.contains("survived")),
        "{fault}: child survived: {lines:?}"
    );
    let logged = server.wait_log_n(needle, n);
    assert!(
        logged.contains(&format!("nick={x_nick}")),
        "{fault}: {logged}"
    );
    let left = a.expect(&format!("{x_nick} left"));
    b.expect(&format!("{x_nick} left"));
    let reason = needle.trim_start_matches("event=\"security\"");
    let reason = if reason.is_empty() {
        "killed by SIGSYS"
    } else {
        reason
    };
    assert!(left.contains(reason), "{fault}: {left}");
    a.send(&format!("after {fault}\n"));
    b.expect(&format!("after {fault}"));
}

#[test]
fn forbidden_syscalls_die_by_sigsys_and_are_logged() {
    let server = Server::start(&[]);
    let (mut a, _) = server.join();
    let (mut b, _) = server.join();
    let faults = [
        "openat",
        "socket",
        "execve",
        "ptrace",
        "mprotect-other",
        "mremap-grow",
    ];
    for (i, fault) in faults.iter().enumerate() {
        fault_kills(&server, &mut a, &mut b, fault, "event=\"security\"", i + 1);
        let line = server.wait_log_n("event=\"security\"", i + 1);
        assert!(line.contains("WARN"), "{line}");
        for field in [
            "pid=",
            "client=",
            "peer=127.0.0.1:",
            "reason=\"seccomp violation\"",
        ] {
            assert!(line.contains(field), "{field} in {line}");
        }
    }
    // All six children are gone; the two chatting ones remain.
    wait_for(TIMEOUT, || (server.children().len() == 2).then_some(())).expect("children reaped");
}

#[test]
fn writing_another_clients_slot_or_the_log_faults() {
    // 300 slots: a child's own heap (1 MiB + 4 x max_sendq, 2 MiB by
    // default) is mapped right after its view, over where the first ~128
    // slots lie in the master. With 8 slots the last one lay inside it
    // whenever that placement succeeded (it depends on what else is mapped
    // nearby), and the store did not fault: 1 run in 12 under load.
    let server = Server::start(&[("max_clients", "300")]);
    // `a` and `b` hold slots 0 and 1; the faulting children write where
    // the last slot is in the master (unmapped in a child) and into the
    // read-only relay log.
    let (mut a, a_nick) = server.join();
    let (mut b, b_nick) = server.join();
    for (i, fault) in ["write-other", "write-log"].iter().enumerate() {
        // Two log lines per death: child_died, then disconnect.
        fault_kills(
            &server,
            &mut a,
            &mut b,
            fault,
            "killed by SIGSEGV",
            2 * i + 1,
        );
    }
    // Both slots and the log still work both ways.
    a.send("slot zero intact\n");
    b.expect(&format!("<{a_nick}> slot zero intact"));
    b.send("slot one intact\n");
    a.expect(&format!("<{b_nick}> slot one intact"));
}

#[test]
fn a_child_panic_is_one_line_and_an_exit() {
    let server = Server::start(&[]);
    let (mut a, _) = server.join();
    let (mut b, _) = server.join();
    fault_kills(
        &server,
        &mut a,
        &mut b,
        "panic",
        "exited with status 101",
        1,
    );
    let panic_line = server.wait_log("panic: ");
    assert!(panic_line.starts_with("chatd child "), "{panic_line}");
    assert_eq!(
        server.count_log("SIGSYS"),
        0,
        "a panic is not a sandbox kill"
    );
}

#[test]
fn landlock_alone_denies_opening_files() {
    // Unprivileged, so there is no chroot: the path exists in the child's
    // root and its permissions let this user read it (the master just read
    // it as its config). Only Landlock stands between the child and the file.
    let (server, path) = Server::start_unprivileged(BIN, true);
    let mut a = server.connect();
    a.greeting();
    let note = a.expect("fault: open");
    assert_eq!(
        note,
        format!(
            "! fault: open {}: Permission denied (os error 13)",
            path.display()
        )
    );
    a.send("/who\n");
    a.expect("1 online");
}

#[test]
fn a_kernel_refusing_set_mm_leaves_children_on_their_forked_stack() {
    // The fault hook makes every child act as if PR_SET_MM_MAP were refused
    // (a kernel without CONFIG_CHECKPOINT_RESTORE): the child must keep the
    // stack it was forked on, and with it the master's title, and chat.
    let (mut cmd, dir, config_path) = Server::command(&render(&base_config()));
    cmd.env("CHATD_FAULT_NO_SET_MM", "1");
    let server = Server::spawn(cmd, dir, config_path);
    let (mut a, _) = server.join();
    let (mut b, b_nick) = server.join();
    a.expect(&format!("{b_nick} joined"));
    a.send("from a on the old stack\n");
    b.expect("from a on the old stack");
    b.send("from b on the old stack\n");
    a.expect("from b on the old stack");

    let master = proc_image(server.pid()).cmdline;
    let children = server.children();
    assert_eq!(children.len(), 2, "{children:?}");
    for child in children {
        let image = proc_image(child);
        assert_eq!(
            image.cmdline, master,
            "child {child} keeps the master's title"
        );
        assert!(image.has_stack, "child {child} lost the stack it runs on");
        assert_eq!(image.comm, "chatd", "child {child} comm");
    }
}
