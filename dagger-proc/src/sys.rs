//! Small wrappers over the operating system: host name, CPU affinity, and the environment
//! variables that tune processors.

use crate::error::{AffinityError, EnvVarError};
use std::sync::OnceLock;
use std::time::Duration;

/// The environment variable capping how many thread processors a process detects.
pub const THREADS_VAR: &str = "DAGGER_THREADS";
/// The environment variable setting how long an idle thread processor spins (µs).
pub const SPIN_VAR: &str = "DAGGER_SPIN_US";
/// The environment variable that, set to `0`, stops thread processors from pinning.
pub const PIN_VAR: &str = "DAGGER_PIN";
/// How long an idle thread processor spins before it parks, when [`SPIN_VAR`] is not set.
pub const DEFAULT_SPIN: Duration = Duration::from_micros(20);

/// The machine's host name (the `gethostname` crate), or `"localhost"` if it is empty.
/// Costs one system call.
pub fn hostname() -> String {
    let name = gethostname::gethostname().to_string_lossy().into_owned();
    if name.is_empty() {
        "localhost".to_string()
    } else {
        name
    }
}

/// Parses a whole, non-negative number as found in an environment variable (surrounding
/// white space allowed). `var` names the variable in the error.
pub fn parse_count(var: &'static str, value: &str) -> Result<u64, EnvVarError> {
    value.trim().parse::<u64>().map_err(|_| EnvVarError {
        var,
        value: value.to_string(),
    })
}

/// Parses a value of [`THREADS_VAR`]: the largest number of thread processors to detect.
/// `0` is allowed (a process that runs no tasks on its CPUs).
pub fn parse_threads_cap(value: &str) -> Result<usize, EnvVarError> {
    parse_count(THREADS_VAR, value).map(|n| usize::try_from(n).unwrap_or(usize::MAX))
}

/// Parses a value of [`SPIN_VAR`]: microseconds an idle thread spins before parking.
pub fn parse_spin(value: &str) -> Result<Duration, EnvVarError> {
    parse_count(SPIN_VAR, value).map(Duration::from_micros)
}

/// Parses a value of [`PIN_VAR`]: `0`, `false`, `no` or `off` disable pinning; anything
/// else (including unset) leaves it on.
pub fn parse_pin(value: &str) -> bool {
    !matches!(
        value.trim().to_ascii_lowercase().as_str(),
        "0" | "false" | "no" | "off"
    )
}

/// The cap from [`THREADS_VAR`], read at each call: `Ok(None)` when unset, an error when it
/// is set to something that is not a number.
pub fn threads_cap_from_env() -> Result<Option<usize>, EnvVarError> {
    match std::env::var(THREADS_VAR) {
        Ok(v) => parse_threads_cap(&v).map(Some),
        Err(_) => Ok(None),
    }
}

/// Environment variable: this process's number among the worker processes a launcher
/// started on this host (`0`, `1`, ...). Capped worker processes rotate the CPUs they pin
/// by it, so that several on one host spread over the CPUs instead of all taking the first
/// ones (a worker detects its processors before it joins, so its worker id cannot serve).
pub const SLOT_VAR: &str = "DAGGER_CPU_SLOT";

/// The number CPU spreading rotates by: [`SLOT_VAR`] when it is set to a number, else
/// `fallback` (the worker id the detection context names). Read at each call.
pub fn process_slot(fallback: u32) -> u32 {
    std::env::var(SLOT_VAR)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(fallback)
}

/// True unless [`PIN_VAR`] disables pinning. Read at each call.
pub fn pin_from_env() -> bool {
    std::env::var(PIN_VAR)
        .map(|v| parse_pin(&v))
        .unwrap_or(true)
}

/// The spin time from [`SPIN_VAR`], read once per process and then cached; an unset or
/// malformed value gives [`DEFAULT_SPIN`] (a malformed one with a warning on stderr).
pub fn spin_from_env() -> Duration {
    static SPIN: OnceLock<Duration> = OnceLock::new();
    *SPIN.get_or_init(|| match std::env::var(SPIN_VAR) {
        Ok(v) => parse_spin(&v).unwrap_or_else(|e| {
            eprintln!("dagger: {e}; spinning for the default {DEFAULT_SPIN:?}");
            DEFAULT_SPIN
        }),
        Err(_) => DEFAULT_SPIN,
    })
}

/// Chooses which `take` of `available` items a process uses, rotating the start by the
/// process's number so that several capped processes on one machine spread over the CPUs
/// instead of all taking the first ones. Returns positions into the available list, in
/// increasing order of rotation.
///
/// A process that takes them all gets them all, in an order rotated by its number too:
/// its first thread processor (the one work goes to first when all are idle) is then on
/// another CPU than the other processes' first ones.
pub fn spread(available: usize, take: usize, process: u32) -> Vec<usize> {
    if available == 0 {
        return Vec::new();
    }
    let take = take.min(available);
    let start = if take == available {
        process as usize % available
    } else {
        (process as usize).wrapping_mul(take) % available
    };
    (0..take).map(|i| (start + i) % available).collect()
}

/// The number of CPUs the affinity calls can name: CPUs `0..MAX_AFFINITY_CPUS` (the
/// kernel's fixed `cpu_set_t` of 1024 bits). On a machine with more possible CPUs reading the
/// mask fails with [`AffinityError::Get`], and the `cpu` detector falls back to unpinned
/// threads.
#[cfg(target_os = "linux")]
pub const MAX_AFFINITY_CPUS: usize = rustix::thread::CpuSet::MAX_CPU;

/// The CPUs the calling thread may run on (`sched_getaffinity`), in increasing order.
/// Costs one system call.
#[cfg(target_os = "linux")]
pub fn affinity() -> Result<Vec<usize>, AffinityError> {
    let set = rustix::thread::sched_getaffinity(None)
        .map_err(|e| AffinityError::Get { source: e.into() })?;
    Ok((0..MAX_AFFINITY_CPUS).filter(|&c| set.is_set(c)).collect())
}

/// The CPUs the calling thread may run on; unsupported on this platform.
#[cfg(not(target_os = "linux"))]
pub fn affinity() -> Result<Vec<usize>, AffinityError> {
    Err(AffinityError::Unsupported)
}

/// Pins the calling thread to `cpus` (`sched_setaffinity`). Costs one system call.
/// A CPU number of [`MAX_AFFINITY_CPUS`] or more is refused with
/// [`AffinityError::CpuOutOfRange`] before any call is made.
#[cfg(target_os = "linux")]
pub fn pin_current_thread(cpus: &[usize]) -> Result<(), AffinityError> {
    let mut set = rustix::thread::CpuSet::new();
    for &cpu in cpus {
        if cpu >= MAX_AFFINITY_CPUS {
            return Err(AffinityError::CpuOutOfRange {
                cpu,
                max: MAX_AFFINITY_CPUS,
            });
        }
        set.set(cpu);
    }
    rustix::thread::sched_setaffinity(None, &set).map_err(|e| AffinityError::Set {
        cpus: cpus.to_vec(),
        source: e.into(),
    })
}

/// Pins the calling thread to `cpus`; unsupported on this platform.
#[cfg(not(target_os = "linux"))]
pub fn pin_current_thread(cpus: &[usize]) -> Result<(), AffinityError> {
    let _ = cpus;
    Err(AffinityError::Unsupported)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threads_cap_parses_numbers_and_rejects_garbage() {
        assert_eq!(parse_threads_cap("4"), Ok(4));
        assert_eq!(parse_threads_cap(" 1 \n"), Ok(1));
        assert_eq!(parse_threads_cap("0"), Ok(0));
        let err = parse_threads_cap("two").unwrap_err();
        assert_eq!(
            err,
            EnvVarError {
                var: THREADS_VAR,
                value: "two".into()
            }
        );
        assert!(parse_threads_cap("-1").is_err());
        assert!(parse_threads_cap("").is_err());
    }

    #[test]
    fn spin_and_pin_parse() {
        assert_eq!(parse_spin("0"), Ok(Duration::ZERO));
        assert_eq!(parse_spin("150"), Ok(Duration::from_micros(150)));
        assert!(parse_spin("1.5").is_err());
        assert!(!parse_pin("0"));
        assert!(!parse_pin("Off"));
        assert!(parse_pin("1"));
        assert!(parse_pin("yes"));
    }

    #[test]
    fn spread_caps_and_rotates_by_process() {
        assert_eq!(spread(4, 10, 0), vec![0, 1, 2, 3]);
        assert_eq!(spread(4, 4, 3), vec![3, 0, 1, 2]);
        assert_eq!(spread(2, 2, 1), vec![1, 0]);
        assert_eq!(spread(2, 1, 0), vec![0]);
        assert_eq!(spread(2, 1, 1), vec![1]);
        assert_eq!(spread(2, 1, 2), vec![0]);
        assert_eq!(spread(4, 2, 1), vec![2, 3]);
        assert_eq!(spread(3, 2, 1), vec![2, 0]);
        assert_eq!(spread(0, 3, 1), Vec::<usize>::new());
        assert_eq!(spread(5, 0, 1), Vec::<usize>::new());
    }

    #[test]
    fn affinity_lists_at_least_one_cpu_and_hostname_is_set() {
        #[cfg(target_os = "linux")]
        assert!(!affinity().expect("sched_getaffinity").is_empty());
        assert!(!hostname().is_empty());
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn pinning_to_a_cpu_past_the_mask_is_a_typed_error() {
        let err = pin_current_thread(&[0, MAX_AFFINITY_CPUS]).unwrap_err();
        assert!(matches!(
            err,
            AffinityError::CpuOutOfRange { cpu, max } if cpu == MAX_AFFINITY_CPUS && max == MAX_AFFINITY_CPUS
        ));
    }
}
