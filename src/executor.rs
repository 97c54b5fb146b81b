//! What the strategies need from an async runtime.
//!
//! The strategies ([`Strategy`](crate::Strategy)) are written once, against this trait;
//! the thread-per-core driver runs one instance of the executor on each core. Because each
//! instance lives on one thread, futures and tasks need not be `Send`, and I/O uses owned
//! buffers (the completion-based model of io_uring: the kernel owns the buffer while the
//! operation runs). Implementations: [`crate::compio::CompioExecutor`] (the default) and,
//! with feature `tokio`, a current-thread tokio executor.
//!
//! Generic code is monomorphised per executor, so the abstraction costs nothing at run
//! time on the compio path.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

/// A single-threaded async runtime the thread-per-core driver can run on each core.
pub trait Executor: Clone + Send + 'static {
    /// A connected TCP stream.
    type Stream: Stream;

    /// Creates this thread's runtime and runs `future` on it to completion. Called once
    /// per core, on the core's (already pinned) thread. The other methods are only called
    /// from inside `future`.
    fn block_on<F: Future>(&self, future: F) -> io::Result<F::Output>;

    /// Name of the I/O driver in use on the current thread (e.g. `io_uring`, `epoll`),
    /// for logs and reports.
    fn driver_name(&self) -> &'static str;

    /// Spawns a task on the current thread's runtime; it runs until it completes (it is
    /// not cancelled when nobody waits for it).
    fn spawn<F: Future<Output = ()> + 'static>(&self, future: F);

    /// Opens a TCP connection (with `TCP_NODELAY` set: requests are small and
    /// latency-bound).
    fn connect(&self, addr: SocketAddr) -> impl Future<Output = io::Result<Self::Stream>>;

    /// Sleeps for `duration`.
    fn sleep(&self, duration: Duration) -> impl Future<Output = ()>;
}

/// A byte stream with owned-buffer I/O.
pub trait Stream: 'static {
    /// Reads into the spare capacity of `buf` (after `buf.len()`), extending its length
    /// by the number of bytes read; returns 0 at end of stream. The buffer is returned
    /// in every case.
    fn read(&mut self, buf: Vec<u8>) -> impl Future<Output = (io::Result<usize>, Vec<u8>)>;

    /// Writes all of `buf`; the buffer is returned in every case.
    fn write_all(&mut self, buf: Vec<u8>) -> impl Future<Output = (io::Result<()>, Vec<u8>)>;
}
