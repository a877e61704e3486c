//! The peer socket's kernel buffers. Replication is one UDP socket per broker carrying every
//! replica fetch: at the default receive buffer (`net.core.rmem_default`, 208 KiB here) a
//! runtime worker busy for 2 ms at 100 MB/s overflows it, and every datagram dropped there
//! is a QUIC loss that stalls its stream until it is detected and sent again (the RF 3 ack
//! latency benchmark lost 2 430 datagrams in 30 s at 50 MB/s, `UdpRcvbufErrors`). Like
//! quic-go and Redpanda's advice, the buffers are raised at start; the kernel caps a plain
//! request at `net.core.rmem_max`/`wmem_max`, which a privileged process may exceed.

use std::os::fd::AsRawFd;

/// The size asked for each direction (the kernel doubles it for its bookkeeping).
pub const WANTED_BYTES: usize = 8 << 20;

/// Raises `socket`'s receive and send buffers towards [`WANTED_BYTES`] and says what it got.
pub fn raise(socket: &std::net::UdpSocket) {
    let receive = raise_one(socket, libc::SO_RCVBUF, libc::SO_RCVBUFFORCE);
    let send = raise_one(socket, libc::SO_SNDBUF, libc::SO_SNDBUFFORCE);
    match (receive, send) {
        (Ok(r), Ok(s)) if r >= WANTED_BYTES && s >= WANTED_BYTES => {
            tracing::debug!(receive = r, send = s, "peer socket buffers");
        }
        (Ok(r), Ok(s)) => tracing::warn!(
            receive = r,
            send = s,
            wanted = WANTED_BYTES,
            "peer socket buffers are small: replication may lose datagrams under load \
             (raise net.core.rmem_max and net.core.wmem_max)"
        ),
        (r, s) => tracing::warn!(?r, ?s, "peer socket buffers could not be read or set"),
    }
}

/// One direction: the plain option first, the privileged one if the kernel capped it.
fn raise_one(
    socket: &std::net::UdpSocket,
    plain: libc::c_int,
    forced: libc::c_int,
) -> std::io::Result<usize> {
    let fd = socket.as_raw_fd();
    if set(fd, plain, WANTED_BYTES).is_ok() && get(fd, plain)? >= WANTED_BYTES {
        return get(fd, plain);
    }
    // Refused without CAP_NET_ADMIN: the plain request's capped size stays.
    let _ = set(fd, forced, WANTED_BYTES);
    get(fd, plain)
}

fn set(fd: libc::c_int, option: libc::c_int, bytes: usize) -> std::io::Result<()> {
    let value = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    // SAFETY: `fd` is an open socket for the duration of the call, and the option value is a
    // c_int whose size is passed.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            option,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The buffer's size as the kernel reports it (twice what was asked, bookkeeping included).
fn get(fd: libc::c_int, option: libc::c_int) -> std::io::Result<usize> {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `value` and `len` outlive the call and `len` is `value`'s size.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            option,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc == 0 {
        Ok(usize::try_from(value).unwrap_or(0))
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_grow_to_what_the_kernel_allows() {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        raise(&socket);
        // A plain request gets up to rmem_max (reported doubled), a privileged one more.
        for (option, cap) in [(libc::SO_RCVBUF, "rmem_max"), (libc::SO_SNDBUF, "wmem_max")] {
            let max: usize = std::fs::read_to_string(format!("/proc/sys/net/core/{cap}"))
                .unwrap()
                .trim()
                .parse()
                .unwrap();
            let got = get(socket.as_raw_fd(), option).unwrap();
            assert!(got >= WANTED_BYTES.min(2 * max), "{cap} {max}: {got}");
        }
    }
}
