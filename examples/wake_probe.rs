//! What one wake-up costs on this machine, with no runtime at all: the floor under
//! the paced workload of `cargo bench --bench percore`.
//!
//! A pacer thread pinned to CPU 1 sends a small request at a fixed rate to a
//! responder thread pinned to CPU 0, which blocks in `read`, sends the same bytes
//! back and blocks again: one wake-up, one receive and one send per request, which
//! is less than any Lambda runtime can do per invocation (it receives the event,
//! posts the result and sends the next `/next`). The responder's own CPU time
//! (`getrusage(RUSAGE_THREAD)`) per request is printed: user and system time
//! together, because the kernel splits the two by sampling at timer ticks, which
//! says little when the thread runs for microseconds at a time.
//!
//! ```text
//! cargo run --release --example wake_probe -- [--rate 5000] [--requests 20000] [--bytes 100] [--tcp]
//! ```
//!
//! `--rate 0` runs a closed loop (the pacer sends the next request as soon as the
//! reply is in). Why it matters: at 5,000 invocations a second every invocation finds
//! the runtime's thread asleep, and on a VM that halts an idle vCPU the wake-up
//! itself (cold caches after the halt, the scheduler's switch) can cost more CPU than
//! the invocation's own work. Whatever this probe prints is paid by every runtime
//! once per wake-up, so it bounds from below how small a ratio between two runtimes
//! can get at that rate.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// The probe's settings, from the command line.
struct Args {
    rate: u64,
    requests: u64,
    bytes: usize,
    tcp: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        rate: 5000,
        requests: 20_000,
        bytes: 100,
        tcp: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = |name: &str| -> Result<u64, String> {
            let v = it.next().ok_or(format!("{name} needs a value"))?;
            v.parse::<u64>().map_err(|e| format!("{name} {v:?}: {e}"))
        };
        match flag.as_str() {
            "--rate" => args.rate = value("--rate")?,
            "--requests" => args.requests = value("--requests")?.max(1),
            "--bytes" => {
                args.bytes = usize::try_from(value("--bytes")?.clamp(1, 65_536))
                    .map_err(|e| e.to_string())?
            }
            "--tcp" => args.tcp = true,
            "--help" | "-h" => {
                return Err(
                    "usage: wake_probe [--rate N (0 = closed loop)] [--requests N] [--bytes N] [--tcp]"
                        .into(),
                );
            }
            other => return Err(format!("unknown argument {other:?} (try --help)")),
        }
    }
    Ok(args)
}

/// A connected pair of byte streams: Unix sockets, or TCP over loopback.
fn pair(tcp: bool) -> std::io::Result<(Box<dyn Stream>, Box<dyn Stream>)> {
    if tcp {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let client = TcpStream::connect(listener.local_addr()?)?;
        let (server, _) = listener.accept()?;
        client.set_nodelay(true)?;
        server.set_nodelay(true)?;
        Ok((Box::new(client), Box::new(server)))
    } else {
        let (a, b) = UnixStream::pair()?;
        Ok((Box::new(a), Box::new(b)))
    }
}

/// A blocking byte stream the probe can move to another thread.
trait Stream: Read + Write + Send {}
impl<T: Read + Write + Send> Stream for T {}

/// CPU time of the calling thread: (user, system, voluntary context switches).
fn thread_usage() -> (Duration, Duration, i64) {
    // SAFETY: getrusage writes a `rusage` into the zeroed value we own; a zeroed
    // `rusage` is a valid value of that plain C struct.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is a valid, writable `rusage` for the duration of the call.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) };
    if rc != 0 {
        return (Duration::ZERO, Duration::ZERO, 0);
    }
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec.max(0) as u64) + Duration::from_micros(t.tv_usec.max(0) as u64)
    };
    (tv(ru.ru_utime), tv(ru.ru_stime), ru.ru_nvcsw)
}

fn pin(core: usize) {
    let ids = core_affinity::get_core_ids().unwrap_or_default();
    match ids.into_iter().find(|c| c.id == core) {
        Some(id) => {
            if !core_affinity::set_for_current(id) {
                eprintln!("could not pin to CPU {core}; figures are less telling");
            }
        }
        None => eprintln!("no CPU {core} here; figures are less telling"),
    }
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let (mut pacer_end, mut responder_end) = match pair(args.tcp) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("could not connect the probe's sockets: {e}");
            return ExitCode::FAILURE;
        }
    };
    let (n, bytes) = (args.requests, args.bytes);
    let responder = std::thread::spawn(move || -> std::io::Result<_> {
        pin(0);
        let mut buf = vec![0u8; bytes];
        let before = thread_usage();
        for _ in 0..n {
            responder_end.read_exact(&mut buf)?;
            responder_end.write_all(&buf)?;
        }
        let after = thread_usage();
        Ok((after.0 - before.0, after.1 - before.1, after.2 - before.2))
    });
    pin(1);
    let request = vec![b'x'; bytes];
    let mut reply = vec![0u8; bytes];
    let gap = (args.rate > 0).then(|| Duration::from_nanos(1_000_000_000 / args.rate));
    let start = Instant::now();
    let mut next = start;
    for _ in 0..n {
        if let Err(e) = pacer_end
            .write_all(&request)
            .and_then(|()| pacer_end.read_exact(&mut reply))
        {
            eprintln!("the probe's pacer failed: {e}");
            return ExitCode::FAILURE;
        }
        if let Some(gap) = gap {
            next += gap;
            let now = Instant::now();
            if next > now {
                std::thread::sleep(next - now);
            }
        }
    }
    let elapsed = start.elapsed();
    let (user, sys, vcsw) = match responder.join() {
        Ok(Ok(u)) => u,
        Ok(Err(e)) => {
            eprintln!("the probe's responder failed: {e}");
            return ExitCode::FAILURE;
        }
        Err(_) => {
            eprintln!("the probe's responder panicked");
            return ExitCode::FAILURE;
        }
    };
    let per = |d: Duration| d.as_secs_f64() * 1e6 / n as f64;
    println!(
        "{} requests of {} B over {} at {} ({:.0}/s achieved): responder CPU {:.1} µs per request, {:.2} voluntary switches per request",
        n,
        bytes,
        if args.tcp {
            "TCP loopback"
        } else {
            "a Unix socket"
        },
        if args.rate == 0 {
            "closed loop".to_string()
        } else {
            format!("{}/s", args.rate)
        },
        n as f64 / elapsed.as_secs_f64(),
        per(user + sys),
        vcsw as f64 / n as f64,
    );
    ExitCode::SUCCESS
}
