//! `Stream::set_read_low_water` on the streams this crate provides sets the socket's real
//! receive low-water mark: a read that finds nothing buffered waits until that many bytes
//! are in, across segments, on every driver. (The runtime's use of it is checked in the
//! connection's unit tests and, end to end, by the pipelining cases of the fault tests.)

use std::io::Write;
use std::net::TcpListener;
use std::time::Duration;

use lambda_tpc::compio::CompioExecutor;
use lambda_tpc::{Driver, Executor, Stream, UringFlags};

/// A peer that, once the reader is about to read, sends 5 bytes, waits, and sends 5
/// more; the reader reads once with the mark at `mark` and gets what that one read
/// returned. (The mark decides when a waiting read completes; a read that finds bytes
/// already there returns them whatever the mark, hence the peer's first pause.)
fn one_read<E: Executor>(exec: &E, mark: usize) -> std::io::Result<usize> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let (reading, about_to_read) = std::sync::mpsc::channel::<()>();
    let peer = std::thread::spawn(move || -> std::io::Result<()> {
        let (mut socket, _) = listener.accept()?;
        socket.set_nodelay(true)?;
        about_to_read
            .recv()
            .map_err(|_| std::io::Error::other("the reader gave up"))?;
        std::thread::sleep(Duration::from_millis(100));
        socket.write_all(b"12345")?;
        // Long enough that a read not held back by the mark returns the first five.
        std::thread::sleep(Duration::from_millis(200));
        socket.write_all(b"67890")?;
        std::thread::sleep(Duration::from_millis(100));
        Ok(())
    });
    let n = exec.block_on(async {
        let mut stream = exec.connect(addr).await?;
        stream.set_read_low_water(mark)?;
        let _ = reading.send(());
        let (res, _buf) = stream.read(Vec::with_capacity(64)).await;
        res
    })??;
    peer.join()
        .map_err(|_| std::io::Error::other("peer panicked"))??;
    Ok(n)
}

fn check<E: Executor>(exec: E, what: &str) {
    assert_eq!(one_read(&exec, 10).ok(), Some(10), "{what}: mark 10");
    assert_eq!(one_read(&exec, 1).ok(), Some(5), "{what}: mark 1");
}

#[test]
fn the_mark_holds_a_read_back_until_that_many_bytes_are_in() {
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
