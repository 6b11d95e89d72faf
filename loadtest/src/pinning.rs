//! CPU affinity, so the bots and the server do not compete for one core
//! and the server's CPU time is its own (the bench pins the server to one
//! CPU and the tool to another).

use nix::sched::{CpuSet, sched_setaffinity};
use nix::unistd::Pid;

/// Pins every thread of process `pid` (0: this process) to `cpu`; threads
/// started later inherit it. Returns how many threads were pinned.
pub fn pin_process(pid: u32, cpu: usize) -> Result<usize, String> {
    let mut set = CpuSet::new();
    set.set(cpu).map_err(|e| format!("cpu {cpu}: {e}"))?;
    let proc_dir = if pid == 0 {
        "/proc/self/task".to_string()
    } else {
        format!("/proc/{pid}/task")
    };
    let tasks = std::fs::read_dir(&proc_dir).map_err(|e| format!("{proc_dir}: {e}"))?;
    let mut pinned = 0;
    for task in tasks {
        let tid: i32 = task
            .map_err(|e| e.to_string())?
            .file_name()
            .to_string_lossy()
            .parse()
            .map_err(|_| format!("{proc_dir}: not a thread id"))?;
        match sched_setaffinity(Pid::from_raw(tid), &set) {
            Ok(()) => pinned += 1,
            // The thread ended between the listing and now.
            Err(nix::errno::Errno::ESRCH) => {}
            Err(e) => return Err(format!("thread {tid}: {e}")),
        }
    }
    Ok(pinned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_this_process_to_the_cpu_it_runs_on() {
        let cpu = nix::sched::sched_getaffinity(Pid::from_raw(0))
            .ok()
            .and_then(|set| (0..CpuSet::count()).find(|c| set.is_set(*c).unwrap_or(false)))
            .expect("some CPU is allowed");
        assert!(pin_process(0, cpu).unwrap() >= 1);
        let now = nix::sched::sched_getaffinity(Pid::from_raw(0)).unwrap();
        assert!(now.is_set(cpu).unwrap());
        assert!(pin_process(0, CpuSet::count() + 1).is_err());
    }
}
