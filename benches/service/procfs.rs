//! Readings of a process from `/proc/<pid>/`: CPU time and resident memory (now and peak).
//!
//! Reading `/proc` instead of instrumenting the service keeps the service untouched and measures
//! the bare tonic server in exactly the same way.

use std::time::Duration;

/// Clock ticks per second of `utime`/`stime` in `/proc/<pid>/stat`. Linux fixes USER_HZ at 100
/// in its user-space ABI on every architecture it supports, so no `sysconf` call is needed.
const TICKS_PER_SECOND: u64 = 100;

/// The CPU time (user plus system, all threads, living and exited) the process has used.
pub fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc/<pid>/stat");
    // The command name (field 2) may hold spaces and parentheses: count fields after the last ')'.
    let after_name = &stat[stat.rfind(')').expect("a command name in /proc/<pid>/stat") + 1..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // After the name: state is field 3, so utime (field 14) and stime (field 15) are at 11 and 12.
    let ticks: u64 = fields[11..=12].iter().map(|f| f.parse::<u64>().expect("numeric utime/stime")).sum();
    Duration::from_millis(ticks * 1000 / TICKS_PER_SECOND)
}

/// The resident set size in bytes (`VmRSS`).
pub fn rss_bytes(pid: u32) -> u64 {
    status_kib(pid, "VmRSS:") * 1024
}

/// The peak resident set size in bytes (`VmHWM`) since the start or the last [`reset_peak_rss`].
pub fn peak_rss_bytes(pid: u32) -> u64 {
    status_kib(pid, "VmHWM:") * 1024
}

/// Resets the peak (`VmHWM`) to the present RSS: `5` written to `/proc/<pid>/clear_refs`
/// (Linux 4.0 and later; this process or a child of the same user). Whether it could.
pub fn reset_peak_rss(pid: u32) -> bool {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok()
}

/// A `kB` field of `/proc/<pid>/status`, in KiB.
fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc/<pid>/status");
    let line = status.lines().find(|l| l.starts_with(field)).unwrap_or_else(|| panic!("{field} in /proc/<pid>/status"));
    line.split_whitespace().nth(1).and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("{field} in kB"))
}

/// The machine, for the report: CPU model, core count, memory.
pub fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("unknown CPU", |(_, v)| v.trim())
        .to_owned();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kib: u64 = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    format!("{cores} cores, {model}, {:.1} GiB", mem_kib as f64 / (1024.0 * 1024.0))
}
