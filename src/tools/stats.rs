//! The figures the tools share: nearest-rank quantiles of sorted samples, milliseconds,
//! MiB, and a process's peak memory.

use std::time::Duration;

/// The value at quantile `q` (0..=1) of `sorted` by nearest rank (`T::default()` when
/// there is none): 0.5 is the median, 1.0 the largest.
pub fn nearest_rank<T: Copy + Default>(sorted: &[T], q: f64) -> T {
    if sorted.is_empty() {
        return T::default();
    }
    let rank = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// Peak resident memory (VmHWM) of a process, this one by default, in MiB.
pub fn peak_rss_mib(pid: Option<u32>) -> Option<f64> {
    let process = pid.map_or("self".to_owned(), |pid| pid.to_string());
    let status = std::fs::read_to_string(format!("/proc/{process}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// Bytes in a MiB.
pub const MIB: f64 = 1024.0 * 1024.0;

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_pick_by_rank() {
        let d: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(nearest_rank(&d, 0.5), Duration::from_millis(51));
        assert_eq!(nearest_rank(&d, 0.99), Duration::from_millis(99));
        assert_eq!(nearest_rank::<Duration>(&[], 0.5), Duration::ZERO);
        assert_eq!(nearest_rank(&[3_u32, 7], 1.0), 7);
    }
}
