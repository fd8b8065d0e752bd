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
    pub total: u64,
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
        total: busy + idle + iowait,
        cpus,
    })
}

/// One reading, at `at_ms` since the traffic started.
#[derive(Debug, Clone, Copy)]
pub struct CpuSample {
    pub at_ms: u32,
    pub times: CpuTimes,
}

/// The CPUs kept busy between the first and the last sample within `[start_ms, end_ms]`,
/// in cores (2.0: both of two CPUs all the time); `None` with fewer than two samples.
pub fn busy_cores(samples: &[CpuSample], start_ms: u32, end_ms: u32) -> Option<f64> {
    let mut within = samples
        .iter()
        .filter(|s| (start_ms..=end_ms).contains(&s.at_ms));
    let first = within.next()?;
    let last = within.next_back()?;
    let total = last.times.total.checked_sub(first.times.total)?;
    let busy = last.times.busy.checked_sub(first.times.busy)?;
    (total > 0).then(|| f64::from(last.times.cpus) * busy as f64 / total as f64)
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
                    std::thread::sleep(EVERY);
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
        self.thread
            .take()
            .and_then(|thread| thread.join().ok())
            .unwrap_or_default()
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
                total: 160 + 800 + 20,
                cpus: 2
            }
        );
        assert_eq!(parse_proc_stat("intr 1 2 3\n"), None);
        assert_eq!(parse_proc_stat("cpu  1 2 x 4 5 6 7 8\ncpu0 1\n"), None);
    }

    #[test]
    fn busy_cores_are_the_busy_share_of_the_window_times_the_cpus() {
        let at = |at_ms, busy, total| CpuSample {
            at_ms,
            times: CpuTimes {
                busy,
                total,
                cpus: 2,
            },
        };
        let samples = [
            at(0, 0, 0),
            at(1000, 50, 200),
            at(2000, 200, 400),
            at(3000, 210, 600),
        ];
        // 150 busy ticks of 200 on two CPUs between 1 s and 2 s.
        assert_eq!(busy_cores(&samples, 900, 2100), Some(1.5));
        assert_eq!(busy_cores(&samples, 1000, 3000), Some(2.0 * 160.0 / 400.0));
        assert_eq!(busy_cores(&samples, 1500, 2500), None, "one sample only");
    }
}
