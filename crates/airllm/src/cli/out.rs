//! Standard output that survives a closed pipe (`airllm generate ... | head`):
//! the first failed write marks it closed and raises the cancellation flag, so
//! generation stops at the next step and the command exits quietly.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Stdout with EPIPE handling.
#[derive(Debug)]
pub struct Out {
    closed: bool,
    cancel: Arc<AtomicBool>,
}

/// An error that means "the reader went away": exit 0 without a message.
#[derive(Debug, thiserror::Error)]
#[error("standard output was closed")]
pub struct Closed;

impl Out {
    /// Stdout; a closed pipe sets `cancel`.
    pub fn new(cancel: Arc<AtomicBool>) -> Out {
        Out { closed: false, cancel }
    }

    /// Write and flush; after a broken pipe, writes are dropped.
    pub fn write(&mut self, s: &str) {
        if self.closed || s.is_empty() {
            return;
        }
        let mut o = std::io::stdout().lock();
        if o.write_all(s.as_bytes()).and_then(|_| o.flush()).is_err() {
            // Any write error here is a reader that went away (EPIPE) or a full disk;
            // either way nothing more can be shown.
            self.closed = true;
            self.cancel.store(true, Ordering::Relaxed);
        }
    }

    /// A line.
    pub fn line(&mut self, s: &str) {
        self.write(s);
        self.write("\n");
    }

    /// `Err(Closed)` once the pipe closed (to end the command quietly).
    pub fn check(&self) -> Result<(), Closed> {
        if self.closed { Err(Closed) } else { Ok(()) }
    }
}
