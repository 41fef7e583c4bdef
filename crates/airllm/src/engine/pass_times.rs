//! Host and device time of the passes that ran on the GPU, split so that the
//! host overhead per pass can be read apart from the time the device computes.
//!
//! The host side is what the engine's thread does itself: gathering
//! embeddings and writing the step inputs, recording kernels (pipelines, bind
//! groups, compute passes), finishing and submitting command buffers, and
//! copying the mapped logits out. `wait` is the time that thread spends
//! blocked until the device has finished the pass: device time, not host
//! work. `gpu` is the sum of the kernels' own timestamps (only with profiling
//! on). On a software driver (lavapipe) the "device" is CPU threads too; the
//! split is still clean because the timestamps around recording and
//! submitting are taken on the engine's thread, and the device's threads
//! only run between submit and the end of the wait.

use std::time::Duration;

/// Accumulated times of GPU passes (see the module docs).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct PassTimes {
    /// Passes counted.
    pub passes: u64,
    /// Wall time of those passes.
    pub wall: Duration,
    /// Gathering embeddings and writing the step inputs.
    pub inputs: Duration,
    /// Recording kernels and copies into command encoders.
    pub record: Duration,
    /// Finishing command buffers and `queue.submit` (uniform uploads included).
    pub submit: Duration,
    /// Blocked until the device finished (device time, not host work).
    pub wait: Duration,
    /// Copying the mapped logits out and unmapping.
    pub read: Duration,
    /// Sum of the kernels' GPU timestamps (profiling only; zero otherwise).
    pub gpu: Duration,
    /// Compiling pipelines on first use (left out of `record`: once per kernel variant).
    pub compile: Duration,
    /// CPU time the engine's thread used in the pass, compiling left out: host
    /// work without the time other processes held the cores (where the OS tells).
    pub host_cpu: Duration,
}

/// CPU time the calling thread has used (None where the OS does not tell).
pub fn thread_cpu_time() -> Option<Duration> {
    #[cfg(unix)]
    {
        let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: `ts` is a valid, writable timespec; clock_gettime only writes it.
        let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
        (rc == 0).then(|| Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32))
    }
    #[cfg(not(unix))]
    {
        None
    }
}

impl PassTimes {
    /// Host work: inputs + recording + submitting + reading the logits out.
    pub fn host(&self) -> Duration {
        self.inputs + self.record + self.submit + self.read
    }

    /// Adds one pass.
    pub fn add(&mut self, p: &PassTimes) {
        self.passes += p.passes;
        self.wall += p.wall;
        self.inputs += p.inputs;
        self.record += p.record;
        self.submit += p.submit;
        self.wait += p.wait;
        self.read += p.read;
        self.gpu += p.gpu;
        self.compile += p.compile;
        self.host_cpu += p.host_cpu;
    }

    /// The times accumulated between `self` (earlier) and `later`.
    pub fn since(&self, later: &PassTimes) -> PassTimes {
        PassTimes {
            passes: later.passes - self.passes,
            wall: later.wall.saturating_sub(self.wall),
            inputs: later.inputs.saturating_sub(self.inputs),
            record: later.record.saturating_sub(self.record),
            submit: later.submit.saturating_sub(self.submit),
            wait: later.wait.saturating_sub(self.wait),
            read: later.read.saturating_sub(self.read),
            gpu: later.gpu.saturating_sub(self.gpu),
            compile: later.compile.saturating_sub(self.compile),
            host_cpu: later.host_cpu.saturating_sub(self.host_cpu),
        }
    }

    /// Mean per pass, seconds, of `d`.
    pub fn per_pass(&self, d: Duration) -> f64 {
        if self.passes == 0 { 0.0 } else { d.as_secs_f64() / self.passes as f64 }
    }

    /// JSON for `bench --json`: per-pass means in seconds.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "passes": self.passes,
            "wall_s": self.per_pass(self.wall),
            "host_s": self.per_pass(self.host()),
            "inputs_s": self.per_pass(self.inputs),
            "record_s": self.per_pass(self.record),
            "submit_s": self.per_pass(self.submit),
            "wait_s": self.per_pass(self.wait),
            "read_s": self.per_pass(self.read),
            "gpu_s": self.per_pass(self.gpu),
            "compile_s": self.per_pass(self.compile),
            "host_cpu_s": self.per_pass(self.host_cpu),
            "host_share": if self.wall.is_zero() { 0.0 } else { self.host().as_secs_f64() / self.wall.as_secs_f64() },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_sums_host_parts_only() {
        let ms = Duration::from_millis;
        let p = PassTimes {
            passes: 2,
            wall: ms(100),
            inputs: ms(1),
            record: ms(2),
            submit: ms(3),
            wait: ms(90),
            read: ms(4),
            gpu: ms(80),
            compile: ms(0),
            host_cpu: ms(9),
        };
        assert_eq!(p.host(), ms(10));
        let mut q = PassTimes::default();
        q.add(&p);
        q.add(&p);
        assert_eq!(p.since(&q), p);
        assert!((q.per_pass(q.host()) - 0.005).abs() < 1e-9, "two passes of 10 ms host in all");
        let j = q.to_json();
        assert!((j["host_share"].as_f64().unwrap() - 0.1).abs() < 1e-9);
        assert!((j["host_cpu_s"].as_f64().unwrap() - 0.0045).abs() < 1e-9);
        assert!(thread_cpu_time().is_some() || cfg!(not(unix)));
    }
}
