//! Where the Runtime API lives: parsed from `AWS_LAMBDA_RUNTIME_API`.

use std::net::{SocketAddr, ToSocketAddrs};

/// The Runtime API endpoint: `host:port`, plus an optional path prefix.
///
/// Lambda sets `AWS_LAMBDA_RUNTIME_API` to `host:port` (e.g. `127.0.0.1:9001`); some local
/// emulators hand out `http://host:port/prefix`, which is accepted too. The prefix is put
/// in front of every Runtime API path. `Display` shows `host:port/prefix`.
///
/// ```
/// use lambda_tpc::api::RuntimeApi;
///
/// let api = RuntimeApi::parse("http://[::1]:9001/emulator")?;
/// assert_eq!(api.to_string(), "[::1]:9001/emulator");
/// # Ok::<(), String>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeApi {
    authority: String,
    prefix: String,
}

impl RuntimeApi {
    /// Parses `host:port`, `http://host:port` or `http://host:port/prefix`
    /// (surrounding whitespace ignored; the host may be a name, an IPv4 address or a
    /// bracketed IPv6 address).
    ///
    /// # Errors
    ///
    /// A message saying what is wrong: no port, a port outside 1-65535, a scheme other
    /// than `http`, or a prefix with characters or dot segments a path may not carry.
    ///
    /// ```
    /// use lambda_tpc::api::RuntimeApi;
    /// let api = RuntimeApi::parse("http://localhost:9001/emulator/")?;
    /// assert_eq!(api.authority(), "localhost:9001");
    /// assert_eq!(api.prefix(), "/emulator");
    /// assert!(RuntimeApi::parse("localhost").is_err());
    /// # Ok::<(), String>(())
    /// ```
    pub fn parse(value: &str) -> Result<RuntimeApi, String> {
        let v = value.trim();
        let rest = if let Some(r) = strip_prefix_ci(v, "http://") {
            r
        } else if strip_prefix_ci(v, "https://").is_some() {
            return Err("https is not supported (the Runtime API is plain HTTP)".into());
        } else if v.contains("://") {
            return Err("only an http:// scheme is supported".into());
        } else {
            v
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if authority.is_empty() {
            return Err(format!("{value:?}: expected host:port"));
        }
        validate_authority(authority)?;
        let prefix = path.trim_end_matches('/');
        if !prefix
            .bytes()
            .all(|b| (0x21..0x7f).contains(&b) && b != b'?' && b != b'#' && b != b'%')
        {
            return Err(format!(
                "path prefix {prefix:?} has characters not allowed in a path"
            ));
        }
        if prefix.split('/').any(|seg| seg == "." || seg == "..") {
            return Err(format!("path prefix {prefix:?} contains a dot segment"));
        }
        Ok(RuntimeApi {
            authority: authority.to_owned(),
            prefix: prefix.to_owned(),
        })
    }

    /// `host:port`, as sent in the `Host` header.
    pub fn authority(&self) -> &str {
        &self.authority
    }

    /// The path prefix (empty, or starting with `/` and without a trailing `/`).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Resolves the host to a socket address (blocking; done once at start-up). When the
    /// resolver returns several (`localhost` may give `::1` before `127.0.0.1`, while a
    /// local emulator listens on one of them only), the first that accepts a connection
    /// is used, all of them tried within [`RESOLVE_PROBE_TIMEOUT`] in all, or else the
    /// first (and the runtime's retries take it from there). A single address, as
    /// Lambda's `127.0.0.1:9001`, is used as is, without a probe.
    ///
    /// # Errors
    ///
    /// The resolver's error, or [`std::io::ErrorKind::NotFound`] if it returned no
    /// address.
    ///
    /// ```
    /// use lambda_tpc::api::RuntimeApi;
    ///
    /// let api = RuntimeApi::parse("127.0.0.1:9001").unwrap();
    /// assert_eq!(api.resolve()?, "127.0.0.1:9001".parse().unwrap());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn resolve(&self) -> std::io::Result<SocketAddr> {
        // The resolver's message does not say what it was asked to resolve.
        let mut addrs = self
            .authority
            .to_socket_addrs()
            .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", self.authority)))?;
        let first = addrs.next().ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("{} resolved to no address", self.authority),
            )
        })?;
        let rest: Vec<SocketAddr> = addrs.collect();
        if rest.is_empty() {
            return Ok(first);
        }
        Ok(first_reachable(first, &rest))
    }
}

/// How long [`RuntimeApi::resolve`] waits in all for one of several addresses to accept a
/// connection (it blocks start-up meanwhile). The Runtime API is local: one that listens
/// answers within microseconds, and one that does not listen refuses at once.
pub const RESOLVE_PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(500);

/// The first of `first` and `rest` that accepts a TCP connection (closed at once, no
/// request sent), or `first` if none does within [`RESOLVE_PROBE_TIMEOUT`] in all.
fn first_reachable(first: SocketAddr, rest: &[SocketAddr]) -> SocketAddr {
    let deadline = std::time::Instant::now() + RESOLVE_PROBE_TIMEOUT;
    std::iter::once(&first)
        .chain(rest)
        .find(|addr| {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            !left.is_zero() && std::net::TcpStream::connect_timeout(addr, left).is_ok()
        })
        .copied()
        .unwrap_or(first)
}

impl std::fmt::Display for RuntimeApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}{}", self.authority, self.prefix)
    }
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    if s.len() >= prefix.len()
        && s.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
    {
        Some(&s[prefix.len()..])
    } else {
        None
    }
}

fn validate_authority(authority: &str) -> Result<(), String> {
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let Some(end) = rest.find(']') else {
            return Err(format!("{authority:?}: unterminated IPv6 address"));
        };
        let host = &rest[..end];
        if host.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!("{authority:?}: invalid IPv6 address"));
        }
        match rest[end + 1..].strip_prefix(':') {
            Some(port) => (host, port),
            None => return Err(format!("{authority:?}: expected [ipv6]:port")),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, port),
            None => return Err(format!("{authority:?}: expected host:port")),
        }
    };
    if host.is_empty() {
        return Err(format!("{authority:?}: empty host"));
    }
    if !authority.starts_with('[')
        && !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_')
    {
        return Err(format!("{authority:?}: invalid host name"));
    }
    match port.parse::<u16>() {
        Ok(p) if p != 0 && port.bytes().all(|b| b.is_ascii_digit()) => Ok(()),
        _ => Err(format!("{authority:?}: port must be 1-65535")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Of several addresses, the first that accepts a connection is taken (an emulator
    /// listening on one of `localhost`'s addresses only); if none does, the first.
    #[test]
    fn the_first_reachable_address_is_taken() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let live = listener.local_addr().unwrap();
        // Port 0 cannot be connected to: refused at once, and no other test can take it.
        let dead: SocketAddr = "127.0.0.1:0".parse().unwrap();
        assert_eq!(first_reachable(dead, &[live]), live);
        assert_eq!(first_reachable(live, &[dead]), live);
        assert_eq!(first_reachable(dead, &[dead]), dead);
    }

    #[test]
    fn table() {
        let cases: &[(&str, Option<(&str, &str)>)] = &[
            ("127.0.0.1:9001", Some(("127.0.0.1:9001", ""))),
            ("  localhost:9001\n", Some(("localhost:9001", ""))),
            ("http://127.0.0.1:9001", Some(("127.0.0.1:9001", ""))),
            ("HTTP://127.0.0.1:9001/", Some(("127.0.0.1:9001", ""))),
            ("http://h:1/a/b/", Some(("h:1", "/a/b"))),
            ("[::1]:9001", Some(("[::1]:9001", ""))),
            ("http://[::1]:80/p", Some(("[::1]:80", "/p"))),
            ("", None),
            ("localhost", None),
            ("localhost:", None),
            ("localhost:0", None),
            ("localhost:65536", None),
            ("localhost:+80", None),
            (":9001", None),
            ("https://h:1", None),
            ("ftp://h:1", None),
            ("h:1/a b", None),
            ("h:1/a?x", None),
            ("h:1/../x", None),
            ("ho st:1", None),
            ("[::1:9001", None),
            ("[zz]:1", None),
            ("h\r\nX:1", None),
        ];
        for (input, expected) in cases {
            let got = RuntimeApi::parse(input);
            match expected {
                Some((authority, prefix)) => {
                    let api = got.unwrap_or_else(|e| panic!("{input:?}: {e}"));
                    assert_eq!(api.authority(), *authority, "{input:?}");
                    assert_eq!(api.prefix(), *prefix, "{input:?}");
                }
                None => assert!(got.is_err(), "{input:?} should be refused"),
            }
        }
    }

    /// A refusal quotes what was given, not what was left of it after the scheme.
    #[test]
    fn refusals_quote_the_input() {
        let e = RuntimeApi::parse("http://").unwrap_err();
        assert!(e.contains("\"http://\""), "{e}");
    }

    #[test]
    fn resolves_loopback() {
        let api = RuntimeApi::parse("127.0.0.1:9001").unwrap();
        assert_eq!(api.resolve().unwrap(), "127.0.0.1:9001".parse().unwrap());
    }

    /// The resolver's own message does not name the host (found by a review).
    #[test]
    fn resolve_errors_name_the_host() {
        let api = RuntimeApi::parse("no-such-host.invalid:9001").unwrap();
        let e = api.resolve().unwrap_err();
        assert!(
            e.to_string().starts_with("no-such-host.invalid:9001: "),
            "{e}"
        );
    }
}
