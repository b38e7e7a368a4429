//! The first admin key is never lost: a first start that fails (here: a master key file that
//! does not exist) writes no key, so the next start still creates and prints one.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

fn serve(db: &std::path::Path, extra: &[&str]) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_agentplane"))
        .args(["serve", "--listen", "127.0.0.1:0", "--database"])
        .arg(db)
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start agentplane serve")
}

#[test]
fn a_failed_first_start_leaves_the_bootstrap_to_the_next() {
    let dir = std::env::temp_dir().join(format!("agentplane-bootstrap-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let db = dir.join("bootstrap.db");
    let _ = std::fs::remove_file(&db);

    let missing = dir.join("no-such-master.key");
    let failed = serve(&db, &["--master-key-file", missing.to_str().expect("path")])
        .wait_with_output()
        .expect("wait");
    assert!(
        !failed.status.success(),
        "a missing master key file fails the start"
    );
    let printed = String::from_utf8_lossy(&failed.stdout);
    assert!(
        !printed.contains("ap_"),
        "the failed start printed a key: {printed}"
    );

    let mut second = serve(&db, &[]);
    let stdout = second.stdout.take().expect("stdout");
    let mut key = None;
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("line");
        if let Some(k) = line.split_whitespace().find(|w| w.starts_with("ap_")) {
            key = Some(k.to_string());
        }
        if line.contains("listening on") {
            break;
        }
    }
    let pid = second.id().to_string();
    let _ = Command::new("kill").args(["-TERM", &pid]).status();
    let _ = second.wait();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        key.is_some(),
        "the first successful start prints the first admin key"
    );
}

/// The SQLite database and its WAL are readable by their owner only.
#[cfg(unix)]
#[test]
fn the_database_files_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("agentplane-private-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let db = dir.join("private.db");
    let store = agentplane::db::Store::open(db.to_str().expect("path"), 2).expect("open");
    store
        .run_blocking(agentplane::auth::bootstrap)
        .expect("a write");
    for file in [db.clone(), dir.join("private.db-wal")] {
        let mode = std::fs::metadata(&file)
            .expect("metadata")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "{} is {mode:o}", file.display());
    }
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
}
