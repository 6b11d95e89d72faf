//! The server's own resource use, from `/proc/<pid>`: so capacity is stated
//! per server CPU-second, not counting the bots' cost.

use std::time::Duration;

/// Kernel USER_HZ: `/proc` reports CPU times in these ticks (100 on Linux).
const TICKS_PER_SECOND: f64 = 100.0;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProcSample {
    /// User + system CPU time so far.
    pub cpu: Duration,
    pub rss_bytes: u64,
}

/// Reads `/proc/<pid>/stat` (utime, stime) and `/proc/<pid>/status` (VmRSS).
pub fn sample(pid: u32) -> std::io::Result<ProcSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    Ok(ProcSample {
        cpu: cpu_from_stat(&stat).unwrap_or_default(),
        rss_bytes: rss_from_status(&status).unwrap_or(0),
    })
}

/// Fields 14 and 15 (utime, stime), counted after the `(comm)` field,
/// which may itself contain spaces.
fn cpu_from_stat(stat: &str) -> Option<Duration> {
    let after_comm = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    // after_comm starts at field 3 (state): utime is field 14 -> index 11.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some(Duration::from_secs_f64((utime + stime) / TICKS_PER_SECOND))
}

fn rss_from_status(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_spaces_in_the_command_name() {
        let stat =
            "4242 (tokio rt) S 1 4242 4242 0 -1 4194560 500 0 0 0 250 75 0 0 20 0 9 0 100 1000 200";
        assert_eq!(cpu_from_stat(stat), Some(Duration::from_millis(3250)));
        let status = "Name:\tswitchboard\nVmRSS:\t   20480 kB\nThreads:\t9\n";
        assert_eq!(rss_from_status(status), Some(20480 * 1024));
    }

    #[test]
    fn reads_this_process() {
        let me = sample(std::process::id()).unwrap();
        assert!(me.rss_bytes > 0);
    }
}
