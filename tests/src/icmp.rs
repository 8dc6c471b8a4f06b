//! ICMP echo from inside a test's network namespace: the Linux kernel there
//! pings a guest through a raw socket (tests/net.rs with the test guest,
//! tests/linux.rs with Linux's hv_netvsc as the guest).

use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use host_test_vmm::net::TestNetns;

/// A raw ICMP socket opened inside `ns` (usable from any thread afterwards),
/// or the OS error (raw sockets need root / CAP_NET_RAW).
pub fn raw_socket(ns: &TestNetns) -> std::io::Result<OwnedFd> {
    ns.run(|| {
        // SAFETY: creates a socket; the fd is owned right away.
        let fd = unsafe {
            libc::socket(
                libc::AF_INET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::IPPROTO_ICMP,
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh socket nobody else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    })
    .map_err(|e| std::io::Error::other(format!("namespace thread: {e}")))?
}

/// The Internet checksum (RFC 1071).
pub fn checksum(b: &[u8]) -> u16 {
    let mut s: u32 = 0;
    for c in b.chunks(2) {
        s += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while s > 0xFFFF {
        s = (s & 0xFFFF) + (s >> 16);
    }
    !(s as u16)
}

/// Sends one echo request (`ident`, `seq`, `payload`) to `dst` and waits up
/// to `wait` for the matching reply; its round trip when it came.
pub fn ping_once(
    fd: &OwnedFd,
    dst: Ipv4Addr,
    ident: u16,
    seq: u16,
    payload: &[u8],
    wait: Duration,
) -> Option<Duration> {
    // Short receive timeouts so a lost reply does not overrun `wait` by much.
    let tv = libc::timeval {
        tv_sec: 0,
        tv_usec: 100_000,
    };
    // SAFETY: setsockopt on our own socket with a correctly sized timeval.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const tv).cast(),
            std::mem::size_of::<libc::timeval>() as u32,
        )
    };
    let addr = libc::sockaddr_in {
        sin_family: libc::AF_INET as u16,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(dst.octets()),
        },
        sin_zero: [0; 8],
    };
    let mut pkt = vec![8u8, 0, 0, 0];
    pkt.extend_from_slice(&ident.to_be_bytes());
    pkt.extend_from_slice(&seq.to_be_bytes());
    pkt.extend_from_slice(payload);
    let c = checksum(&pkt);
    pkt[2..4].copy_from_slice(&c.to_be_bytes());
    let sent = Instant::now();
    // SAFETY: sendto with a valid buffer and sockaddr_in.
    let n = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            pkt.as_ptr().cast(),
            pkt.len(),
            0,
            (&raw const addr).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as u32,
        )
    };
    if n < 0 {
        return None;
    }
    while sent.elapsed() < wait {
        let mut buf = [0u8; 1500];
        // SAFETY: recv into our own buffer (bounded by the timeout above).
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n <= 28 {
            continue;
        }
        let ihl = usize::from(buf[0] & 0x0F) * 4;
        let Some(icmp) = buf.get(ihl..n as usize) else {
            continue;
        };
        if icmp.len() >= 8
            && icmp[0] == 0
            && icmp[4..6] == ident.to_be_bytes()
            && icmp[6..8] == seq.to_be_bytes()
            && buf[12..16] == dst.octets()
        {
            return Some(sent.elapsed());
        }
    }
    None
}
