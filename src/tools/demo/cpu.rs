//! How busy the machine's CPUs were in each segment of the run, read from Linux's
//! `/proc/stat` every `EVERY`. Beside the latency it tells whether requests got slower
//! because the machine ran out of cores (the demo's clients, its instances and PostgreSQL
//! share them) or because of something they wait for inside the database. Where there is no
//! `/proc/stat`, nothing is sampled and the report shows none.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const EVERY: Duration = Duration::from_millis(250);

/// The CPU time counters summed over all CPUs, in clock ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuTimes {
    /// Spent on anything but idling or waiting for I/O.
    pub busy: u64,
    /// Idle or waiting for I/O (the kernel's iowait can go down: see `busy_cores`).
    pub idle: u64,
    /// CPUs counted.
    pub cpus: u32,
}

/// Parses `/proc/stat`: the first line sums every CPU's time (user, nice, system, idle,
/// iowait, irq, softirq, steal; guest time is already inside user and nice), the `cpuN`
/// lines count the CPUs.
pub fn parse_proc_stat(text: &str) -> Option<CpuTimes> {
    let mut lines = text.lines();
    let fields: Vec<u64> = lines
        .next()?
        .strip_prefix("cpu ")?
        .split_whitespace()
        .take(8)
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    let [user, nice, system, idle, iowait, irq, softirq, steal] = fields[..] else {
        return None;
    };
    let cpus = lines
        .take_while(|l| l.starts_with("cpu"))
        .filter(|l| l[3..].starts_with(|c: char| c.is_ascii_digit()))
        .count() as u32;
    let busy = user + nice + system + irq + softirq + steal;
    (cpus > 0).then_some(CpuTimes {
        busy,
        idle: idle + iowait,
        cpus,
    })
}

/// One reading, at `at_ms` since the traffic started.
#[derive(Debug, Clone, Copy)]
pub struct CpuSample {
    pub at_ms: u32,
    pub times: CpuTimes,
}

/// The CPUs kept busy during `[start_ms, end_ms]`, in cores (2.0: both of two CPUs all the
/// time): from the sample at or just before the start to the one at or just after the end
/// (one `EVERY` more on either side at most); `None` without two such samples. Each counter's
/// change is floored at zero (the kernel's iowait can go down) and the result kept within
/// the CPUs.
pub fn busy_cores(samples: &[CpuSample], start_ms: u32, end_ms: u32) -> Option<f64> {
    let first = samples
        .iter()
        .rev()
        .find(|s| s.at_ms <= start_ms)
        .or_else(|| samples.iter().find(|s| s.at_ms >= start_ms))?;
    let last = samples
        .iter()
        .find(|s| s.at_ms >= end_ms)
        .or_else(|| samples.iter().rev().find(|s| s.at_ms <= end_ms))?;
    if last.at_ms <= first.at_ms {
        return None;
    }
    let busy = last.times.busy.saturating_sub(first.times.busy);
    let idle = last.times.idle.saturating_sub(first.times.idle);
    let cpus = f64::from(last.times.cpus);
    (busy + idle > 0).then(|| (cpus * busy as f64 / (busy + idle) as f64).clamp(0.0, cpus))
}

/// Reads `/proc/stat` on a thread of its own until finished or dropped.
pub struct CpuSampler {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Vec<CpuSample>>>,
}

impl CpuSampler {
    /// Starts sampling; times count from `started` (the traffic's start).
    pub fn start(started: Instant) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::Builder::new()
            .name("zdm-demo-cpu".to_owned())
            .spawn(move || {
                let mut samples = Vec::new();
                while !stopped.load(Ordering::Acquire) {
                    let Some(times) = std::fs::read_to_string("/proc/stat")
                        .ok()
                        .and_then(|text| parse_proc_stat(&text))
                    else {
                        break;
                    };
                    let at_ms = started.elapsed().as_millis().min(u128::from(u32::MAX)) as u32;
                    samples.push(CpuSample { at_ms, times });
                    // `finish` unparks it, so the run does not wait out the pause.
                    std::thread::park_timeout(EVERY);
                }
                samples
            })?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops sampling and returns what was read.
    pub fn finish(mut self) -> Vec<CpuSample> {
        self.stop.store(true, Ordering::Release);
        let Some(thread) = self.thread.take() else {
            return Vec::new();
        };
        thread.thread().unpark();
        thread.join().unwrap_or_default()
    }
}

impl Drop for CpuSampler {
    /// A run that ends early (an error before `finish`) does not leave the thread sampling.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &str = "cpu  100 5 50 800 20 3 2 0 7 0\n\
                        cpu0 50 2 25 400 10 2 1 0 7 0\n\
                        cpu1 50 3 25 400 10 1 1 0 0 0\n\
                        intr 12345 0\nctxt 999\n";

    #[test]
    fn proc_stat_sums_busy_and_idle_time_and_counts_the_cpus() {
        let times = parse_proc_stat(STAT).unwrap();
        assert_eq!(
            times,
            CpuTimes {
                busy: 100 + 5 + 50 + 3 + 2,
                idle: 800 + 20,
                cpus: 2
            }
        );
        assert_eq!(parse_proc_stat("intr 1 2 3\n"), None);
        assert_eq!(parse_proc_stat("cpu  1 2 x 4 5 6 7 8\ncpu0 1\n"), None);
    }

    #[test]
    fn busy_cores_are_the_busy_share_of_the_window_times_the_cpus() {
        let at = |at_ms, busy, idle| CpuSample {
            at_ms,
            times: CpuTimes {
                busy,
                idle,
                cpus: 2,
            },
        };
        let samples = [
            at(0, 0, 0),
            at(1000, 50, 150),
            at(2000, 200, 200),
            at(3000, 210, 390),
        ];
        // From the sample at the start to the one at the end: 150 busy ticks of 200.
        assert_eq!(busy_cores(&samples, 1000, 2000), Some(1.5));
        // A window between samples reaches out to the ones around it.
        assert_eq!(busy_cores(&samples, 1500, 2500), Some(2.0 * 160.0 / 400.0));
        assert_eq!(busy_cores(&samples, 1200, 1800), Some(1.5));
        // Past the last sample: only one sample to go by.
        assert_eq!(busy_cores(&samples, 3500, 4000), None);
        // Idle time that went down counts as none, and the result stays within the CPUs.
        let shrinking = [at(0, 0, 100), at(1000, 100, 40)];
        assert_eq!(busy_cores(&shrinking, 0, 1000), Some(2.0));
    }
}
