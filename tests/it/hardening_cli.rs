//! Issue 11 (hardening), the command-line side: token files (§2), signals for the archive
//! commands and `receive` (§4), the empty clone (§5.3) and `receive --insecure` (§5.6).
//!
//! Every test runs the built binary, bounds every wait, and leaves no process behind (`Proc`
//! kills on drop).

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::support::cli::{run_timed, Out};
use crate::support::proc::Proc;
use crate::support::{free_port, s, short_tempdir, write_token, xb};

const EXIT_LOCAL: i32 = 3;
const EXIT_PEER: i32 = 4;

fn local(port: u16) -> String {
    format!("127.0.0.1:{port}")
}

/// A file holding `text` with `mode`.
fn file_with_mode(path: &Path, text: &str, mode: u32) -> PathBuf {
    fs::write(path, text).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    path.to_path_buf()
}

/// `serve --dir DIR --token-file TOKEN EXTRA` on a free port: does it start listening? It is
/// stopped again either way.
fn serve_starts(root: &Path, name: &str, token: &Path, extra: &[&str]) -> (bool, String) {
    let listen = local(free_port());
    let mut p = Proc::spawn(
        name,
        xb(&["serve", "--listen", &listen, "--dir", s(root)])
            .args(["--token-file", s(token)])
            .args(extra),
        root.join(format!("{name}.log")),
        true,
    );
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_secs(15) {
        if p.log().contains("listening on") {
            return (true, p.log());
        }
        if !p.running() {
            let out = p.wait(Duration::from_secs(5));
            return (false, out.log);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("serve neither listened nor exited within 15 s: {}", p.log());
}

/// `receive` from a port where nothing listens, retrying for no time: exit 4 once the token
/// was accepted, exit 3 when it was refused.
fn receive_nowhere(root: &Path, token: &Path, extra: &[&str]) -> Out {
    let mut cmd = xb(&[
        "receive",
        "--from",
        &local(free_port()),
        "-C",
        s(&root.join("dst")),
        "--retry-for",
        "0s",
        "--token-file",
        s(token),
    ]);
    cmd.args(extra);
    run_timed(cmd, None, Duration::from_secs(30))
}

// ---------------------------------------------------------------------------------------------
// §2 token files
// ---------------------------------------------------------------------------------------------

#[test]
fn token_new_writes_a_private_file_of_64_hex_digits() {
    let t = short_tempdir("xbh-tnew");
    let mut tokens = Vec::new();
    for name in ["a", "b"] {
        let f = t.path().join(name);
        let out = run_timed(
            {
                let mut c = std::process::Command::new("sh");
                c.args([
                    "-c",
                    &format!(
                        "umask 022; '{}' token new > '{}'",
                        crate::support::XBAGENT,
                        s(&f)
                    ),
                ]);
                c
            },
            None,
            Duration::from_secs(10),
        );
        out.code(0);
        let mode = fs::metadata(&f).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "token new > FILE left mode {mode:o}");
        let text = fs::read_to_string(&f).unwrap();
        let hex = text.strip_suffix('\n').expect("a newline after the token");
        assert_eq!(hex.len(), 64, "not 64 characters: {text:?}");
        assert!(
            hex.bytes().all(|b| b.is_ascii_hexdigit()),
            "not hex: {text:?}"
        );
        tokens.push(f);
    }
    assert_ne!(
        fs::read(&tokens[0]).unwrap(),
        fs::read(&tokens[1]).unwrap(),
        "two runs gave the same token"
    );
    let (started, log) = serve_starts(t.path(), "serve", &tokens[0], &[]);
    assert!(started, "serve refused the token of `token new`: {log}");
}

#[test]
fn a_token_file_readable_by_others_is_refused_unless_allowed() {
    let t = short_tempdir("xbh-tmode");
    let good = write_token(t.path());
    let text = fs::read_to_string(&good).unwrap();
    for mode in [0o644, 0o640, 0o604] {
        let open = file_with_mode(&t.path().join("open"), &text, mode);
        let (started, log) = serve_starts(t.path(), "serve-open", &open, &[]);
        assert!(
            !started,
            "serve accepted a token file of mode {mode:o}: {log}"
        );
        assert!(
            log.contains("readable by group or others") && log.contains("chmod 600"),
            "serve's refusal does not say what is wrong and how to fix it: {log}"
        );
        let out = receive_nowhere(t.path(), &open, &[]);
        out.code(EXIT_LOCAL).says("chmod 600");
    }
    let open = file_with_mode(&t.path().join("open"), &text, 0o644);
    let (started, log) = serve_starts(t.path(), "serve-weak", &open, &["--allow-weak-token"]);
    assert!(started, "--allow-weak-token did not accept mode 644: {log}");
    receive_nowhere(t.path(), &open, &["--allow-weak-token"]).code(EXIT_PEER);
}

/// A Kubernetes Secret volume: `token -> ..data/token`, `..data -> ..2026_12_06...`; the mode
/// that counts is the file's at the end of the links.
#[test]
fn a_secret_volume_is_judged_by_the_file_behind_its_symlinks() {
    let t = short_tempdir("xbh-tk8s");
    let vol = t.path().join("vol");
    let real = vol.join("..2026_12_06_16_00_00.000000001");
    fs::create_dir_all(&real).unwrap();
    let text = fs::read_to_string(write_token(t.path())).unwrap();
    let file = file_with_mode(&real.join("token"), &text, 0o400);
    symlink("..2026_12_06_16_00_00.000000001", vol.join("..data")).unwrap();
    symlink("..data/token", vol.join("token")).unwrap();
    let token = vol.join("token");
    let (started, log) = serve_starts(t.path(), "serve-0400", &token, &[]);
    assert!(
        started,
        "serve refused a 0400 Secret behind symlinks: {log}"
    );
    receive_nowhere(t.path(), &token, &[]).code(EXIT_PEER);

    // The Secret's default mode, 0644, is refused through the same links.
    fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).unwrap();
    let (started, log) = serve_starts(t.path(), "serve-0644", &token, &[]);
    assert!(!started, "serve accepted a 0644 Secret: {log}");
    assert!(log.contains("defaultMode: 0400"), "{log}");
}

#[test]
fn a_short_token_is_refused_unless_allowed() {
    let t = short_tempdir("xbh-tshort");
    let short = file_with_mode(
        &t.path().join("short"),
        "  correct horse battery staple\n",
        0o600,
    );
    let (started, log) = serve_starts(t.path(), "serve-short", &short, &[]);
    assert!(!started, "serve accepted a 28-byte token: {log}");
    assert!(
        log.contains("at least 32") && log.contains("xbagent token new"),
        "serve's refusal does not say what is wrong and how to fix it: {log}"
    );
    receive_nowhere(t.path(), &short, &[])
        .code(EXIT_LOCAL)
        .says("xbagent token new");

    let (started, log) = serve_starts(t.path(), "serve-weak", &short, &["--allow-weak-token"]);
    assert!(
        started,
        "--allow-weak-token did not accept a short token: {log}"
    );
    receive_nowhere(t.path(), &short, &["--allow-weak-token"]).code(EXIT_PEER);

    // 32 bytes exactly, padded with whitespace, is enough.
    let just = file_with_mode(
        &t.path().join("just"),
        &format!("\n {}\t\n", "k".repeat(32)),
        0o600,
    );
    receive_nowhere(t.path(), &just, &[]).code(EXIT_PEER);
}

#[test]
fn an_endless_token_file_is_refused_at_once() {
    let t = short_tempdir("xbh-tzero");
    for cmd in ["serve", "receive"] {
        let mut c = match cmd {
            "serve" => xb(&[
                "serve",
                "--listen",
                &local(free_port()),
                "--dir",
                s(t.path()),
            ]),
            _ => xb(&[
                "receive",
                "--from",
                &local(free_port()),
                "-C",
                s(&t.path().join("dst")),
            ]),
        };
        c.args(["--token-file", "/dev/zero"]);
        let out = run_timed(c, None, Duration::from_secs(5));
        out.code(EXIT_LOCAL).says("larger than 4096 bytes");
    }
}
