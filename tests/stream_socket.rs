//! The socket-level methods of the streams this crate provides, on every driver:
//!
//! * `Stream::set_read_low_water` sets the socket's real receive low-water mark: with 5
//!   bytes queued, the socket is not readable at mark 10 (a waiting read would go on
//!   waiting) and is at mark 1;
//! * `Stream::try_read_now` takes what is queued without waiting, says `None` when
//!   nothing is, and reports an end of stream as 0.
//!
//! (The runtime's use of them is checked in the connection's unit tests and, end to end,
//! by the runtime, fault and reliability tests.)

use std::io::Write;
use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use lambda_tpc::compio::CompioExecutor;
use lambda_tpc::{Driver, Executor, Stream, UringFlags};

/// Bytes queued for reading on `fd` (`FIONREAD`).
fn queued(fd: i32) -> usize {
    let mut n: libc::c_int = 0;
    // SAFETY: `fd` is a live socket owned by the caller's stream; FIONREAD writes one
    // c_int into `n`, which outlives the call.
    let rc = unsafe { libc::ioctl(fd, libc::FIONREAD, &raw mut n) };
    assert_eq!(rc, 0, "FIONREAD: {}", std::io::Error::last_os_error());
    usize::try_from(n).unwrap_or(0)
}

/// Whether `fd` polls readable right now (`poll` applies the low-water mark, as the
/// drivers' waits do).
fn readable(fd: i32) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid `pollfd`, owned here, for the duration of the call.
    let rc = unsafe { libc::poll(&raw mut p, 1, 0) };
    assert!(rc >= 0, "poll: {}", std::io::Error::last_os_error());
    p.revents & libc::POLLIN != 0
}

fn check<E: Executor>(exec: E, what: &str)
where
    E::Stream: AsRawFd,
{
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("address");
    let peer = std::thread::spawn(move || -> std::io::Result<()> {
        let (mut socket, _) = listener.accept()?;
        socket.set_nodelay(true)?;
        socket.write_all(b"12345")?;
        // Held open until the reader is done.
        let mut rest = [0u8; 1];
        let _ = std::io::Read::read(&mut socket, &mut rest);
        Ok(())
    });
    exec.block_on(async {
        let mut stream = exec.connect(addr).await.expect("connect");
        let fd = stream.as_raw_fd();
        let start = Instant::now();
        while queued(fd) < 5 {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "{what}: no bytes came"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        stream.set_read_low_water(10).expect("raise");
        assert!(!readable(fd), "{what}: 5 bytes queued, mark 10: readable");
        stream.set_read_low_water(1).expect("lower");
        assert!(readable(fd), "{what}: 5 bytes queued, mark 1: not readable");
        let mut buf = Vec::with_capacity(64);
        let direct = stream.try_read_now(&mut buf);
        assert_eq!(direct.map(|r| r.ok()), Some(Some(5)), "{what}");
        assert_eq!(buf, b"12345", "{what}");
        assert!(
            stream.try_read_now(&mut buf).is_none(),
            "{what}: nothing queued"
        );
        let (res, _) = stream.write_all(b"x".to_vec()).await;
        assert!(res.is_ok(), "{what}: {res:?}");
        // The peer closes once it has the byte.
        let start = Instant::now();
        let eof = loop {
            if let Some(r) = stream.try_read_now(&mut buf) {
                break r.ok();
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "{what}: no close came"
            );
            std::thread::sleep(Duration::from_millis(1));
        };
        assert_eq!(eof, Some(0), "{what}: end of stream");
    })
    .expect("the runtime starts");
    peer.join().expect("peer").expect("peer I/O");
}

#[test]
fn low_water_mark_and_direct_reads_act_on_the_socket() {
    check(
        CompioExecutor::new(Driver::Auto, UringFlags::default()),
        "compio, io_uring (or its fallback)",
    );
    check(
        CompioExecutor::new(Driver::Epoll, UringFlags::NONE),
        "compio, epoll",
    );
    check(lambda_tpc::tokio::TokioExecutor, "tokio");
}
