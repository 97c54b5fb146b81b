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
//!
//! Run a handler on a specific executor with
//! [`run_concurrent_with_executor`](crate::run_concurrent_with_executor).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

/// A single-threaded async runtime the thread-per-core driver can run on each core.
///
/// The value is cloned once per core and [`block_on`](Self::block_on) is called on each
/// core's thread; the other methods act on that thread's runtime.
///
/// Outside the runtime, an executor is also a convenient way to run a future to
/// completion, e.g. a handler in a unit test, or these methods themselves:
///
/// ```
/// use std::io::{Read, Write};
/// use std::time::Duration;
/// use lambda_tpc::compio::CompioExecutor;
/// use lambda_tpc::{Executor, Stream};
///
/// // A peer that answers one line.
/// let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
/// let addr = listener.local_addr()?;
/// let peer = std::thread::spawn(move || -> std::io::Result<()> {
///     let (mut socket, _) = listener.accept()?;
///     let mut line = [0; 5];
///     socket.read_exact(&mut line)?;
///     socket.write_all(b"pong\n")
/// });
///
/// let exec = CompioExecutor::default();
/// let reply = exec.block_on(async {
///     exec.sleep(Duration::from_millis(1)).await;
///     let mut stream = exec.connect(addr).await?;
///     // Owned buffers: each call takes the buffer and gives it back.
///     let (res, _buf) = stream.write_all(b"ping\n".to_vec()).await;
///     res?;
///     let mut buf = Vec::with_capacity(64); // read into spare capacity
///     loop {
///         let (res, b) = stream.read(buf).await;
///         buf = b;
///         if res? == 0 || buf.ends_with(b"\n") {
///             return Ok::<_, std::io::Error>(buf);
///         }
///     }
/// })??;
/// assert_eq!(reply, b"pong\n");
/// peer.join().unwrap()?;
/// # Ok::<(), std::io::Error>(())
/// ```
pub trait Executor: Clone + Send + 'static {
    /// A connected TCP stream.
    type Stream: Stream;

    /// Creates this thread's runtime and runs `future` on it to completion. Called once
    /// per core, on the core's (already pinned) thread. The other methods are only called
    /// from inside `future`.
    ///
    /// # Errors
    ///
    /// The error of creating the runtime (e.g. io_uring refused where it was required).
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

/// A byte stream with owned-buffer I/O: the [`Executor::Stream`] of a connection to the
/// Runtime API. See [`Executor`] for an example.
///
/// Buffers are passed by value and handed back with the result, because a
/// completion-based driver (io_uring) owns the buffer until the kernel is done with it.
pub trait Stream: 'static {
    /// Reads into the spare capacity of `buf` (after `buf.len()`), extending its length
    /// by the number of bytes read; returns 0 at end of stream. The buffer is returned
    /// in every case.
    ///
    /// The caller reserves the capacity: the compio stream reads at most
    /// `buf.capacity() - buf.len()` bytes, so a full buffer reads 0, which looks like the
    /// end of the stream.
    fn read(&mut self, buf: Vec<u8>) -> impl Future<Output = (io::Result<usize>, Vec<u8>)>;

    /// Writes all of `buf`; the buffer is returned in every case.
    fn write_all(&mut self, buf: Vec<u8>) -> impl Future<Output = (io::Result<()>, Vec<u8>)>;

    /// Sets how many bytes must have arrived before a read that finds nothing buffered
    /// completes (the socket's receive low-water mark, `SO_RCVLOWAT`; an end of stream or
    /// an error completes it whatever the mark). The runtime raises it past the length of
    /// a pipelined post's reply, so that a slot asleep waiting for its next invocation is
    /// not woken by that reply alone, and sets it back to 1 for every other read.
    ///
    /// The default does nothing, which is always correct: the reply then costs a wake-up.
    ///
    /// # Errors
    ///
    /// The error of the socket option, if any.
    fn set_read_low_water(&mut self, bytes: usize) -> io::Result<()> {
        let _ = bytes;
        Ok(())
    }

    /// Reads what has already arrived into the spare capacity of `buf` (as
    /// [`Stream::read`] does), without waiting and without going through the driver: for
    /// a reply the runtime expects to be there already. `None` if nothing is there yet
    /// (or the stream cannot tell), and the caller then reads as usual.
    fn try_read_now(&mut self, buf: &mut Vec<u8>) -> Option<io::Result<usize>> {
        let _ = buf;
        None
    }

    /// The stream's own TCP socket, which the runtime queries (`TCP_INFO`) while a send or
    /// a read on the stream is in flight: how much of a long post the peer has taken tells
    /// an API reading slowly from one that stopped. It is only used while the stream is
    /// borrowed by that operation, so it stays open meanwhile. Return nothing else: the
    /// count of another socket would make a stopped API look like a slow one.
    ///
    /// The default, `None`, is always correct: a long post's send and the wait for its
    /// reply are then bounded as a whole by the unreachable timeout.
    fn tcp_socket(&self) -> Option<std::os::fd::RawFd> {
        None
    }
}

/// Reads what is already queued on a socket into the spare capacity of `buf`, without
/// waiting: the [`Stream::try_read_now`] of the TCP streams this crate provides.
pub(crate) fn recv_now(fd: std::os::fd::RawFd, buf: &mut Vec<u8>) -> Option<io::Result<usize>> {
    let spare = buf.spare_capacity_mut();
    if spare.is_empty() {
        return None;
    }
    // SAFETY: `fd` is the descriptor of a live stream the caller borrows for the call;
    // the kernel writes at most `spare.len()` bytes into the spare capacity it points to.
    let n = unsafe {
        libc::recv(
            fd,
            spare.as_mut_ptr().cast(),
            spare.len(),
            libc::MSG_DONTWAIT,
        )
    };
    match usize::try_from(n) {
        Ok(n) => {
            // SAFETY: the kernel initialised the first `n` bytes of the spare capacity.
            unsafe { buf.set_len(buf.len() + n) };
            Some(Ok(n))
        }
        Err(_) => {
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => None,
                _ => Some(Err(e)),
            }
        }
    }
}

/// How far the peer of TCP socket `fd` has got with what was written to it, from
/// `TCP_INFO`: the bytes it acknowledged (`tcpi_bytes_acked`; once its receive buffer is
/// full its kernel takes more only as it reads) and the receive window it last advertised
/// (`tcpi_snd_wnd`, 0 where the kernel is older than 6.2; it grows as the peer reads what
/// was already acknowledged). Either growing means the peer is reading. `None` if the
/// socket cannot say.
pub(crate) fn tcp_progress(fd: std::os::fd::RawFd) -> Option<(u64, u32)> {
    // SAFETY: `tcp_info` is plain data, for which all zeroes is a valid value.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: `info` and `len` outlive the call, and `len` is `info`'s size: the kernel
    // writes at most that much, whatever `fd` is. The caller passes the socket of a stream
    // kept alive (borrowed by an operation in flight), so it is that stream's; a stale
    // descriptor could only give a wrong count, never touch memory.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&raw mut info).cast(),
            &raw mut len,
        )
    };
    let filled = |end: usize| rc == 0 && len as usize >= end;
    // A kernel older than the field (4.2) fills less; then progress is unknown.
    if !filled(std::mem::offset_of!(libc::tcp_info, tcpi_bytes_acked) + 8) {
        return None;
    }
    let window = if filled(std::mem::offset_of!(libc::tcp_info, tcpi_snd_wnd) + 4) {
        info.tcpi_snd_wnd
    } else {
        0
    };
    Some((info.tcpi_bytes_acked, window))
}

/// Sets `SO_RCVLOWAT` on a socket: the [`Stream::set_read_low_water`] of the TCP streams
/// this crate provides.
pub(crate) fn set_rcvlowat(fd: std::os::fd::RawFd, bytes: usize) -> io::Result<()> {
    let value = libc::c_int::try_from(bytes.max(1)).unwrap_or(libc::c_int::MAX);
    // SAFETY: `value` outlives the call and its size is passed with it. `fd` is the
    // descriptor of a live stream the caller borrows for the call, so it is open and is
    // that stream's socket (not a reused number).
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVLOWAT,
            (&raw const value).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
