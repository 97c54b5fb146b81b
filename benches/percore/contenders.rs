//! The contenders: each is a name, the function the child runs, and the environment
//! variables that select its configuration.
//!
//! Adding a contender is adding an entry to [`CONTENDERS`].

use lambda_tpc::{BoxError, Config, LambdaEvent};
use serde_json::Value;

use crate::workloads::Work;

const STRATEGY: &str = "LAMBDA_TPC_STRATEGY";
const DRIVER: &str = "LAMBDA_TPC_DRIVER";
const PIPELINING: &str = "LAMBDA_TPC_PIPELINING";
const DEFERRED: &str = "LAMBDA_TPC_DEFERRED_REPLIES";

/// One contender.
#[derive(Debug, Clone, Copy)]
pub struct Contender {
    /// Name used on the command line and in the output.
    pub name: &'static str,
    /// What it is, in a few words.
    pub about: &'static str,
    /// Runs the contender in the child process (never returns while healthy).
    pub run: fn(Work) -> Result<(), BoxError>,
    /// Extra environment variables; `{c}` in a value is replaced by the workload's
    /// concurrency.
    pub env: &'static [(&'static str, &'static str)],
    /// Whether the default run measures it on every workload (otherwise only on the
    /// headline workload and those in `also`; `--full` measures everything everywhere).
    pub everywhere: bool,
    /// Workloads besides the headline one where the default run measures it.
    pub also: &'static [&'static str],
    /// The reference the ratios are computed against.
    pub baseline: bool,
}

/// Every contender, in table order.
pub const CONTENDERS: &[Contender] = &[
    Contender {
        name: "tpc-wps-uring",
        about: "lambda-tpc compio, worker-per-slot, io_uring (the default)",
        run: run_tpc_compio,
        env: &[
            (STRATEGY, "worker-per-slot"),
            (DRIVER, "io_uring"),
            (PIPELINING, "0"),
        ],
        everywhere: true,
        also: &[],
        baseline: false,
    },
    Contender {
        name: "tpc-wps-pipe-uring",
        about: "lambda-tpc compio, worker-per-slot + pipelining, io_uring",
        run: run_tpc_compio,
        env: &[
            (STRATEGY, "worker-per-slot"),
            (DRIVER, "io_uring"),
            (PIPELINING, "1"),
        ],
        everywhere: true,
        also: &[],
        baseline: false,
    },
    Contender {
        name: "tpc-wps-sync-uring",
        about: "lambda-tpc compio, worker-per-slot, post reply read before the next /next (the official sequence), io_uring",
        run: run_tpc_compio,
        env: &[
            (STRATEGY, "worker-per-slot"),
            (DRIVER, "io_uring"),
            (PIPELINING, "0"),
            (DEFERRED, "0"),
        ],
        everywhere: false,
        also: &[],
        baseline: false,
    },
    Contender {
        name: "tpc-wps-offload-uring",
        about: "tpc-wps-uring, the handler's blocking call moved to lambda_tpc::compio::spawn_blocking",
        run: run_tpc_compio_offloading,
        env: &[
            (STRATEGY, "worker-per-slot"),
            (DRIVER, "io_uring"),
            (PIPELINING, "0"),
        ],
        everywhere: false,
        also: &["mixed"],
        baseline: false,
    },
    Contender {
        name: "tpc-wps-glibc-uring",
        about: "tpc-wps-uring with glibc malloc's own thresholds (LAMBDA_TPC_TUNE_MALLOC=0)",
        run: run_tpc_compio,
        env: &[
            (STRATEGY, "worker-per-slot"),
            (DRIVER, "io_uring"),
            (PIPELINING, "0"),
            ("LAMBDA_TPC_TUNE_MALLOC", "0"),
        ],
        everywhere: false,
        also: &["echo-64k"],
        baseline: false,
    },
    Contender {
        name: "tpc-unb-uring",
        about: "lambda-tpc compio, unbounded, io_uring",
        run: run_tpc_compio,
        env: &[
            (STRATEGY, "unbounded"),
            (DRIVER, "io_uring"),
            (PIPELINING, "0"),
        ],
        everywhere: false,
        also: &[],
        baseline: false,
    },
    Contender {
        name: "tpc-sem-uring",
        about: "lambda-tpc compio, semaphore (permits = concurrency), io_uring",
        run: run_tpc_compio,
        env: &[
            (STRATEGY, "semaphore:{c}"),
            (DRIVER, "io_uring"),
            (PIPELINING, "0"),
        ],
        everywhere: false,
        also: &[],
        baseline: false,
    },
    Contender {
        name: "tpc-wps-epoll",
        about: "lambda-tpc compio, worker-per-slot, epoll",
        run: run_tpc_compio,
        env: &[
            (STRATEGY, "worker-per-slot"),
            (DRIVER, "epoll"),
            (PIPELINING, "0"),
        ],
        everywhere: false,
        also: &[],
        baseline: false,
    },
    Contender {
        name: "tpc-wps-pipe-epoll",
        about: "lambda-tpc compio, worker-per-slot + pipelining, epoll",
        run: run_tpc_compio,
        env: &[
            (STRATEGY, "worker-per-slot"),
            (DRIVER, "epoll"),
            (PIPELINING, "1"),
        ],
        everywhere: false,
        also: &[],
        baseline: false,
    },
    Contender {
        name: "tpc-unb-epoll",
        about: "lambda-tpc compio, unbounded, epoll",
        run: run_tpc_compio,
        env: &[
            (STRATEGY, "unbounded"),
            (DRIVER, "epoll"),
            (PIPELINING, "0"),
        ],
        everywhere: false,
        also: &[],
        baseline: false,
    },
    Contender {
        name: "tpc-sem-epoll",
        about: "lambda-tpc compio, semaphore (permits = concurrency), epoll",
        run: run_tpc_compio,
        env: &[
            (STRATEGY, "semaphore:{c}"),
            (DRIVER, "epoll"),
            (PIPELINING, "0"),
        ],
        everywhere: false,
        also: &[],
        baseline: false,
    },
    Contender {
        name: "tpc-tokio-wps",
        about: "lambda-tpc tokio shim (multi-thread, one worker per CPU online), worker-per-slot",
        run: run_tpc_tokio,
        env: &[(STRATEGY, "worker-per-slot")],
        everywhere: false,
        also: &[],
        baseline: false,
    },
    Contender {
        name: "tpc-tokio-unb",
        about: "lambda-tpc tokio shim (multi-thread), unbounded",
        run: run_tpc_tokio,
        env: &[(STRATEGY, "unbounded")],
        everywhere: false,
        also: &[],
        baseline: false,
    },
    Contender {
        name: "tpc-tokio-sem",
        about: "lambda-tpc tokio shim (multi-thread), semaphore (permits = concurrency)",
        run: run_tpc_tokio,
        env: &[(STRATEGY, "semaphore:{c}")],
        everywhere: false,
        also: &[],
        baseline: false,
    },
    Contender {
        name: "tpc-tokio-tpc",
        about: "lambda-tpc thread-per-core on tokio current-thread runtimes, worker-per-slot",
        run: run_tpc_tokio_per_core,
        env: &[(STRATEGY, "worker-per-slot")],
        everywhere: false,
        also: &[],
        baseline: false,
    },
    Contender {
        name: "official-mt",
        about: "lambda_runtime 1.5 run_concurrent, tokio multi-thread, one worker per CPU online (at most 2 per runtime CPU)",
        run: run_official_default,
        env: &[],
        everywhere: true,
        also: &[],
        baseline: true,
    },
    Contender {
        name: "official-1t",
        about: "lambda_runtime 1.5 run_concurrent, tokio multi-thread, 1 worker thread",
        run: run_official_one_worker,
        env: &[],
        everywhere: true,
        also: &[],
        baseline: false,
    },
    Contender {
        name: "blocking",
        about: "reference floor: one OS thread per slot, blocking std TcpStream, raw echo",
        run: crate::blocking::run,
        env: &[],
        everywhere: true,
        also: &[],
        baseline: false,
    },
];

impl Contender {
    /// Whether it insists on io_uring (and so cannot run where io_uring is refused).
    pub fn requires_io_uring(&self) -> bool {
        self.env
            .iter()
            .any(|&(k, v)| k == DRIVER && v == "io_uring")
    }
}

/// Whether this process may set up an io_uring (container seccomp profiles often refuse it).
pub fn io_uring_available() -> bool {
    compio::driver::ProactorBuilder::new()
        .driver_type(compio::driver::DriverType::IoUring)
        .build()
        .is_ok()
}

/// The contender called `name`.
pub fn by_name(name: &str) -> Option<&'static Contender> {
    CONTENDERS.iter().find(|c| c.name == name)
}

/// lambda-tpc on compio, configured from the environment like a deployed function.
fn run_tpc_compio(work: Work) -> Result<(), BoxError> {
    let config = Config::builder().build()?;
    lambda_tpc::compio::run_concurrent_with_config(
        config,
        move |ev: LambdaEvent<Value>| async move {
            Ok::<_, BoxError>(work.handle(ev.payload, compio::time::sleep).await)
        },
    )?;
    Ok(())
}

/// As [`run_tpc_compio`], with the handler's blocking call (the mixed workload's) run on
/// compio's blocking pool: the documented mitigation for handlers that block.
fn run_tpc_compio_offloading(work: Work) -> Result<(), BoxError> {
    let config = Config::builder().build()?;
    lambda_tpc::compio::run_concurrent_with_config(
        config,
        move |ev: LambdaEvent<Value>| async move {
            let block = |d| async move {
                // The sleep cannot panic; a pool failure would only make the echo late.
                let _ = lambda_tpc::compio::spawn_blocking(move || std::thread::sleep(d)).await;
            };
            Ok::<_, BoxError>(
                work.handle_offloading(ev.payload, compio::time::sleep, block)
                    .await,
            )
        },
    )?;
    Ok(())
}

/// The lambda-tpc tokio shim on the same tokio runtime as `official-mt`: one worker per
/// CPU online.
fn run_tpc_tokio(work: Work) -> Result<(), BoxError> {
    let config = Config::builder().build()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cpus_online())
        .enable_all()
        .build()?;
    rt.block_on(lambda_tpc::tokio::run_concurrent_with_config(
        config,
        move |ev: LambdaEvent<Value>| async move {
            Ok::<_, BoxError>(work.handle(ev.payload, tokio::time::sleep).await)
        },
    ))?;
    Ok(())
}

/// lambda-tpc's thread-per-core driver with tokio as the per-core executor.
fn run_tpc_tokio_per_core(work: Work) -> Result<(), BoxError> {
    let config = Config::builder().build()?;
    lambda_tpc::run_concurrent_with_executor(
        config,
        move |ev: LambdaEvent<Value>| async move {
            Ok::<_, BoxError>(work.handle(ev.payload, tokio::time::sleep).await)
        },
        lambda_tpc::tokio::TokioExecutor,
    )?;
    Ok(())
}

/// The official runtime on the tokio runtime `#[tokio::main]` builds on an instance: one
/// worker thread per CPU online (2 on the 2-vCPU machines here), but at most two per CPU the
/// child is pinned to. (Tokio's own default follows the affinity mask and would say 1; on a
/// large machine, all its workers squeezed onto the runtime CPU would measure the crowding,
/// not the runtime.)
fn run_official_default(work: Work) -> Result<(), BoxError> {
    let pinned = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    run_official(work, cpus_online().min(2 * pinned))
}

/// CPUs online (not the affinity mask's size).
fn cpus_online() -> usize {
    // SAFETY: sysconf has no preconditions.
    let online = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    usize::try_from(online).unwrap_or(1).max(1)
}

/// The official runtime on a one-worker multi-thread tokio runtime (it is pinned to one core).
fn run_official_one_worker(work: Work) -> Result<(), BoxError> {
    run_official(work, 1)
}

fn run_official(work: Work, workers: usize) -> Result<(), BoxError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()?;
    rt.block_on(lambda_runtime::run_concurrent(lambda_runtime::service_fn(
        move |ev: lambda_runtime::LambdaEvent<Value>| async move {
            Ok::<_, lambda_runtime::Error>(work.handle(ev.payload, tokio::time::sleep).await)
        },
    )))
}
