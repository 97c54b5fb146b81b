//! Runtime configuration: a builder with typed values, merged with the environment.
//!
//! Precedence, highest first: builder methods, then environment variables, then
//! defaults. A variable that is set but invalid is an error naming the variable; it is
//! never silently replaced by a default.
//!
//! | variable | meaning | default |
//! |---|---|---|
//! | `AWS_LAMBDA_RUNTIME_API` | `host:port` (or `http://host:port/prefix`) of the Runtime API | required |
//! | `AWS_LAMBDA_MAX_CONCURRENCY` | invocations the environment may run at once | `1` when unset (classic Lambda) |
//! | `LAMBDA_TPC_CORES` | cores to run on, CPU-list syntax: `0-3,6`, or `all` | all cores in the affinity mask |
//! | `LAMBDA_TPC_STRATEGY` | `worker-per-slot`, `unbounded`, or `semaphore:N` | `worker-per-slot` |
//! | `LAMBDA_TPC_POLLERS_PER_CORE` | `/next` polls kept parked per core | per-core share of max concurrency |
//! | `LAMBDA_TPC_DRIVER` | `auto`, `io_uring` or `epoll` | `auto` (io_uring, epoll if refused) |
//! | `LAMBDA_TPC_PIPELINING` | `1`/`0`: send the result post and the next `/next` in one write | `0` |
//! | `LAMBDA_TPC_URING_FLAGS` | `default` or `all` (all four), `none` or empty, or a comma list of `coop_taskrun`, `taskrun_flag`, `single_issuer`, `defer_taskrun` (`defer_taskrun` needs `single_issuer`) | `default` (all four) |
//! | `LAMBDA_TPC_DEFERRED_REPLIES` | `1`/`0`: worker-per-slot posts on a second connection and reads the reply when the next invocation comes | `1` |
//! | `LAMBDA_TPC_ENFORCE_DEADLINE` | `1`/`0`: cancel a handler still running at its invocation's deadline | `1` |
//! | `LAMBDA_TPC_STALL_MS` | milliseconds a handler may hold its core's thread before it is logged and counted; `0` turns detection off | `100` |
//! | `LAMBDA_TPC_TUNE_MALLOC` | `1`/`0`: raise glibc malloc's trim and mmap thresholds at start, so that memory freed after an invocation is reused rather than returned to the kernel and faulted in again (left alone if `GLIBC_TUNABLES` sets a malloc tunable or `MALLOC_TRIM_THRESHOLD_`/`MALLOC_MMAP_THRESHOLD_` is set) | `1` |
//! | `LAMBDA_TPC_UNREACHABLE_MS` | milliseconds `/next` may keep failing (unreachable API, malformed replies, statuses other than 200/403/500) before the run gives up with an error; also the bound on a post's resends, its reply, and a large post's progress (see [`ConfigBuilder::unreachable_timeout`]); `0`: retry and wait forever | `10000` |
//!
//! Booleans accept `1`/`0`, `true`/`false`, `on`/`off` and `yes`/`no`. Some settings have
//! no variable and are set with the builder only: [`ConfigBuilder::max_event_bytes`],
//! [`ConfigBuilder::max_response_bytes`], [`ConfigBuilder::shutdown_grace`],
//! [`ConfigBuilder::control`], [`ConfigBuilder::handle_signals`] and
//! [`ConfigBuilder::on_shutdown`].
//!
//! ```
//! use lambda_tpc::Config;
//! use lambda_tpc::config::{ENV_RUNTIME_API, ENV_STRATEGY};
//!
//! // What Lambda would set, plus an invalid strategy.
//! let env = |name: &str| match name {
//!     ENV_RUNTIME_API => Some("127.0.0.1:9001".to_owned()),
//!     ENV_STRATEGY => Some("fastest".to_owned()),
//!     _ => None,
//! };
//! let err = Config::builder().build_with(env).unwrap_err();
//! assert_eq!(err.config_var(), Some(ENV_STRATEGY)); // refused, not defaulted
//!
//! // A builder value wins over the variable, so the bad one is never read.
//! let config = Config::builder().strategy(lambda_tpc::Strategy::Unbounded).build_with(env)?;
//! assert_eq!(config.max_concurrency().get(), 1); // AWS_LAMBDA_MAX_CONCURRENCY unset
//! # Ok::<(), lambda_tpc::Error>(())
//! ```

use std::num::NonZeroUsize;
use std::str::FromStr;
use std::time::Duration;

use crate::api::{MAX_RESPONSE_BYTES, RuntimeApi};
use crate::control::Control;
use crate::error::Error;
use crate::http::DEFAULT_MAX_BODY_BYTES;

/// `AWS_LAMBDA_RUNTIME_API`
pub const ENV_RUNTIME_API: &str = "AWS_LAMBDA_RUNTIME_API";
/// `AWS_LAMBDA_MAX_CONCURRENCY`
pub const ENV_MAX_CONCURRENCY: &str = "AWS_LAMBDA_MAX_CONCURRENCY";
/// `LAMBDA_TPC_CORES`
pub const ENV_CORES: &str = "LAMBDA_TPC_CORES";
/// `LAMBDA_TPC_STRATEGY`
pub const ENV_STRATEGY: &str = "LAMBDA_TPC_STRATEGY";
/// `LAMBDA_TPC_POLLERS_PER_CORE`
pub const ENV_POLLERS_PER_CORE: &str = "LAMBDA_TPC_POLLERS_PER_CORE";
/// `LAMBDA_TPC_DRIVER`
pub const ENV_DRIVER: &str = "LAMBDA_TPC_DRIVER";
/// `LAMBDA_TPC_PIPELINING`
pub const ENV_PIPELINING: &str = "LAMBDA_TPC_PIPELINING";
/// `LAMBDA_TPC_URING_FLAGS`
pub const ENV_URING_FLAGS: &str = "LAMBDA_TPC_URING_FLAGS";
/// `LAMBDA_TPC_ENFORCE_DEADLINE`
pub const ENV_ENFORCE_DEADLINE: &str = "LAMBDA_TPC_ENFORCE_DEADLINE";
/// `LAMBDA_TPC_DEFERRED_REPLIES`
pub const ENV_DEFERRED_REPLIES: &str = "LAMBDA_TPC_DEFERRED_REPLIES";
/// `LAMBDA_TPC_STALL_MS`
pub const ENV_STALL_MS: &str = "LAMBDA_TPC_STALL_MS";

/// `LAMBDA_TPC_TUNE_MALLOC`
pub const ENV_TUNE_MALLOC: &str = "LAMBDA_TPC_TUNE_MALLOC";
/// `LAMBDA_TPC_UNREACHABLE_MS`
pub const ENV_UNREACHABLE_MS: &str = "LAMBDA_TPC_UNREACHABLE_MS";

/// Longest duration any setting takes: longer ones (up to `Duration::MAX`) mean "as long as
/// the process lives" and are clamped to this, so that adding one to the clock cannot
/// overflow. A hundred years.
pub const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// Default for [`ConfigBuilder::unreachable_timeout`]: long enough to ride out a restart
/// of a local Runtime API, short enough that an environment whose Runtime API is gone
/// exits (and is replaced) instead of retrying forever.
pub const DEFAULT_UNREACHABLE_TIMEOUT: Duration = Duration::from_secs(10);

/// Default stall threshold: a poll that holds a core's thread longer than this delays
/// every other invocation on the core by as much, which is worth a log line.
pub const DEFAULT_STALL_THRESHOLD: Duration = Duration::from_millis(100);

/// A function run once when the runtime shuts down, after in-flight invocations finished
/// (or the grace period ran out). Set with [`ConfigBuilder::on_shutdown`].
pub type ShutdownHook = std::sync::Arc<dyn Fn() + Send + Sync>;

/// How a core turns `/next` polls into running handlers.
///
/// `WorkerPerSlot` and `Unbounded` keep, per core, the core's share of
/// `AWS_LAMBDA_MAX_CONCURRENCY` as `/next` polls parked on the Runtime API (unless
/// `pollers_per_core` says otherwise); `Semaphore` parks at most its permits, since a
/// poller takes a permit before it polls. The data plane only routes an invocation to a
/// parked poll, and on Managed Instances an invocation that finds none is rejected, so
/// how fast a slot re-polls is capacity.
///
/// Parsed from `LAMBDA_TPC_STRATEGY` (case-insensitive); `Display` writes the same
/// syntax back.
///
/// ```
/// use std::num::NonZeroUsize;
/// use lambda_tpc::Strategy;
///
/// assert_eq!("worker-per-slot".parse(), Ok(Strategy::WorkerPerSlot));
/// let s: Strategy = "semaphore:16".parse()?;
/// assert_eq!(s, Strategy::Semaphore { permits: NonZeroUsize::new(16).unwrap() });
/// assert_eq!(s.to_string(), "semaphore:16");
/// assert!("semaphore:0".parse::<Strategy>().is_err());
/// # Ok::<(), String>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Strategy {
    /// Each slot is a loop on its own connection: `/next`, run the handler, post the
    /// result, repeat. At most one invocation per slot. The official runtime's
    /// conservative model, and the default here: it was the cheapest per invocation in
    /// our measurements (no task spawn; by default the post goes on a second connection
    /// of the slot and its reply is read when the next invocation comes, so the
    /// slot re-polls at once; with pipelining the post and the next poll share one
    /// write).
    #[default]
    WorkerPerSlot,
    /// Pollers receive an invocation, spawn the handler as a task on their core and poll
    /// again at once. The data plane is the only bound on in-flight handlers.
    Unbounded,
    /// As [`Strategy::Unbounded`], but a poller takes a permit before polling and the
    /// handler holds it until its result is posted, so at most `permits` handlers run at
    /// once in the process. The permits are split across the cores like the maximum
    /// concurrency, with at least one per core: with fewer permits than cores in use,
    /// each core still gets one (see [`Config::plan`]).
    Semaphore {
        /// Handlers allowed in flight, process-wide.
        permits: NonZeroUsize,
    },
}

impl FromStr for Strategy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let lower = s.trim().to_ascii_lowercase();
        match lower.as_str() {
            "worker-per-slot" | "worker_per_slot" | "workerperslot" => Ok(Strategy::WorkerPerSlot),
            "unbounded" => Ok(Strategy::Unbounded),
            other => {
                let permits = other
                    .strip_prefix("semaphore:")
                    .or_else(|| other.strip_prefix("semaphore="))
                    .ok_or_else(|| {
                        format!("expected worker-per-slot, unbounded or semaphore:N, got {s:?}")
                    })?;
                let permits = permits.trim().parse::<NonZeroUsize>().map_err(|_| {
                    format!("semaphore permits must be a positive integer, got {s:?}")
                })?;
                Ok(Strategy::Semaphore { permits })
            }
        }
    }
}

impl std::fmt::Display for Strategy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Strategy::WorkerPerSlot => f.write_str("worker-per-slot"),
            Strategy::Unbounded => f.write_str("unbounded"),
            Strategy::Semaphore { permits } => write!(f, "semaphore:{permits}"),
        }
    }
}

/// Which cores to run on. Parsed from `LAMBDA_TPC_CORES` with [`Cores::parse`]; a
/// [`Cores::Count`] is only available through [`ConfigBuilder::cores`].
///
/// Cores whose share of the maximum concurrency would be zero are not used (see
/// [`Config::plan`]).
///
/// ```
/// use std::num::NonZeroUsize;
/// use lambda_tpc::{Config, Cores};
///
/// let config = Config::builder()
///     .runtime_api("127.0.0.1:9001")
///     .cores(Cores::Count(NonZeroUsize::MIN)) // the first CPU of the affinity mask
///     .build_with(|_| None)?;
/// assert_eq!(config.cpus().len(), 1);
/// # Ok::<(), lambda_tpc::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Cores {
    /// Every core in the process's CPU affinity mask, but no more than the process's CPU
    /// quota allows (a cgroup `cpu.max` or CFS quota, as
    /// [`std::thread::available_parallelism`] reads it, rounded down, at least 1): a
    /// container limited to 2 CPUs' time on a 32-CPU host runs 2 cores, the first two of
    /// the mask, not 32 threads throttled in turn.
    #[default]
    All,
    /// The first `n` cores of the affinity mask (more than the mask holds is a
    /// configuration error).
    Count(NonZeroUsize),
    /// Exactly these CPU ids (each must be in the affinity mask).
    List(Vec<usize>),
}

impl Cores {
    /// Parses CPU-list syntax (`0-3,6`, sorted and deduplicated) or `all`.
    ///
    /// # Errors
    ///
    /// A message naming the input, for anything else (including an empty list, a
    /// descending range, and CPU ids of 4096 and above).
    ///
    /// ```
    /// use lambda_tpc::Cores;
    ///
    /// assert_eq!(Cores::parse("0-3,6"), Ok(Cores::List(vec![0, 1, 2, 3, 6])));
    /// assert_eq!(Cores::parse(" 2,1,2 "), Ok(Cores::List(vec![1, 2])));
    /// assert_eq!(Cores::parse("ALL"), Ok(Cores::All));
    /// assert!(Cores::parse("3-1").is_err());
    /// ```
    pub fn parse(s: &str) -> Result<Cores, String> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("all") {
            return Ok(Cores::All);
        }
        let mut list = Vec::new();
        for part in s.split(',') {
            let part = part.trim();
            let parse = |x: &str| {
                x.trim()
                    .parse::<usize>()
                    .ok()
                    .filter(|&n| n < 4096)
                    .ok_or_else(|| format!("expected a CPU list like 0-3,6 or `all`, got {s:?}"))
            };
            match part.split_once('-') {
                Some((a, b)) => {
                    let (a, b) = (parse(a)?, parse(b)?);
                    if a > b {
                        return Err(format!("descending range {part:?} in {s:?}"));
                    }
                    list.extend(a..=b);
                }
                None => list.push(parse(part)?),
            }
        }
        list.sort_unstable();
        list.dedup();
        Ok(Cores::List(list))
    }
}

/// Which compio driver to use. Parsed from `LAMBDA_TPC_DRIVER` (case-insensitive); the
/// driver each core actually got is in its [`CoreReport::driver`](crate::CoreReport::driver).
///
/// ```
/// use lambda_tpc::Driver;
///
/// assert_eq!("io_uring".parse(), Ok(Driver::IoUring));
/// assert_eq!("EPOLL".parse(), Ok(Driver::Epoll));
/// assert!("kqueue".parse::<Driver>().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Driver {
    /// io_uring, falling back to epoll where `io_uring_setup` is refused (container
    /// seccomp profiles refuse it).
    #[default]
    Auto,
    /// io_uring only; start-up fails if it is unavailable.
    IoUring,
    /// epoll (compio's polling driver), e.g. to measure what a container would get.
    Epoll,
}

impl FromStr for Driver {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(Driver::Auto),
            "io_uring" | "io-uring" | "iouring" | "uring" => Ok(Driver::IoUring),
            "epoll" | "poll" | "polling" => Ok(Driver::Epoll),
            _ => Err(format!("expected auto, io_uring or epoll, got {s:?}")),
        }
    }
}

/// io_uring set-up flags (ignored by the epoll driver). Each trades generality for fewer
/// kernel transitions on a ring used by one thread, which is exactly our case.
///
/// A kernel that refuses the flags gets a ring without them (logged), and only if that
/// fails too does [`Driver::Auto`] fall back to epoll. The type is `#[non_exhaustive]`: start from a
/// constant and change fields.
///
/// ```
/// use lambda_tpc::UringFlags;
///
/// assert_eq!(UringFlags::parse("default")?, UringFlags::ALL);
/// let f = UringFlags::parse("coop_taskrun, single_issuer")?;
/// assert!(f.coop_taskrun && f.single_issuer && !f.defer_taskrun);
///
/// let mut f = UringFlags::ALL;
/// f.defer_taskrun = false;
/// assert_ne!(f, UringFlags::ALL);
/// # Ok::<(), String>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct UringFlags {
    /// `IORING_SETUP_COOP_TASKRUN`: no inter-processor interrupt to run completions.
    pub coop_taskrun: bool,
    /// `IORING_SETUP_TASKRUN_FLAG`: tell user space when completions are pending.
    pub taskrun_flag: bool,
    /// `IORING_SETUP_SINGLE_ISSUER`: only this thread submits.
    pub single_issuer: bool,
    /// `IORING_SETUP_DEFER_TASKRUN`: run completion work only when we wait (needs
    /// `single_issuer`).
    pub defer_taskrun: bool,
}

impl UringFlags {
    /// All four flags on: the measured default.
    pub const ALL: UringFlags = UringFlags {
        coop_taskrun: true,
        taskrun_flag: true,
        single_issuer: true,
        defer_taskrun: true,
    };
    /// No flags: compio's own default set-up.
    pub const NONE: UringFlags = UringFlags {
        coop_taskrun: false,
        taskrun_flag: false,
        single_issuer: false,
        defer_taskrun: false,
    };

    /// Parses `default` (or `all`), `none` (or an empty string), or a comma list of flag
    /// names, case-insensitively: the syntax of `LAMBDA_TPC_URING_FLAGS`.
    ///
    /// # Errors
    ///
    /// A message naming the unknown flag, or saying that `defer_taskrun` was asked
    /// without `single_issuer`.
    pub fn parse(s: &str) -> Result<UringFlags, String> {
        let s = s.trim();
        match s.to_ascii_lowercase().as_str() {
            "default" | "all" => return Ok(UringFlags::ALL),
            "none" | "" => return Ok(UringFlags::NONE),
            _ => {}
        }
        let mut f = UringFlags::NONE;
        for name in s.split(',') {
            match name.trim().to_ascii_lowercase().as_str() {
                "coop_taskrun" => f.coop_taskrun = true,
                "taskrun_flag" => f.taskrun_flag = true,
                "single_issuer" => f.single_issuer = true,
                "defer_taskrun" => f.defer_taskrun = true,
                other => {
                    return Err(format!(
                        "unknown io_uring flag {other:?} (expected coop_taskrun, taskrun_flag, \
                         single_issuer, defer_taskrun, default or none)"
                    ));
                }
            }
        }
        if f.defer_taskrun && !f.single_issuer {
            // The kernel takes DEFER_TASKRUN only with SINGLE_ISSUER; compio would drop it
            // without a word.
            return Err(
                "defer_taskrun needs single_issuer (the kernel accepts it only with \
                 it): add single_issuer"
                    .to_owned(),
            );
        }
        Ok(f)
    }
}

impl Default for UringFlags {
    fn default() -> Self {
        UringFlags::ALL
    }
}

/// The work one core does: which CPU, how many `/next` polls, how many permits. One per
/// used core, from [`Config::plan`]; [`compio::run_per_core`](crate::compio::run_per_core)
/// hands it to the factory building that core's handler.
///
/// ```
/// use std::num::NonZeroUsize;
/// use lambda_tpc::Config;
///
/// let config = Config::builder()
///     .runtime_api("127.0.0.1:9001")
///     .max_concurrency(NonZeroUsize::new(5).unwrap())
///     .build_with(|_| None)?;
/// let plan = config.plan();
/// // However many CPUs this machine has, the five slots are all placed...
/// assert_eq!(plan.iter().map(|core| core.pollers).sum::<usize>(), 5);
/// // ...on at most five cores, numbered from 0.
/// assert!(plan.len() <= 5 && plan.iter().enumerate().all(|(i, core)| core.index == i));
/// # Ok::<(), lambda_tpc::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CorePlan {
    /// Index of this core among the runtime's cores (0-based).
    pub index: usize,
    /// CPU id the core's thread is pinned to.
    pub cpu: usize,
    /// `/next` polls (worker-per-slot: slots) kept on this core.
    pub pollers: usize,
    /// Semaphore permits on this core (`None` unless the strategy is a semaphore).
    pub permits: Option<usize>,
}

/// The runtime's configuration. Build it with [`Config::builder`] or
/// [`Config::from_env`]; the [module docs](self) list the environment variables.
///
/// Read-only once built: the getters report the merged values.
///
/// ```
/// use lambda_tpc::{Config, Strategy};
///
/// let config = Config::builder().runtime_api("http://127.0.0.1:9001/prefix").build_with(|_| None)?;
/// assert_eq!(config.runtime_api().prefix(), "/prefix");
/// assert_eq!(config.strategy(), Strategy::WorkerPerSlot); // the default
/// assert!(config.enforce_deadline() && config.handle_signals() && !config.pipelining());
/// # Ok::<(), lambda_tpc::Error>(())
/// ```
#[derive(Clone)]
pub struct Config {
    runtime_api: RuntimeApi,
    max_concurrency: NonZeroUsize,
    cpus: Vec<usize>,
    pollers_per_core: Option<NonZeroUsize>,
    strategy: Strategy,
    max_event_bytes: usize,
    max_response_bytes: usize,
    driver: Driver,
    pipelining: bool,
    uring_flags: UringFlags,
    shutdown_grace: Duration,
    control: Option<Control>,
    enforce_deadline: bool,
    stall_threshold: Option<Duration>,
    unreachable_timeout: Option<Duration>,
    tune_malloc: bool,
    handle_signals: bool,
    on_shutdown: Option<ShutdownHook>,
    deferred_post_replies: bool,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("runtime_api", &self.runtime_api)
            .field("max_concurrency", &self.max_concurrency)
            .field("cpus", &self.cpus)
            .field("pollers_per_core", &self.pollers_per_core)
            .field("strategy", &self.strategy)
            .field("max_event_bytes", &self.max_event_bytes)
            .field("max_response_bytes", &self.max_response_bytes)
            .field("driver", &self.driver)
            .field("pipelining", &self.pipelining)
            .field("uring_flags", &self.uring_flags)
            .field("shutdown_grace", &self.shutdown_grace)
            .field("enforce_deadline", &self.enforce_deadline)
            .field("deferred_post_replies", &self.deferred_post_replies)
            .field("stall_threshold", &self.stall_threshold)
            .field("unreachable_timeout", &self.unreachable_timeout)
            .field("tune_malloc", &self.tune_malloc)
            .field("handle_signals", &self.handle_signals)
            .field("on_shutdown", &self.on_shutdown.is_some())
            .finish_non_exhaustive()
    }
}

impl Config {
    /// A builder with nothing set: everything comes from the environment or defaults.
    pub fn builder() -> ConfigBuilder {
        ConfigBuilder::default()
    }

    /// The configuration from the process environment alone (what
    /// [`compio::run_concurrent`](crate::compio::run_concurrent) uses).
    ///
    /// # Errors
    ///
    /// As [`ConfigBuilder::build`]: `AWS_LAMBDA_RUNTIME_API` unset, or any variable set
    /// to an invalid value.
    pub fn from_env() -> Result<Config, Error> {
        Config::builder().build()
    }

    /// The Runtime API endpoint.
    pub fn runtime_api(&self) -> &RuntimeApi {
        &self.runtime_api
    }

    /// Invocations the environment may run at once.
    pub fn max_concurrency(&self) -> NonZeroUsize {
        self.max_concurrency
    }

    /// CPU ids the runtime may use (before trimming to the maximum concurrency).
    pub fn cpus(&self) -> &[usize] {
        &self.cpus
    }

    /// `/next` polls per core, when set explicitly (otherwise the per-core share of the
    /// maximum concurrency is used).
    pub fn pollers_per_core_override(&self) -> Option<NonZeroUsize> {
        self.pollers_per_core
    }

    /// The strategy.
    pub fn strategy(&self) -> Strategy {
        self.strategy
    }

    /// Largest event payload accepted.
    pub fn max_event_bytes(&self) -> usize {
        self.max_event_bytes
    }

    /// Largest response posted; a larger one is replaced by a
    /// `Function.ResponseSizeTooLarge` error.
    pub fn max_response_bytes(&self) -> usize {
        self.max_response_bytes
    }

    /// The driver choice.
    pub fn driver(&self) -> Driver {
        self.driver
    }

    /// Whether the result post and the next `/next` are pipelined in one write (only
    /// worker-per-slot does: false with another strategy, whatever was asked).
    pub fn pipelining(&self) -> bool {
        self.pipelining
    }

    /// io_uring set-up flags.
    pub fn uring_flags(&self) -> UringFlags {
        self.uring_flags
    }

    /// How long in-flight invocations may run after shutdown begins.
    pub fn shutdown_grace(&self) -> Duration {
        self.shutdown_grace
    }

    /// The control handle, if one was attached.
    pub fn control(&self) -> Option<&Control> {
        self.control.as_ref()
    }

    /// Whether a handler still running at its invocation's deadline is cancelled (and
    /// `Runtime.DeadlineExceeded` posted).
    pub fn enforce_deadline(&self) -> bool {
        self.enforce_deadline
    }

    /// How long a handler may hold its core's thread before it is logged and counted
    /// (`None`: detection off).
    pub fn stall_threshold(&self) -> Option<Duration> {
        self.stall_threshold
    }

    /// How long a core's `/next` polls may keep failing to reach the Runtime API before
    /// the run ends with an error (`None`: retry forever).
    pub fn unreachable_timeout(&self) -> Option<Duration> {
        self.unreachable_timeout
    }

    /// Whether glibc malloc's thresholds are raised at start (see
    /// [`ConfigBuilder::tune_malloc`]).
    pub fn tune_malloc(&self) -> bool {
        self.tune_malloc
    }

    /// Whether worker-per-slot posts on a second connection and reads the reply later
    /// (false with another strategy, or with pipelining, which takes its place).
    pub fn deferred_post_replies(&self) -> bool {
        self.deferred_post_replies
    }

    /// Whether SIGTERM and SIGINT start a graceful shutdown.
    pub fn handle_signals(&self) -> bool {
        self.handle_signals
    }

    /// The shutdown hook, if any.
    pub fn on_shutdown(&self) -> Option<&ShutdownHook> {
        self.on_shutdown.as_ref()
    }

    /// How the work is spread over cores.
    ///
    /// Without an explicit `pollers_per_core`, the maximum concurrency is split over the
    /// cores (the first `max % cores` cores get one more), and cores whose share would be
    /// zero are not used: with `AWS_LAMBDA_MAX_CONCURRENCY=1` one core runs. With
    /// `pollers_per_core`, every core gets that many. Semaphore permits are split over the
    /// used cores the same way, at least one per core.
    ///
    /// The thread-per-core runtimes start one thread per entry; see [`CorePlan`] for an
    /// example.
    pub fn plan(&self) -> Vec<CorePlan> {
        let shares = match self.pollers_per_core {
            Some(p) => vec![p.get(); self.cpus.len()],
            None => split(self.max_concurrency.get(), self.cpus.len()),
        };
        let used: Vec<(usize, usize)> = self
            .cpus
            .iter()
            .zip(shares)
            .filter(|(_, n)| *n > 0)
            .map(|(&cpu, n)| (cpu, n))
            .collect();
        let permits = match self.strategy {
            Strategy::Semaphore { permits } => Some(split(permits.get(), used.len())),
            _ => None,
        };
        used.iter()
            .enumerate()
            .map(|(index, &(cpu, pollers))| CorePlan {
                index,
                cpu,
                pollers,
                permits: permits.as_ref().map(|p| p[index].max(1)),
            })
            .collect()
    }
}

/// Splits `total` over `n` parts as evenly as possible, larger parts first.
fn split(total: usize, n: usize) -> Vec<usize> {
    if n == 0 {
        return Vec::new();
    }
    let (base, extra) = (total / n, total % n);
    (0..n).map(|i| base + usize::from(i < extra)).collect()
}

/// Builder for [`Config`]; see the [module docs](self) for the environment variables.
///
/// Each method overrides its variable; anything not set is read from the environment by
/// [`build`](Self::build), or from any other source by [`build_with`](Self::build_with).
///
/// ```
/// use std::num::NonZeroUsize;
/// use std::time::Duration;
/// use lambda_tpc::{Config, Strategy};
///
/// let config = Config::builder()
///     .runtime_api("127.0.0.1:9001")
///     .max_concurrency(NonZeroUsize::new(64).unwrap())
///     .strategy(Strategy::Unbounded)
///     .shutdown_grace(Duration::from_secs(2))
///     .stall_threshold(Some(Duration::from_millis(20)))
///     .build_with(|_| None)?; // ignore the process environment
/// assert_eq!(config.max_concurrency().get(), 64);
/// # Ok::<(), lambda_tpc::Error>(())
/// ```
#[derive(Clone, Default)]
#[must_use]
pub struct ConfigBuilder {
    runtime_api: Option<String>,
    max_concurrency: Option<NonZeroUsize>,
    cores: Option<Cores>,
    pollers_per_core: Option<NonZeroUsize>,
    strategy: Option<Strategy>,
    max_event_bytes: Option<usize>,
    max_response_bytes: Option<usize>,
    driver: Option<Driver>,
    pipelining: Option<bool>,
    uring_flags: Option<UringFlags>,
    shutdown_grace: Option<Duration>,
    control: Option<Control>,
    enforce_deadline: Option<bool>,
    stall_threshold: Option<Option<Duration>>,
    unreachable_timeout: Option<Option<Duration>>,
    tune_malloc: Option<bool>,
    handle_signals: Option<bool>,
    on_shutdown: Option<ShutdownHook>,
    deferred_post_replies: Option<bool>,
}

impl std::fmt::Debug for ConfigBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigBuilder").finish_non_exhaustive()
    }
}

impl ConfigBuilder {
    /// The Runtime API endpoint, overriding `AWS_LAMBDA_RUNTIME_API`.
    pub fn runtime_api(mut self, endpoint: impl Into<String>) -> Self {
        self.runtime_api = Some(endpoint.into());
        self
    }

    /// Invocations the environment may run at once, overriding
    /// `AWS_LAMBDA_MAX_CONCURRENCY`.
    pub fn max_concurrency(mut self, n: NonZeroUsize) -> Self {
        self.max_concurrency = Some(n);
        self
    }

    /// Cores to run on, overriding `LAMBDA_TPC_CORES`.
    pub fn cores(mut self, cores: Cores) -> Self {
        self.cores = Some(cores);
        self
    }

    /// `/next` polls (worker-per-slot: slots) per core, overriding the per-core share of
    /// the maximum concurrency and `LAMBDA_TPC_POLLERS_PER_CORE`.
    pub fn pollers_per_core(mut self, n: NonZeroUsize) -> Self {
        self.pollers_per_core = Some(n);
        self
    }

    /// The strategy, overriding `LAMBDA_TPC_STRATEGY`.
    pub fn strategy(mut self, strategy: Strategy) -> Self {
        self.strategy = Some(strategy);
        self
    }

    /// Largest event payload accepted (default [`DEFAULT_MAX_BODY_BYTES`]). A larger
    /// event is answered with `Runtime.EventTooLarge` without calling the handler; a body
    /// announced with `Content-Length` is skipped and its connection kept, a chunked one
    /// ends its connection. Zero is a configuration error.
    pub fn max_event_bytes(mut self, n: usize) -> Self {
        self.max_event_bytes = Some(n);
        self
    }

    /// Largest response posted (default [`MAX_RESPONSE_BYTES`]); a larger one is replaced
    /// by a `Function.ResponseSizeTooLarge` error. Zero, or more than
    /// [`MAX_ENCODABLE_BODY_BYTES`](crate::api::MAX_ENCODABLE_BODY_BYTES), is a
    /// configuration error.
    pub fn max_response_bytes(mut self, n: usize) -> Self {
        self.max_response_bytes = Some(n);
        self
    }

    /// The driver, overriding `LAMBDA_TPC_DRIVER`.
    pub fn driver(mut self, driver: Driver) -> Self {
        self.driver = Some(driver);
        self
    }

    /// Pipeline the result post and the next `/next` in one write (worker-per-slot only;
    /// no effect with another strategy), overriding `LAMBDA_TPC_PIPELINING`. Off by
    /// default: it relies on the Runtime API server processing pipelined HTTP/1.1
    /// requests in order, which AWS's emulator was seen to do but which AWS does not
    /// document. A second risk: if the connection breaks after the write but before the
    /// post's reply is read, the `/next` behind it may already be queued on the API side,
    /// and it is abandoned with the connection (AWS's emulator then fails the next
    /// invocation it routes to that poll).
    ///
    /// The slot sleeps once per invocation, not twice: the socket's receive low-water
    /// mark is raised past the length of the post's reply, so the reply alone wakes
    /// nobody, and it is read when the invocation behind it arrives. The post counts as
    /// answered (and its invocation as finished) once sent; a refusal is counted and
    /// logged when its reply is read, so one still unread when the run ends is not.
    pub fn pipelining(mut self, on: bool) -> Self {
        self.pipelining = Some(on);
        self
    }

    /// io_uring set-up flags, overriding `LAMBDA_TPC_URING_FLAGS`.
    pub fn uring_flags(mut self, flags: UringFlags) -> Self {
        self.uring_flags = Some(flags);
        self
    }

    /// How long in-flight invocations may run after shutdown begins (default 5 s; no
    /// variable; at most [`MAX_DURATION`]). Invocations still running when it ends are
    /// dropped unanswered.
    pub fn shutdown_grace(mut self, grace: Duration) -> Self {
        self.shutdown_grace = Some(grace);
        self
    }

    /// Attach a [`Control`] handle to stop the runtime and read its report (see there for
    /// an example).
    pub fn control(mut self, control: Control) -> Self {
        self.control = Some(control);
        self
    }

    /// Cancel a handler still running at its invocation's deadline and post
    /// `Runtime.DeadlineExceeded`, freeing its slot (default on; overrides
    /// `LAMBDA_TPC_ENFORCE_DEADLINE`).
    ///
    /// Managed Instances do not stop a handler at its deadline, and its late reply would
    /// be refused anyway (410), so by default the runtime stops it, so that a stuck
    /// handler cannot hold a slot forever. Cancelling drops the handler's future at an
    /// await point, exactly like `tokio::time::timeout`: turn it off if your handler must
    /// never be interrupted between awaits. A streamed response still running at the
    /// deadline is cut off too, with `Runtime.DeadlineExceeded` in its trailers.
    pub fn enforce_deadline(mut self, on: bool) -> Self {
        self.enforce_deadline = Some(on);
        self
    }

    /// How long one poll of a handler may hold its core's thread before it is logged
    /// (with its request id, at most once a second per core) and counted, and how long a
    /// core's event loop may stay stalled before the watchdog names the core. `None`
    /// (or zero, as `0` in the variable) turns both off. Default 100 ms; overrides
    /// `LAMBDA_TPC_STALL_MS`.
    pub fn stall_threshold(mut self, threshold: Option<Duration>) -> Self {
        self.stall_threshold = Some(threshold);
        self
    }

    /// How long `/next` may keep failing (refused or reset connections, replies cut
    /// short or malformed, statuses other than 200, 403 and 500) before the run gives up: every core stops, and the
    /// run returns an error for which [`Error::is_unreachable`] is true, so that the
    /// process exits and the environment is replaced rather than retrying forever. The
    /// clock starts at a poll loop's first failure in a row; any invocation received
    /// resets it, and so does a poll that the API held for a second or more before it
    /// failed (the API was there). Retries back off from 5 ms to 1 s meanwhile. `None`
    /// (or zero, as `0` in the variable) retries forever. Default 10 s; overrides
    /// `LAMBDA_TPC_UNREACHABLE_MS`.
    ///
    /// The same limit bounds how long a post (an invocation's result) whose connection
    /// failed before any byte of its reply (refused, reset, closed, or the send failed)
    /// is sent again, with the same backoff (an idle pooled keep-alive connection first,
    /// with the strategies that pool them; once shutting down, no later than the end of
    /// the grace period). Past the limit it is given up, logged and counted as a post
    /// failure. It also bounds the wait for a post's reply (the API answers at once; one
    /// silent that long is hung): the connection is closed and the post counted as
    /// failed, not sent again. Not for a pipelined post of 64 KiB or less, whose reply is
    /// read together with the next invocation, a long poll. Likewise it bounds the
    /// progress of a send that waits on the API to read it (a post over 64 KiB, a
    /// streamed response past its first 64 KiB), and of the wait for such a post's reply:
    /// if the API takes none of it for that long (the socket's `TCP_INFO` counts what it
    /// took), it stopped reading, and the post is given up the same way (a streamed one
    /// too, without the error post that answers other broken streams). An API reading
    /// slowly is waited for, however long the whole post takes, as long as it takes a
    /// receive window's worth (about 64 KiB on loopback) within each timeout.
    pub fn unreachable_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.unreachable_timeout = Some(timeout);
        self
    }

    /// Raise glibc malloc's trim and mmap thresholds when the runtime starts (default on;
    /// overrides `LAMBDA_TPC_TUNE_MALLOC`).
    ///
    /// By default glibc returns freed memory at the top of a heap to the kernel as soon
    /// as 128 KiB is free there, and maps every allocation of 128 KiB or more afresh, so
    /// each invocation of a function with large events faults its memory in again
    /// (measured with 64 KiB events: 6.4 page faults and a sixth of the CPU per
    /// invocation). On, the runtime sets the mmap threshold to 32 MiB and the trim
    /// threshold to 64 MiB, the values glibc's own adaptive policy ends at; the cost is
    /// that up to 64 MiB freed at the top of each heap stays with the process. Nothing is
    /// changed when `GLIBC_TUNABLES` sets a `glibc.malloc.*` tunable or
    /// `MALLOC_TRIM_THRESHOLD_`/`MALLOC_MMAP_THRESHOLD_` is set, nor with another
    /// allocator than glibc's (a `#[global_allocator]` such as mimalloc is not affected).
    pub fn tune_malloc(mut self, on: bool) -> Self {
        self.tune_malloc = Some(on);
        self
    }

    /// Worker-per-slot without pipelining: post each result on a second connection of
    /// the slot and read the reply when the next invocation comes, before its handler
    /// runs, or after 50 to 100 ms without one (default on; overrides
    /// `LAMBDA_TPC_DEFERRED_REPLIES`).
    ///
    /// The slot then sends the next `/next` right after the post, without waiting a round
    /// trip for the reply, and sleeps once per invocation instead of twice. Both
    /// connections stay strictly one request, one reply (no pipelining), so any Runtime
    /// API serves it. Off: the post and its reply happen on the poll connection before the
    /// next `/next`, like the official runtime.
    pub fn deferred_post_replies(mut self, on: bool) -> Self {
        self.deferred_post_replies = Some(on);
        self
    }

    /// Whether SIGTERM and SIGINT begin a graceful shutdown (default on): no new
    /// invocations, in-flight ones get the grace period, the shutdown hook runs, and the
    /// run function returns `Ok(())`. Once the run has returned, the signals have their
    /// default action again (they end the process). Turn it off when the process handles
    /// signals itself, or in tests, and stop the runtime with a [`Control`].
    pub fn handle_signals(mut self, on: bool) -> Self {
        self.handle_signals = Some(on);
        self
    }

    /// A function run once at shutdown, after in-flight invocations finished or the
    /// grace period ran out (flush telemetry, close pools), on the thread that called the
    /// run function. A panic in it is logged. It is not run when start-up failed.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use std::sync::atomic::{AtomicU64, Ordering};
    /// use lambda_tpc::Config;
    ///
    /// let pending_metrics = Arc::new(AtomicU64::new(0));
    /// let flush = pending_metrics.clone();
    /// let config = Config::builder()
    ///     .runtime_api("127.0.0.1:9001")
    ///     .on_shutdown(move || {
    ///         let n = flush.swap(0, Ordering::AcqRel);
    ///         eprintln!("flushing {n} metrics");
    ///     })
    ///     .build_with(|_| None)?;
    /// assert!(config.on_shutdown().is_some());
    /// # Ok::<(), lambda_tpc::Error>(())
    /// ```
    pub fn on_shutdown(mut self, hook: impl Fn() + Send + Sync + 'static) -> Self {
        self.on_shutdown = Some(std::sync::Arc::new(hook));
        self
    }

    /// Builds the configuration, reading unset values from the process environment
    /// (values that are not UTF-8 are read lossily, and then refused as invalid).
    ///
    /// # Errors
    ///
    /// A configuration error ([`Error::is_config`]) when the Runtime API endpoint is
    /// missing, a set variable or a builder value is invalid, the requested cores are not
    /// in the process's CPU affinity mask, or a body limit is zero.
    /// [`Error::config_var`] names the variable a bad value came from.
    ///
    /// ```
    /// use lambda_tpc::Config;
    ///
    /// // The Runtime API from the builder, the rest from the environment.
    /// let config = Config::builder().runtime_api("127.0.0.1:9001").build()?;
    /// assert_eq!(config.runtime_api().authority(), "127.0.0.1:9001");
    /// # Ok::<(), lambda_tpc::Error>(())
    /// ```
    pub fn build(self) -> Result<Config, Error> {
        self.build_with(|k| std::env::var_os(k).map(|v| v.to_string_lossy().into_owned()))
    }

    /// Builds the configuration, reading unset values through `env` (for tests, or
    /// configuration from somewhere other than the process environment). `|_| None`
    /// ignores the environment altogether.
    ///
    /// # Errors
    ///
    /// As [`build`](Self::build).
    ///
    /// ```
    /// use std::collections::HashMap;
    /// use lambda_tpc::Config;
    ///
    /// let vars = HashMap::from([
    ///     ("AWS_LAMBDA_RUNTIME_API", "127.0.0.1:9001"),
    ///     ("AWS_LAMBDA_MAX_CONCURRENCY", "32"),
    ///     ("LAMBDA_TPC_PIPELINING", "on"),
    /// ]);
    /// let config = Config::builder().build_with(|k| vars.get(k).map(|v| v.to_string()))?;
    /// assert_eq!(config.max_concurrency().get(), 32);
    /// assert!(config.pipelining());
    /// # Ok::<(), lambda_tpc::Error>(())
    /// ```
    pub fn build_with(self, env: impl Fn(&str) -> Option<String>) -> Result<Config, Error> {
        let runtime_api = match self.runtime_api {
            Some(v) => RuntimeApi::parse(&v)
                .map_err(|m| Error::config(None, format!("runtime API {m}")))?,
            None => {
                let v = env(ENV_RUNTIME_API).ok_or_else(|| {
                    Error::config(
                        Some(ENV_RUNTIME_API),
                        "not set (Lambda sets it; locally, point it at a Runtime API such as the \
                         embedded simulator)",
                    )
                })?;
                RuntimeApi::parse(&v).map_err(|m| Error::config(Some(ENV_RUNTIME_API), m))?
            }
        };
        let max_concurrency = setting(
            self.max_concurrency,
            &env,
            ENV_MAX_CONCURRENCY,
            NonZeroUsize::MIN,
            parse_positive,
        )?;
        // Errors about the list name the variable only if the list came from it.
        let cores_var = self.cores.is_none().then_some(ENV_CORES);
        let cores = setting(self.cores, &env, ENV_CORES, Cores::All, Cores::parse)?;
        let pollers_per_core = setting(
            self.pollers_per_core.map(Some),
            &env,
            ENV_POLLERS_PER_CORE,
            None,
            |v| parse_positive(v).map(Some),
        )?;
        let strategy = from_builder_or_env(self.strategy, &env, ENV_STRATEGY, Strategy::default())?;
        let driver = from_builder_or_env(self.driver, &env, ENV_DRIVER, Driver::default())?;
        let pipelining = bool_setting(self.pipelining, &env, ENV_PIPELINING, false)?;
        let uring_flags = setting(
            self.uring_flags,
            &env,
            ENV_URING_FLAGS,
            UringFlags::default(),
            UringFlags::parse,
        )?;
        if uring_flags.defer_taskrun && !uring_flags.single_issuer {
            // Set through the builder's fields (the env syntax refuses it already).
            return Err(Error::config(
                None,
                "io_uring flags: defer_taskrun needs single_issuer (the kernel accepts it only \
                 with it)",
            ));
        }
        let enforce_deadline =
            bool_setting(self.enforce_deadline, &env, ENV_ENFORCE_DEADLINE, true)?;
        let deferred_post_replies =
            bool_setting(self.deferred_post_replies, &env, ENV_DEFERRED_REPLIES, true)?;
        // Both are ways of running worker-per-slot, and pipelining takes the place of
        // deferred replies: the getters (and the start-up log) say what runs.
        let worker_per_slot = strategy == Strategy::WorkerPerSlot;
        let pipelining = pipelining && worker_per_slot;
        let deferred_post_replies = deferred_post_replies && worker_per_slot && !pipelining;
        let stall_threshold = millis_setting(
            self.stall_threshold,
            &env,
            ENV_STALL_MS,
            Some(DEFAULT_STALL_THRESHOLD),
            "turns detection off",
        )?;
        let tune_malloc = bool_setting(self.tune_malloc, &env, ENV_TUNE_MALLOC, true)?;
        let unreachable_timeout = millis_setting(
            self.unreachable_timeout,
            &env,
            ENV_UNREACHABLE_MS,
            Some(DEFAULT_UNREACHABLE_TIMEOUT),
            "retries forever",
        )?;
        let mask = affinity_mask()?;
        let quota = std::thread::available_parallelism()
            .ok()
            .map(NonZeroUsize::get);
        let cpus = resolve_cores(&cores, &mask, cores_var, quota)?;
        if cores == Cores::All && cpus.len() < mask.len() {
            tracing::info!(
                cores = cpus.len(),
                affinity_mask = mask.len(),
                "the CPU quota allows fewer CPUs than the affinity mask holds; one core per CPU of quota"
            );
        }
        let max_event_bytes = self.max_event_bytes.unwrap_or(DEFAULT_MAX_BODY_BYTES);
        let max_response_bytes = self.max_response_bytes.unwrap_or(MAX_RESPONSE_BYTES);
        if max_event_bytes == 0 || max_response_bytes == 0 {
            return Err(Error::config(None, "body limits must be positive"));
        }
        if max_response_bytes as u64 > crate::api::MAX_ENCODABLE_BODY_BYTES {
            return Err(Error::config(
                None,
                format!(
                    "max_response_bytes {max_response_bytes} is over {} (the largest body a \
                     post can carry)",
                    crate::api::MAX_ENCODABLE_BODY_BYTES
                ),
            ));
        }
        Ok(Config {
            runtime_api,
            max_concurrency,
            cpus,
            pollers_per_core,
            strategy,
            max_event_bytes,
            max_response_bytes,
            driver,
            pipelining,
            uring_flags,
            shutdown_grace: self
                .shutdown_grace
                .unwrap_or(Duration::from_secs(5))
                .min(MAX_DURATION),
            control: self.control,
            enforce_deadline,
            // Zero from the builder means what `0` in the variables means: off.
            stall_threshold: stall_threshold
                .filter(|d| !d.is_zero())
                .map(|d| d.min(MAX_DURATION)),
            unreachable_timeout: unreachable_timeout
                .filter(|d| !d.is_zero())
                .map(|d| d.min(MAX_DURATION)),
            tune_malloc,
            handle_signals: self.handle_signals.unwrap_or(true),
            on_shutdown: self.on_shutdown,
            deferred_post_replies,
        })
    }
}

/// A setting: the builder's value, else the variable's read by `parse`, else `default`. A
/// value `parse` refuses is an error naming the variable, with `parse`'s message.
fn setting<T>(
    set: Option<T>,
    env: &impl Fn(&str) -> Option<String>,
    var: &'static str,
    default: T,
    parse: impl FnOnce(&str) -> Result<T, String>,
) -> Result<T, Error> {
    match set {
        Some(v) => Ok(v),
        None => match env(var) {
            None => Ok(default),
            Some(v) => parse(&v).map_err(|m| Error::config(Some(var), m)),
        },
    }
}

/// [`setting`] for a type that parses itself.
fn from_builder_or_env<T: FromStr<Err = String>>(
    set: Option<T>,
    env: &impl Fn(&str) -> Option<String>,
    var: &'static str,
    default: T,
) -> Result<T, Error> {
    setting(set, env, var, default, str::parse)
}

/// A boolean setting (`1`/`0`, `true`/`false`, `on`/`off`, `yes`/`no` in the variable).
fn bool_setting(
    set: Option<bool>,
    env: &impl Fn(&str) -> Option<String>,
    var: &'static str,
    default: bool,
) -> Result<bool, Error> {
    setting(set, env, var, default, |v| {
        parse_bool(v).ok_or_else(|| {
            format!("expected 1, true, on or yes, or 0, false, off or no; got {v:?}")
        })
    })
}

/// A duration setting in milliseconds where `0` means `None` (what `zero` says it does).
fn millis_setting(
    set: Option<Option<Duration>>,
    env: &impl Fn(&str) -> Option<String>,
    var: &'static str,
    default: Option<Duration>,
    zero: &str,
) -> Result<Option<Duration>, Error> {
    setting(set, env, var, default, |v| match v.trim().parse::<u64>() {
        Ok(0) => Ok(None),
        Ok(ms) => Ok(Some(Duration::from_millis(ms))),
        Err(_) => Err(format!("expected milliseconds (0 {zero}), got {v:?}")),
    })
}

fn parse_positive(v: &str) -> Result<NonZeroUsize, String> {
    v.trim()
        .parse::<NonZeroUsize>()
        .map_err(|_| format!("expected a positive integer, got {v:?}"))
}

fn parse_bool(v: &str) -> Option<bool> {
    match v.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "on" | "yes" => Some(true),
        "0" | "false" | "off" | "no" => Some(false),
        _ => None,
    }
}

/// CPU ids in the calling thread's affinity mask (the process's, unless the caller
/// narrowed its own).
fn affinity_mask() -> Result<Vec<usize>, Error> {
    let ids = core_affinity::get_core_ids()
        .ok_or_else(|| Error::config(None, "could not read the CPU affinity mask"))?;
    let mut ids: Vec<usize> = ids.into_iter().map(|c| c.id).collect();
    ids.sort_unstable();
    if ids.is_empty() {
        return Err(Error::config(None, "the CPU affinity mask is empty"));
    }
    Ok(ids)
}

/// `var`: the variable the setting came from (`None`: the builder), for error messages.
/// `quota`: how many CPUs' time the process may use, if known ([`Cores::All`] takes no
/// more cores than that; an explicit count or list is taken as asked).
fn resolve_cores(
    cores: &Cores,
    mask: &[usize],
    var: Option<&'static str>,
    quota: Option<usize>,
) -> Result<Vec<usize>, Error> {
    match cores {
        Cores::All => {
            let n = quota.map_or(mask.len(), |q| q.clamp(1, mask.len()));
            Ok(mask[..n].to_vec())
        }
        Cores::Count(n) => {
            if n.get() > mask.len() {
                return Err(Error::config(
                    None,
                    format!(
                        "{n} cores requested but the affinity mask allows {}",
                        mask.len()
                    ),
                ));
            }
            Ok(mask[..n.get()].to_vec())
        }
        Cores::List(list) => {
            if list.is_empty() {
                return Err(Error::config(var, "empty core list"));
            }
            if let Some(bad) = list.iter().find(|c| !mask.contains(c)) {
                let hint = if var.is_some() {
                    " (the variable takes CPU ids such as 0-3, not a count)"
                } else {
                    " (Cores::List takes CPU ids; Cores::Count takes a number of cores)"
                };
                return Err(Error::config(
                    var,
                    format!("CPU {bad} is not in the process affinity mask {mask:?}{hint}"),
                ));
            }
            Ok(list.clone())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn build(vars: &[(&str, &str)]) -> Result<Config, Error> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::builder().build_with(move |k| map.get(k).cloned())
    }

    /// Environment variables of one case.
    type Vars<'a> = Vec<(&'a str, &'a str)>;

    #[test]
    fn env_table() {
        let api = (ENV_RUNTIME_API, "127.0.0.1:9001");
        let cases: Vec<(Vars, Option<&str>)> = vec![
            (vec![api], None),
            (vec![], Some(ENV_RUNTIME_API)),
            (vec![(ENV_RUNTIME_API, "nope")], Some(ENV_RUNTIME_API)),
            (
                vec![api, (ENV_MAX_CONCURRENCY, "abc")],
                Some(ENV_MAX_CONCURRENCY),
            ),
            (
                vec![api, (ENV_MAX_CONCURRENCY, "0")],
                Some(ENV_MAX_CONCURRENCY),
            ),
            (
                vec![api, (ENV_MAX_CONCURRENCY, "-3")],
                Some(ENV_MAX_CONCURRENCY),
            ),
            (vec![api, (ENV_MAX_CONCURRENCY, " 16 ")], None),
            (vec![api, (ENV_STRATEGY, "fast")], Some(ENV_STRATEGY)),
            (vec![api, (ENV_STRATEGY, "semaphore:0")], Some(ENV_STRATEGY)),
            (vec![api, (ENV_STRATEGY, "Semaphore:8")], None),
            (
                vec![api, (ENV_POLLERS_PER_CORE, "x")],
                Some(ENV_POLLERS_PER_CORE),
            ),
            (vec![api, (ENV_CORES, "0-")], Some(ENV_CORES)),
            (vec![api, (ENV_CORES, "3-1")], Some(ENV_CORES)),
            (vec![api, (ENV_CORES, "4000")], Some(ENV_CORES)),
            (vec![api, (ENV_DRIVER, "kqueue")], Some(ENV_DRIVER)),
            (vec![api, (ENV_PIPELINING, "maybe")], Some(ENV_PIPELINING)),
            (
                vec![api, (ENV_URING_FLAGS, "sqpoll")],
                Some(ENV_URING_FLAGS),
            ),
            (
                vec![api, (ENV_URING_FLAGS, "coop_taskrun, taskrun_flag")],
                None,
            ),
            // The kernel takes DEFER_TASKRUN only with SINGLE_ISSUER.
            (
                vec![api, (ENV_URING_FLAGS, "defer_taskrun")],
                Some(ENV_URING_FLAGS),
            ),
            (
                vec![api, (ENV_URING_FLAGS, "single_issuer,defer_taskrun")],
                None,
            ),
            (vec![api, (ENV_STALL_MS, "soon")], Some(ENV_STALL_MS)),
            (
                vec![api, (ENV_UNREACHABLE_MS, "-1")],
                Some(ENV_UNREACHABLE_MS),
            ),
            (
                vec![api, (ENV_UNREACHABLE_MS, "10s")],
                Some(ENV_UNREACHABLE_MS),
            ),
            (vec![api, (ENV_UNREACHABLE_MS, "0")], None),
            (
                vec![api, (ENV_TUNE_MALLOC, "sometimes")],
                Some(ENV_TUNE_MALLOC),
            ),
            (vec![api, (ENV_TUNE_MALLOC, "off")], None),
        ];
        for (vars, bad_var) in cases {
            match (build(&vars), bad_var) {
                (Ok(_), None) => {}
                (Err(e), Some(var)) => {
                    assert!(e.is_config(), "{vars:?}: {e}");
                    assert_eq!(e.config_var(), Some(var), "{vars:?}: {e}");
                    assert!(
                        e.to_string().contains(var),
                        "{vars:?}: message names the variable: {e}"
                    );
                }
                (Ok(_), Some(var)) => panic!("{vars:?}: expected an error about {var}"),
                (Err(e), None) => panic!("{vars:?}: unexpected error {e}"),
            }
        }
    }

    #[test]
    fn builder_overrides_env() {
        let c = Config::builder()
            .strategy(Strategy::Unbounded)
            .max_concurrency(NonZeroUsize::new(7).unwrap())
            .build_with(|k| match k {
                ENV_RUNTIME_API => Some("h:1".into()),
                ENV_STRATEGY => Some("garbage".into()),
                ENV_MAX_CONCURRENCY => Some("garbage".into()),
                _ => None,
            })
            .unwrap();
        assert_eq!(c.strategy(), Strategy::Unbounded);
        assert_eq!(c.max_concurrency().get(), 7);
    }

    #[test]
    fn defer_taskrun_without_single_issuer_is_refused_from_the_builder_too() {
        let mut flags = UringFlags::NONE;
        flags.defer_taskrun = true;
        let e = Config::builder()
            .runtime_api("h:1")
            .uring_flags(flags)
            .build_with(|_| None)
            .unwrap_err();
        assert!(
            e.is_config() && e.to_string().contains("single_issuer"),
            "{e}"
        );
        flags.single_issuer = true;
        let c = Config::builder()
            .runtime_api("h:1")
            .uring_flags(flags)
            .build_with(|_| None);
        assert!(c.is_ok());
    }

    #[test]
    fn unreachable_timeout_from_env() {
        let api = (ENV_RUNTIME_API, "h:1");
        let get = |vars: &[(&str, &str)]| build(vars).map(|c| c.unreachable_timeout());
        assert_eq!(get(&[api]).ok(), Some(Some(DEFAULT_UNREACHABLE_TIMEOUT)));
        assert_eq!(get(&[api, (ENV_UNREACHABLE_MS, "0")]).ok(), Some(None));
        assert_eq!(
            get(&[api, (ENV_UNREACHABLE_MS, "2500")]).ok(),
            Some(Some(Duration::from_millis(2500)))
        );
    }

    /// Pipelining and deferred replies are ways of running worker-per-slot; the getters
    /// report what runs (they said `true` for settings that had no effect).
    #[test]
    fn getters_report_the_effective_post_mode() {
        let mode = |strategy: Strategy, pipelining: bool, deferred: bool| {
            let c = Config::builder()
                .runtime_api("h:1")
                .strategy(strategy)
                .pipelining(pipelining)
                .deferred_post_replies(deferred)
                .build_with(|_| None)
                .unwrap();
            (c.pipelining(), c.deferred_post_replies())
        };
        let wps = Strategy::WorkerPerSlot;
        assert_eq!(mode(wps, false, true), (false, true));
        assert_eq!(mode(wps, true, true), (true, false));
        assert_eq!(mode(wps, false, false), (false, false));
        for other in [
            Strategy::Unbounded,
            Strategy::Semaphore {
                permits: NonZeroUsize::MIN,
            },
        ] {
            assert_eq!(mode(other, true, true), (false, false), "{other}");
        }
    }

    /// A response limit whose length would not fit the `Content-Length` slot is refused
    /// (a body that long would have been sent with a wrong length).
    #[test]
    fn response_limit_fits_the_length_field() {
        let build = |n: u64| {
            Config::builder()
                .runtime_api("h:1")
                .max_response_bytes(usize::try_from(n).unwrap())
                .build_with(|_| None)
        };
        let max = crate::api::MAX_ENCODABLE_BODY_BYTES;
        assert_eq!(
            build(max).map(|c| c.max_response_bytes() as u64).ok(),
            Some(max)
        );
        let e = build(max + 1).unwrap_err();
        assert!(
            e.is_config() && e.to_string().contains("max_response_bytes"),
            "{e}"
        );
    }

    /// Zero from the builder is off, as `0` in the variables: not "give up at the first
    /// failure" and "every poll is a stall".
    #[test]
    fn zero_durations_from_the_builder_are_off() {
        let c = Config::builder()
            .runtime_api("h:1")
            .unreachable_timeout(Some(Duration::ZERO))
            .stall_threshold(Some(Duration::ZERO))
            .build_with(|_| None)
            .unwrap();
        assert_eq!((c.unreachable_timeout(), c.stall_threshold()), (None, None));
        let c = Config::builder()
            .runtime_api("h:1")
            .unreachable_timeout(Some(Duration::from_millis(1)))
            .stall_threshold(Some(Duration::from_millis(1)))
            .build_with(|_| None)
            .unwrap();
        assert_eq!(
            (c.unreachable_timeout(), c.stall_threshold()),
            (
                Some(Duration::from_millis(1)),
                Some(Duration::from_millis(1))
            )
        );
    }

    #[test]
    fn missing_max_concurrency_is_one() {
        let c = build(&[(ENV_RUNTIME_API, "h:1")]).unwrap();
        assert_eq!(c.max_concurrency().get(), 1);
    }

    #[test]
    fn cores_parse() {
        assert_eq!(Cores::parse("0-3,6"), Ok(Cores::List(vec![0, 1, 2, 3, 6])));
        assert_eq!(Cores::parse(" 2 , 1,2"), Ok(Cores::List(vec![1, 2])));
        assert_eq!(Cores::parse("ALL"), Ok(Cores::All));
        for bad in ["", "a", "1-", "-1", "1,,2", "5-2"] {
            assert!(Cores::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn strategy_parse_roundtrip() {
        for s in [
            Strategy::WorkerPerSlot,
            Strategy::Unbounded,
            Strategy::Semaphore {
                permits: NonZeroUsize::new(12).unwrap(),
            },
        ] {
            assert_eq!(s.to_string().parse::<Strategy>(), Ok(s));
        }
    }

    #[test]
    fn plan_splits_concurrency() {
        assert_eq!(split(7, 2), vec![4, 3]);
        assert_eq!(split(1, 4), vec![1, 0, 0, 0]);
        assert_eq!(split(64, 2), vec![32, 32]);
        let mut c = build(&[(ENV_RUNTIME_API, "h:1"), (ENV_MAX_CONCURRENCY, "1")]).unwrap();
        c.cpus = vec![0, 1, 2];
        let plan = c.plan();
        assert_eq!(plan.len(), 1, "a core with no share is not used");
        assert_eq!((plan[0].cpu, plan[0].pollers), (0, 1));
        c.max_concurrency = NonZeroUsize::new(8).unwrap();
        c.strategy = Strategy::Semaphore {
            permits: NonZeroUsize::new(2).unwrap(),
        };
        let plan = c.plan();
        assert_eq!(
            plan.iter().map(|p| p.pollers).collect::<Vec<_>>(),
            vec![3, 3, 2]
        );
        assert_eq!(
            plan.iter().map(|p| p.permits).collect::<Vec<_>>(),
            vec![Some(1), Some(1), Some(1)]
        );
    }

    #[test]
    fn cores_must_be_in_mask() {
        let env = Some(ENV_CORES);
        assert!(resolve_cores(&Cores::List(vec![5]), &[0, 1], env, None).is_err());
        assert_eq!(
            resolve_cores(&Cores::List(vec![1]), &[0, 1], env, None).unwrap(),
            vec![1]
        );
        let three = Cores::Count(NonZeroUsize::new(3).unwrap());
        assert!(resolve_cores(&three, &[0, 1], None, None).is_err());
        assert_eq!(
            resolve_cores(&Cores::All, &[0, 1], None, None).unwrap(),
            vec![0, 1]
        );
    }

    /// `all` takes no more cores than the CPU quota allows (a container limited to two
    /// CPUs' time on a larger host), and at least one; an explicit count or list is taken
    /// as asked.
    #[test]
    fn all_cores_follow_the_cpu_quota() {
        let mask = [0, 1, 2, 3, 8, 9];
        let all = |quota| resolve_cores(&Cores::All, &mask, None, quota).unwrap();
        assert_eq!(all(None), mask);
        assert_eq!(all(Some(2)), [0, 1]);
        assert_eq!(all(Some(6)), mask);
        assert_eq!(all(Some(64)), mask);
        assert_eq!(all(Some(0)), [0]);
        let four = Cores::Count(NonZeroUsize::new(4).unwrap());
        assert_eq!(
            resolve_cores(&four, &mask, None, Some(2)).unwrap(),
            [0, 1, 2, 3]
        );
        assert_eq!(
            resolve_cores(&Cores::List(vec![8, 9, 3]), &mask, None, Some(1)).unwrap(),
            [8, 9, 3]
        );
    }

    /// A bad core list names the variable only when it came from it (a list set with the
    /// builder was blamed on `LAMBDA_TPC_CORES`, and told to use CPU ids "in the variable").
    #[test]
    fn core_list_errors_name_their_origin() {
        let build = |builder: Option<Cores>, vars: &[(&str, &str)]| {
            let map: HashMap<String, String> = vars
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect();
            let mut b = Config::builder();
            if let Some(cores) = builder {
                b = b.cores(cores);
            }
            b.build_with(|k| map.get(k).cloned()).unwrap_err()
        };
        let api = (ENV_RUNTIME_API, "h:1");
        for list in [vec![], vec![4095]] {
            let e = build(Some(Cores::List(list.clone())), &[api]);
            assert_eq!(e.config_var(), None, "{list:?}: {e}");
            assert!(!e.to_string().contains("LAMBDA_TPC_CORES"), "{list:?}: {e}");
        }
        let e = build(None, &[api, (ENV_CORES, "4095")]);
        assert_eq!(e.config_var(), Some(ENV_CORES), "{e}");
        assert!(e.to_string().contains("the variable takes CPU ids"), "{e}");
    }
}
