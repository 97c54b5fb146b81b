//! glibc malloc tuning for a process that serves invocations back to back.
//!
//! glibc gives freed memory at the top of a heap back to the kernel as soon as more than
//! 128 KiB is free there (`M_TRIM_THRESHOLD`), and serves allocations of 128 KiB or more
//! with a fresh `mmap` each (`M_MMAP_THRESHOLD`). Both thresholds move up on their own
//! only after a large block was freed, and reset to these defaults as soon as either is
//! set. For a runtime that allocates and frees an event's worth of memory every
//! invocation, that means the kernel zeroes and faults the same pages in again each time.
//! Measured on the percore bench (64 KiB echo at concurrency 64, worker-per-slot): 6.4
//! page faults per invocation and 116 µs of CPU, against 0.1 faults and 96 µs with the
//! thresholds below; with 1 MiB events, 60 faults and 1.9 ms against 6 and 1.7 ms.
//!
//! [`tune`] pins both thresholds where glibc's own dynamic policy would end up after a
//! large free (mmap at 32 MiB, its maximum on 64-bit; trim at twice that), before the
//! cores start. It leaves them alone when the user chose (`GLIBC_TUNABLES` with a malloc
//! setting, `MALLOC_TRIM_THRESHOLD_`, `MALLOC_MMAP_THRESHOLD_`), when the configuration
//! turns it off ([`ConfigBuilder::tune_malloc`](crate::config::ConfigBuilder::tune_malloc)),
//! and on other C libraries. The cost: up to 64 MiB freed at the top of each heap stays
//! with the process instead of going back to the kernel.

/// Allocations at least this large get their own `mmap`.
pub(crate) const MMAP_THRESHOLD: usize = 32 * 1024 * 1024;

/// Free memory at the top of a heap beyond this is returned to the kernel.
pub(crate) const TRIM_THRESHOLD: usize = 2 * MMAP_THRESHOLD;

/// What [`tune`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tuned {
    /// Both thresholds set.
    Set,
    /// Left alone: the user set malloc tunables in the environment.
    UserChose,
    /// Left alone: not glibc, or `mallopt` refused.
    Unavailable,
}

/// Whether the environment already says how glibc malloc should behave.
pub(crate) fn user_chose(env: impl Fn(&str) -> Option<String>) -> bool {
    env("GLIBC_TUNABLES").is_some_and(|t| t.contains("glibc.malloc."))
        || env("MALLOC_TRIM_THRESHOLD_").is_some()
        || env("MALLOC_MMAP_THRESHOLD_").is_some()
}

/// Sets the thresholds (see the module docs), unless the user chose.
pub(crate) fn tune() -> Tuned {
    // Lossy: a value that is not UTF-8 is still the user's choice.
    if user_chose(|k| std::env::var_os(k).map(|v| v.to_string_lossy().into_owned())) {
        return Tuned::UserChose;
    }
    set()
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn set() -> Tuned {
    let (Ok(mmap), Ok(trim)) = (
        libc::c_int::try_from(MMAP_THRESHOLD),
        libc::c_int::try_from(TRIM_THRESHOLD),
    ) else {
        return Tuned::Unavailable;
    };
    // SAFETY: mallopt only adjusts allocator parameters; glibc serialises it against
    // concurrent allocations, and both values are within the ranges it accepts.
    let ok = unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, mmap) == 1
            && libc::mallopt(libc::M_TRIM_THRESHOLD, trim) == 1
    };
    if ok { Tuned::Set } else { Tuned::Unavailable }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn set() -> Tuned {
    Tuned::Unavailable
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_users_choice_is_respected() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                vars.iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| (*v).to_owned())
            }
        };
        assert!(!user_chose(env(&[])));
        assert!(!user_chose(env(&[(
            "GLIBC_TUNABLES",
            "glibc.pthread.rseq=0"
        )])));
        assert!(user_chose(env(&[(
            "GLIBC_TUNABLES",
            "glibc.malloc.trim_threshold=1000000"
        )])));
        assert!(user_chose(env(&[("MALLOC_TRIM_THRESHOLD_", "0")])));
        assert!(user_chose(env(&[("MALLOC_MMAP_THRESHOLD_", "65536")])));
    }

    #[test]
    fn glibc_accepts_the_thresholds() {
        // mmap threshold at glibc's 64-bit maximum; larger would be refused.
        assert!(MMAP_THRESHOLD <= 4 * 1024 * 1024 * std::mem::size_of::<libc::c_long>());
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        assert_eq!(set(), Tuned::Set);
    }
}
