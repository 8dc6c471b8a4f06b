//! A network namespace owned by a test or benchmark, so TAP devices and the
//! addresses on them never touch the host's real network.
//!
//! [`TestNetns::new`] starts a thread that calls `unshare(CLONE_NEWNET)`:
//! that thread alone lives in a fresh, empty namespace (the rest of the
//! process is untouched). Everything that must happen inside the namespace
//! (creating a TAP, addressing it, opening sockets) runs on that thread via
//! [`TestNetns::run`]. File descriptors opened there keep working from any
//! thread. Cleanup needs no code that could be skipped: the kernel destroys
//! the namespace, with its TAP devices and addresses, as soon as the thread
//! has exited and the last fd opened in it is closed, also when a test
//! panics or the process is killed.

use super::backend::MacAddr;
use super::tap::{open_tap_fd, IfReq, TapBackend, TapError};
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;

/// Why the namespace could not be created.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// unshare(CLONE_NEWNET) failed.
    #[error("cannot create a network namespace: unshare(CLONE_NEWNET): {0} (needs CAP_SYS_ADMIN)")]
    Unshare(#[source] std::io::Error),
    /// The namespace thread could not be started or died.
    #[error("network namespace thread: {0}")]
    Thread(String),
    /// Setting up an interface failed.
    #[error(transparent)]
    Tap(#[from] TapError),
}

type Job = Box<dyn FnOnce() + Send>;

/// A private network namespace (see the module docs).
pub struct TestNetns {
    tx: Option<mpsc::Sender<Job>>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for TestNetns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TestNetns")
    }
}

impl TestNetns {
    /// A fresh namespace with its loopback interface up.
    pub fn new() -> Result<Self, NetnsError> {
        let (tx, rx) = mpsc::channel::<Job>();
        let (ready_tx, ready_rx) = mpsc::channel::<Result<(), std::io::Error>>();
        let thread = std::thread::Builder::new()
            .name("hvkit-netns".into())
            .spawn(move || {
                // SAFETY: unshare with CLONE_NEWNET only changes this thread's
                // network namespace; no memory is involved.
                let r = unsafe { libc::unshare(libc::CLONE_NEWNET) };
                if r != 0 {
                    let _ = ready_tx.send(Err(std::io::Error::last_os_error()));
                    return;
                }
                let up = set_up("lo");
                let _ = ready_tx.send(up.map_err(|e| std::io::Error::other(e.to_string())));
                while let Ok(job) = rx.recv() {
                    job();
                }
            })
            .map_err(|e| NetnsError::Thread(e.to_string()))?;
        let ns = Self {
            tx: Some(tx),
            thread: Some(thread),
        };
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(ns),
            Ok(Err(e)) if e.raw_os_error().is_some() => Err(NetnsError::Unshare(e)),
            Ok(Err(e)) => Err(NetnsError::Thread(format!("bringing lo up: {e}"))),
            Err(_) => Err(NetnsError::Thread("died during setup".into())),
        }
    }

    /// Run `f` inside the namespace and return its result.
    pub fn run<R: Send + 'static>(
        &self,
        f: impl FnOnce() -> R + Send + 'static,
    ) -> Result<R, NetnsError> {
        let (tx, rx) = mpsc::channel();
        let job: Job = Box::new(move || {
            let _ = tx.send(f());
        });
        self.tx
            .as_ref()
            .ok_or_else(|| NetnsError::Thread("gone".into()))?
            .send(job)
            .map_err(|_| NetnsError::Thread("gone".into()))?;
        rx.recv()
            .map_err(|_| NetnsError::Thread("job panicked".into()))
    }

    /// Create TAP `name` in the namespace, give it `addr/prefix`, bring it
    /// up, and attach a [`TapBackend`] to it.
    pub fn create_tap(
        &self,
        name: &str,
        addr: Ipv4Addr,
        prefix: u8,
    ) -> Result<Arc<TapBackend>, NetnsError> {
        let n = name.to_owned();
        let (file, actual) = self.run(move || -> Result<_, TapError> {
            let (file, actual) = open_tap_fd(&n)?;
            set_addr(&actual, addr, prefix)?;
            set_up(&actual)?;
            Ok((file, actual))
        })??;
        Ok(TapBackend::from_file(file, actual)?)
    }

    /// The hardware address of interface `name` in the namespace.
    pub fn mac_of(&self, name: &str) -> Result<MacAddr, NetnsError> {
        let n = name.to_owned();
        Ok(self.run(move || hw_addr(&n))??)
    }

    /// A permanent neighbour (ARP) entry `ip -> mac` on `dev`, so traffic
    /// to `ip` goes out without ARP.
    pub fn add_neighbor(&self, dev: &str, ip: Ipv4Addr, mac: MacAddr) -> Result<(), NetnsError> {
        let d = dev.to_owned();
        Ok(self.run(move || add_arp(&d, ip, mac))??)
    }

    /// A UDP socket bound to `addr` inside the namespace.
    pub fn udp_socket(&self, addr: SocketAddrV4) -> Result<UdpSocket, NetnsError> {
        self.run(move || UdpSocket::bind(addr))?
            .map_err(|e| NetnsError::Thread(format!("bind {addr}: {e}")))
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        // Closing the channel ends the thread; the namespace goes when the
        // last fd opened in it is closed.
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn config_err(name: &str, what: &'static str) -> TapError {
    TapError::Config {
        name: name.to_owned(),
        what,
        source: std::io::Error::last_os_error(),
    }
}

/// An AF_INET datagram socket for interface ioctls (in the calling thread's
/// namespace).
fn ctl_socket(name: &str) -> Result<OwnedFd, TapError> {
    // SAFETY: plain socket(2) call; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(config_err(name, "socket"));
    }
    // SAFETY: `fd` was just returned by socket and is owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn ioctl_ifreq(
    sock: &OwnedFd,
    req: libc::c_ulong,
    r: &mut IfReq,
    name: &str,
    what: &'static str,
) -> Result<(), TapError> {
    // SAFETY: the SIOC*IF* ioctls read/write one `struct ifreq`; `r` is a
    // correctly sized ifreq living across the call, `sock` an open socket.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), req as _, r as *mut IfReq) };
    if rc < 0 {
        return Err(config_err(name, what));
    }
    Ok(())
}

fn sockaddr_in(addr: Ipv4Addr) -> [u8; 16] {
    let mut s = [0u8; 16];
    s[0..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
    s[4..8].copy_from_slice(&addr.octets());
    s
}

fn set_addr(name: &str, addr: Ipv4Addr, prefix: u8) -> Result<(), TapError> {
    let sock = ctl_socket(name)?;
    let mut r = IfReq::new(name)?;
    r.data[..16].copy_from_slice(&sockaddr_in(addr));
    ioctl_ifreq(&sock, libc::SIOCSIFADDR, &mut r, name, "SIOCSIFADDR")?;
    let mask = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix.min(32)))
    };
    let mut r = IfReq::new(name)?;
    r.data[..16].copy_from_slice(&sockaddr_in(Ipv4Addr::from(mask)));
    ioctl_ifreq(&sock, libc::SIOCSIFNETMASK, &mut r, name, "SIOCSIFNETMASK")
}

fn set_up(name: &str) -> Result<(), TapError> {
    let sock = ctl_socket(name)?;
    let mut r = IfReq::new(name)?;
    ioctl_ifreq(&sock, libc::SIOCGIFFLAGS, &mut r, name, "SIOCGIFFLAGS")?;
    let flags = i16::from_ne_bytes([r.data[0], r.data[1]]) | libc::IFF_UP as i16;
    r.data[0..2].copy_from_slice(&flags.to_ne_bytes());
    ioctl_ifreq(&sock, libc::SIOCSIFFLAGS, &mut r, name, "SIOCSIFFLAGS")
}

fn hw_addr(name: &str) -> Result<MacAddr, TapError> {
    let sock = ctl_socket(name)?;
    let mut r = IfReq::new(name)?;
    ioctl_ifreq(&sock, libc::SIOCGIFHWADDR, &mut r, name, "SIOCGIFHWADDR")?;
    let mut m = [0u8; 6];
    m.copy_from_slice(&r.data[2..8]);
    Ok(MacAddr(m))
}

fn add_arp(dev: &str, ip: Ipv4Addr, mac: MacAddr) -> Result<(), TapError> {
    let sock = ctl_socket(dev)?;
    let name = IfReq::new(dev)?.name;
    // SAFETY: arpreq is a plain C struct for which all-zero is valid.
    let mut a: libc::arpreq = unsafe { std::mem::zeroed() };
    let sin = sockaddr_in(ip);
    // sockaddr is {sa_family u16, sa_data [c_char; 14]}.
    a.arp_pa.sa_family = libc::AF_INET as libc::sa_family_t;
    for (d, s) in a.arp_pa.sa_data.iter_mut().zip(&sin[2..]) {
        *d = *s as libc::c_char;
    }
    a.arp_ha.sa_family = libc::ARPHRD_ETHER;
    for (d, s) in a.arp_ha.sa_data.iter_mut().zip(&mac.0) {
        *d = *s as libc::c_char;
    }
    a.arp_flags = libc::ATF_COM | libc::ATF_PERM;
    for (d, s) in a.arp_dev.iter_mut().zip(&name) {
        *d = *s as libc::c_char;
    }
    // SAFETY: SIOCSARP reads one `struct arpreq`, which `a` is, alive across
    // the call.
    let rc = unsafe {
        libc::ioctl(
            sock.as_raw_fd(),
            libc::SIOCSARP as _,
            &a as *const libc::arpreq,
        )
    };
    if rc < 0 {
        return Err(config_err(dev, "SIOCSARP"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::backend::{CollectSink, FrameBackend};
    use super::*;
    use std::time::Duration;

    /// Skips (with a message) where namespaces or TUN are unavailable.
    fn netns() -> Option<TestNetns> {
        match TestNetns::new() {
            Ok(n) => Some(n),
            Err(e) => {
                eprintln!("skipping: {e}");
                None
            }
        }
    }

    /// An IPv4/UDP frame `src -> dst` with a correct IP header checksum
    /// (UDP checksum 0 = none, valid for IPv4).
    pub(crate) fn udp_frame(
        dst_mac: MacAddr,
        src_mac: MacAddr,
        src: SocketAddrV4,
        dst: SocketAddrV4,
        payload: &[u8],
    ) -> Vec<u8> {
        let mut f = Vec::with_capacity(42 + payload.len());
        f.extend_from_slice(&dst_mac.0);
        f.extend_from_slice(&src_mac.0);
        f.extend_from_slice(&[0x08, 0x00]);
        let total = (20 + 8 + payload.len()) as u16;
        let mut ip = [0u8; 20];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&total.to_be_bytes());
        ip[8] = 64;
        ip[9] = 17;
        ip[12..16].copy_from_slice(&src.ip().octets());
        ip[16..20].copy_from_slice(&dst.ip().octets());
        let mut sum: u32 = ip
            .chunks(2)
            .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
            .sum();
        while sum > 0xFFFF {
            sum = (sum & 0xFFFF) + (sum >> 16);
        }
        ip[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
        f.extend_from_slice(&ip);
        f.extend_from_slice(&src.port().to_be_bytes());
        f.extend_from_slice(&dst.port().to_be_bytes());
        f.extend_from_slice(&(8 + payload.len() as u16).to_be_bytes());
        f.extend_from_slice(&[0, 0]);
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn tap_in_namespace_both_ways() {
        let Some(ns) = netns() else { return };
        let host_ip = Ipv4Addr::new(10, 213, 0, 1);
        let guest_ip = Ipv4Addr::new(10, 213, 0, 2);
        let guest_mac = MacAddr([0x02, 0x15, 0, 0, 0, 2]);
        let tap = ns.create_tap("hvt0", host_ip, 24).unwrap();
        let tap_mac = ns.mac_of("hvt0").unwrap();
        ns.add_neighbor("hvt0", guest_ip, guest_mac).unwrap();
        let sink = CollectSink::new(64);
        tap.set_sink(Some(sink.clone()));

        // Host kernel -> TAP -> backend.
        let host_sock = ns.udp_socket(SocketAddrV4::new(host_ip, 5555)).unwrap();
        host_sock
            .send_to(b"to-guest", SocketAddrV4::new(guest_ip, 7777))
            .unwrap();
        let f = sink
            .recv_matching(Duration::from_secs(5), |f| {
                f.len() > 42 && f[12..14] == [8, 0] && f[23] == 17
            })
            .expect("UDP frame from the namespace's kernel");
        assert_eq!(MacAddr::dst_of(&f), Some(guest_mac));
        assert_eq!(MacAddr::src_of(&f), Some(tap_mac));
        assert_eq!(&f[42..], b"to-guest");

        // Backend -> TAP -> host kernel socket.
        let frame = udp_frame(
            tap_mac,
            guest_mac,
            SocketAddrV4::new(guest_ip, 7777),
            SocketAddrV4::new(host_ip, 5555),
            b"from-guest",
        );
        tap.send(&frame).unwrap();
        host_sock
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut buf = [0u8; 64];
        let (n, from) = host_sock.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"from-guest");
        assert_eq!(
            from,
            std::net::SocketAddr::V4(SocketAddrV4::new(guest_ip, 7777))
        );
        assert!(tap.send(&[0u8; 4]).is_err(), "runt frame refused");
        let (tx, _, rx, _) = tap.counters();
        assert!(tx >= 1 && rx >= 1);
    }

    #[test]
    fn namespace_is_private_and_goes_away() {
        let Some(ns) = netns() else { return };
        let _tap = ns
            .create_tap("hvt-gone", Ipv4Addr::new(10, 213, 0, 1), 24)
            .unwrap();
        // Not visible in the test process's own namespace.
        assert!(!std::path::Path::new("/sys/class/net/hvt-gone").exists());
        let listed = ns
            .run(|| std::fs::read_to_string("/proc/thread-self/net/dev").unwrap_or_default())
            .unwrap();
        assert!(listed.contains("hvt-gone"), "{listed}");
        drop(ns);
    }
}
