//! The process's open-file limit, and what it allows the HTTP server.
//!
//! Why here: every client connection is a file descriptor, and so is every log segment,
//! sled file and outbound connection. A flood of clients that used them all would make the
//! store fail (a log segment it cannot open), so the server keeps below the limit. This
//! module must not know about requests.

/// Descriptors kept for everything but client connections (store, outbound, listener).
const RESERVED: u64 = 256;

/// The number of client connections to allow: `wanted`, after raising the soft open-file
/// limit to the hard one, and lowered (with a warning) when even that leaves too few
/// descriptors for `wanted` plus [`RESERVED`].
pub fn connection_cap(wanted: usize) -> usize {
    let want = wanted as u64 + RESERVED;
    // As high as allowed (outbound connections, sled and the log need descriptors too, more
    // with more webhooks); the new soft limit, `u64::MAX` where there is none.
    let limit = match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => limit,
        Err(e) => {
            tracing::warn!(error = %e, "could not read or raise the open-file limit");
            return wanted;
        }
    };
    if limit >= want {
        return wanted;
    }
    let cap = limit.saturating_sub(RESERVED).max(16) as usize;
    tracing::warn!(
        max_connections = wanted,
        open_file_limit = limit,
        allowed = cap,
        "the open-file limit (ulimit -n) is too low for server.max_connections; raise it, or fewer connections are served at once"
    );
    cap
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cap_the_limit_allows_is_kept_and_the_limit_raised_for_it() {
        assert_eq!(connection_cap(8), 8);
        let (soft, _) = rlimit::Resource::NOFILE.get().unwrap();
        assert!(soft >= 8 + RESERVED, "raised or already enough: {soft}");
    }
}
