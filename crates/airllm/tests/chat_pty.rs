//! `airllm chat` driven through a pseudo-terminal, as a person would: Ctrl-C while a
//! reply streams stops the reply and keeps the session and its history; unknown
//! commands are errors that list the commands; /save writes the conversation; a later
//! turn reads only what follows the cached conversation.

#![cfg(unix)]
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a panic is the failure report

use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

fn fixture(family: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/tiny").join(family)
}

/// A child process on a pty, with its output collected by a reader thread.
struct Pty {
    master: std::fs::File,
    rx: mpsc::Receiver<Vec<u8>>,
    seen: String,
    child: std::process::Child,
}

impl Pty {
    fn spawn(mut cmd: Command) -> Pty {
        let (mut m, mut s) = (0, 0);
        // SAFETY: openpty writes two fds into the provided ints; null name/termios/winsize are allowed.
        let rc = unsafe { libc::openpty(&mut m, &mut s, std::ptr::null_mut(), std::ptr::null(), std::ptr::null()) };
        assert_eq!(rc, 0, "openpty failed");
        // SAFETY: both fds were just returned by openpty and are owned by nobody else.
        let (master, slave) = unsafe { (OwnedFd::from_raw_fd(m), OwnedFd::from_raw_fd(s)) };
        cmd.stdin(Stdio::from(slave.try_clone().unwrap()))
            .stdout(Stdio::from(slave.try_clone().unwrap()))
            .stderr(Stdio::from(slave));
        // SAFETY: setsid and ioctl(TIOCSCTTY) are async-signal-safe; they make the pty the
        // child's controlling terminal so Ctrl-C on it sends SIGINT to the child.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY as _, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().unwrap();
        let master = std::fs::File::from(master);
        let mut reader = master.try_clone().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                    break;
                }
            }
        });
        Pty { master, rx, seen: String::new(), child }
    }

    /// Wait until the output (since `from`) contains `what`; returns the position after it.
    fn expect(&mut self, from: usize, what: &str, timeout: Duration) -> usize {
        let end = Instant::now() + timeout;
        loop {
            if let Some(p) = self.seen[from.min(self.seen.len())..].find(what) {
                return from + p + what.len();
            }
            let left = end.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "timed out waiting for {what:?}; output so far:\n{}", self.seen);
            if let Ok(b) = self.rx.recv_timeout(left.min(Duration::from_millis(200))) {
                self.seen.push_str(&String::from_utf8_lossy(&b));
            }
        }
    }

    fn send(&mut self, s: &str) {
        self.master.write_all(s.as_bytes()).unwrap();
        self.master.flush().unwrap();
    }
}

impl Drop for Pty {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn ctrl_c_stops_the_reply_and_keeps_the_session() {
    if airllm_gpu::GpuContext::new(&Default::default()).is_err() {
        assert!(std::env::var_os("CI").is_none(), "CI must have lavapipe");
        eprintln!("skipping: no GPU adapter");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    // The tiny models have no chat template: give one.
    let template = tmp.path().join("t.jinja");
    std::fs::write(&template, "{% for m in messages %}<s>{{ m.role }}: {{ m.content }}\n{% endfor %}assistant:")
        .unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_airllm"));
    cmd.env("XDG_RUNTIME_DIR", std::env::temp_dir())
        .env("XDG_CACHE_HOME", tmp.path().join("cache"))
        .arg("chat")
        .arg("--model")
        .arg(fixture("qwen3"))
        .arg("--shards-dir")
        .arg(tmp.path().join("shards"))
        .arg("--chat-template")
        .arg(&template)
        .args([
            "--ctx-size",
            "256",
            "-n",
            "200",
            "--ignore-eos",
            "--temp",
            "0.8",
            "--seed",
            "3",
            "--resident-layers",
            "0",
            // Streamed through lavapipe the reply is slow enough to interrupt; the
            // CPU executor would finish 200 tokens before Ctrl-C arrives.
            "--device",
            "gpu",
        ]);
    let mut pty = Pty::spawn(cmd);
    let long = Duration::from_secs(240);
    // After loading (whose progress bars hold "> " too) the banner, then the prompt.
    let at = pty.expect(0, "/help for commands", long);
    let at = pty.expect(at, "> ", long);
    pty.send("hello there\r");
    // The reply starts streaming after the echoed line; interrupt it.
    let at = pty.expect(at, "hello there", long);
    std::thread::sleep(Duration::from_millis(300));
    pty.send("\x03");
    let at = pty.expect(at, "[interrupted]", long);
    let at = pty.expect(at, "> ", long);
    // The session goes on: an unknown command is an error that lists the commands.
    pty.send("/frobnicate\r");
    let at = pty.expect(at, "unknown command /frobnicate", long);
    let at = pty.expect(at, "/help", long);
    // A too-long message is refused and the session goes on.
    pty.send(&format!("{}\r", "word ".repeat(300)));
    let at = pty.expect(at, "was not sent", long);
    // The second turn reads only what follows the cached first turn (its prompt and
    // the part of the interrupted reply that was fed).
    pty.send("and more\r");
    let at = pty.expect(at, "and more", long);
    std::thread::sleep(Duration::from_millis(300));
    pty.send("\x03");
    let at = pty.expect(at, "[interrupted]", long);
    let start = pty.expect(at, "; prompt ", long);
    let at = pty.expect(start, " of them cached", long);
    let nums: Vec<usize> = pty.seen[start..at]
        .split(|c: char| !c.is_ascii_digit())
        .filter(|w| !w.is_empty())
        .map(|w| w.parse().unwrap())
        .collect();
    let (prompt, cached) = (nums[0], nums[1]);
    assert!(cached > 0 && cached < prompt, "the second turn reused the first's cache: {cached} of {prompt}");
    let at = pty.expect(at, "> ", long);
    // History kept: the first turn and the partial reply are in the saved conversation.
    let saved = tmp.path().join("conv.json");
    pty.send(&format!("/save {}\r", saved.display()));
    let at = pty.expect(at, "(saved 4 messages", long);
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&saved).unwrap()).unwrap();
    let msgs = v["messages"].as_array().unwrap();
    assert_eq!(msgs[0]["role"], "user");
    assert_eq!(msgs[0]["content"], "hello there");
    assert_eq!(msgs[1]["role"], "assistant");
    // /set validates and names the setting.
    pty.send("/set top_p 2\r");
    let at = pty.expect(at, "top_p must be", long);
    pty.send("/exit\r");
    let end = Instant::now() + long;
    loop {
        if let Some(status) = pty.child.try_wait().unwrap() {
            assert!(status.success(), "chat exited with {status}; output:\n{}", &pty.seen[at.min(pty.seen.len())..]);
            break;
        }
        assert!(Instant::now() < end, "chat did not exit");
        std::thread::sleep(Duration::from_millis(50));
    }
}
