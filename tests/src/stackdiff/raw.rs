//! AF_PACKET on the client's veth: sending crafted frames as they are, and
//! capturing the SYN-ACKs the server sends back.
//!
//! Both sockets are made inside the client namespace (on a thread that
//! entered it), so they can only ever see and reach that namespace's veth,
//! whose peer is in the lab's server namespace.

use std::{
    collections::HashSet,
    io,
    mem::{size_of, zeroed},
    net::IpAddr,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        mpsc, Arc, Mutex,
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use testkit::netns::{enter_netns, in_netns};

/// linux/if_packet.h
const PACKET_OUTGOING: u8 = 4;
/// asm-generic/socket.h (x86, arm64)
const SO_RCVBUFFORCE: libc::c_int = 33;
/// Longest a capture runs, whatever happens to the caller.
const CAPTURE_LIMIT: Duration = Duration::from_secs(900);

fn ifindex(iface: &str) -> io::Result<i32> {
    let name = std::ffi::CString::new(iface)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "interface name with NUL"))?;
    // SAFETY: a NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("no interface {iface}: {}", io::Error::last_os_error()),
        ));
    }
    Ok(index as i32)
}

fn packet_socket(protocol: u16) -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2).
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            i32::from(protocol.to_be()),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn sockaddr(ifindex: i32, protocol: u16) -> libc::sockaddr_ll {
    // SAFETY: sockaddr_ll is plain data; all zero is valid.
    let mut addr: libc::sockaddr_ll = unsafe { zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = protocol.to_be();
    addr.sll_ifindex = ifindex;
    addr
}

/// Sends frames, as given, out of one interface of one namespace.
pub struct RawSender {
    fd: OwnedFd,
    ifindex: i32,
    iface: String,
}

impl RawSender {
    /// An AF_PACKET socket (protocol 0: it receives nothing) made in
    /// namespace `ns` for `iface` there.
    pub fn open(ns: &str, iface: &str) -> io::Result<Self> {
        let iface_name = iface.to_string();
        in_netns(ns, move || {
            let ifindex = ifindex(&iface_name)?;
            let fd = packet_socket(0)?;
            Ok(Self {
                fd,
                ifindex,
                iface: iface_name,
            })
        })
    }

    /// Sends one frame (Ethernet header included).
    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        let addr = sockaddr(self.ifindex, 0);
        // SAFETY: frame and addr are valid for the call.
        let sent = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&addr as *const libc::sockaddr_ll).cast(),
                size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if sent < 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(
                e.kind(),
                format!("sending {} octets on {}: {e}", frame.len(), self.iface),
            ));
        }
        if sent as usize != frame.len() {
            return Err(io::Error::other(format!(
                "sent {sent} of {} octets on {}",
                frame.len(),
                self.iface
            )));
        }
        Ok(())
    }
}

/// A SYN-ACK seen coming back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SynAck {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub src_port: u16,
    pub dst_port: u16,
    pub seq: u32,
    pub ack: u32,
}

/// Parses a received frame: any VLAN tags still in it, IPv4 or IPv6 (no
/// extension headers: the server's own SYN-ACKs carry none), TCP with SYN
/// and ACK set.
pub fn parse_synack(frame: &[u8]) -> Option<SynAck> {
    let be16 = |at: usize| -> Option<u16> {
        Some(u16::from_be_bytes([*frame.get(at)?, *frame.get(at + 1)?]))
    };
    let be32 = |at: usize| -> Option<u32> {
        Some(u32::from_be_bytes(frame.get(at..at + 4)?.try_into().ok()?))
    };
    let mut at = 12;
    let mut kind = be16(at)?;
    let mut tags = 0;
    while (kind == 0x8100 || kind == 0x88a8) && tags < 16 {
        at += 4;
        kind = be16(at)?;
        tags += 1;
    }
    let l3 = at + 2;
    let (src, dst, l4) = match kind {
        0x0800 => {
            let vihl = *frame.get(l3)?;
            if vihl >> 4 != 4 || frame.get(l3 + 9) != Some(&6) {
                return None;
            }
            if be16(l3 + 6)? & 0x3fff != 0 {
                return None;
            }
            let src: [u8; 4] = frame.get(l3 + 12..l3 + 16)?.try_into().ok()?;
            let dst: [u8; 4] = frame.get(l3 + 16..l3 + 20)?.try_into().ok()?;
            (
                IpAddr::from(src),
                IpAddr::from(dst),
                l3 + usize::from(vihl & 0x0f) * 4,
            )
        }
        0x86dd => {
            if frame.get(l3)? >> 4 != 6 || frame.get(l3 + 6) != Some(&6) {
                return None;
            }
            let src: [u8; 16] = frame.get(l3 + 8..l3 + 24)?.try_into().ok()?;
            let dst: [u8; 16] = frame.get(l3 + 24..l3 + 40)?.try_into().ok()?;
            (IpAddr::from(src), IpAddr::from(dst), l3 + 40)
        }
        _ => return None,
    };
    let flags = *frame.get(l4 + 13)?;
    if flags & 0x12 != 0x12 {
        return None;
    }
    Some(SynAck {
        src,
        dst,
        src_port: be16(l4)?,
        dst_port: be16(l4 + 2)?,
        seq: be32(l4 + 4)?,
        ack: be32(l4 + 8)?,
    })
}

/// Captures SYN-ACKs arriving on one interface of one namespace, on a
/// thread of its own, until [`Capture::finish`].
pub struct Capture {
    stop: Arc<AtomicBool>,
    seen: Arc<AtomicUsize>,
    last: Arc<Mutex<Option<Instant>>>,
    ports_seen: Arc<Mutex<HashSet<u16>>>,
    handle: Option<JoinHandle<io::Result<Vec<SynAck>>>>,
}

impl Capture {
    /// Starts capturing; returns once the socket is bound. Only SYN-ACKs
    /// whose destination port is in `ports` are kept.
    pub fn start(ns: &str, iface: &str, ports: HashSet<u16>) -> io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(AtomicUsize::new(0));
        let last = Arc::new(Mutex::new(None));
        let ports_seen = Arc::new(Mutex::new(HashSet::new()));
        let (ready_tx, ready_rx) = mpsc::channel::<io::Result<()>>();
        let (ns, iface) = (ns.to_string(), iface.to_string());
        let thread_stop = Arc::clone(&stop);
        let thread_seen = Arc::clone(&seen);
        let thread_last = Arc::clone(&last);
        let thread_ports_seen = Arc::clone(&ports_seen);
        let handle = thread::Builder::new()
            .name("stackdiff-capture".to_string())
            .spawn(move || {
                let setup = || -> io::Result<(OwnedFd, i32)> {
                    enter_netns(&ns)?;
                    let index = ifindex(&iface)?;
                    let fd = packet_socket(libc::ETH_P_ALL as u16)?;
                    let size: libc::c_int = 32 << 20;
                    let timeout = libc::timeval {
                        tv_sec: 0,
                        tv_usec: 20_000,
                    };
                    // SAFETY: setsockopt/bind with valid option values.
                    unsafe {
                        libc::setsockopt(
                            fd.as_raw_fd(),
                            libc::SOL_SOCKET,
                            SO_RCVBUFFORCE,
                            (&size as *const libc::c_int).cast(),
                            size_of::<libc::c_int>() as u32,
                        );
                        if libc::setsockopt(
                            fd.as_raw_fd(),
                            libc::SOL_SOCKET,
                            libc::SO_RCVTIMEO,
                            (&timeout as *const libc::timeval).cast(),
                            size_of::<libc::timeval>() as u32,
                        ) != 0
                        {
                            return Err(io::Error::last_os_error());
                        }
                        let addr = sockaddr(index, libc::ETH_P_ALL as u16);
                        if libc::bind(
                            fd.as_raw_fd(),
                            (&addr as *const libc::sockaddr_ll).cast(),
                            size_of::<libc::sockaddr_ll>() as u32,
                        ) != 0
                        {
                            return Err(io::Error::last_os_error());
                        }
                    }
                    Ok((fd, index))
                };
                let (fd, index) = match setup() {
                    Ok(v) => {
                        let _ = ready_tx.send(Ok(()));
                        v
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(io::Error::new(
                            e.kind(),
                            format!("capture on {iface} in {ns}: {e}"),
                        )));
                        return Err(e);
                    }
                };
                let started = Instant::now();
                let mut found = Vec::new();
                let mut buf = vec![0u8; 65536];
                while !thread_stop.load(Ordering::Relaxed) && started.elapsed() < CAPTURE_LIMIT {
                    // SAFETY: sockaddr_ll is plain data.
                    let mut from: libc::sockaddr_ll = unsafe { zeroed() };
                    let mut from_len = size_of::<libc::sockaddr_ll>() as u32;
                    // SAFETY: buf and from are valid for the call.
                    let n = unsafe {
                        libc::recvfrom(
                            fd.as_raw_fd(),
                            buf.as_mut_ptr().cast(),
                            buf.len(),
                            0,
                            (&mut from as *mut libc::sockaddr_ll).cast(),
                            &mut from_len,
                        )
                    };
                    if n < 0 {
                        let e = io::Error::last_os_error();
                        match e.kind() {
                            io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted => continue,
                            _ => return Err(e),
                        }
                    }
                    if from.sll_pkttype == PACKET_OUTGOING || from.sll_ifindex != index {
                        continue;
                    }
                    if let Some(reply) = parse_synack(&buf[..n as usize]) {
                        if ports.contains(&reply.dst_port) {
                            thread_seen.fetch_add(1, Ordering::Relaxed);
                            if let Ok(mut l) = thread_last.lock() {
                                *l = Some(Instant::now());
                            }
                            if let Ok(mut p) = thread_ports_seen.lock() {
                                p.insert(reply.dst_port);
                            }
                            found.push(reply);
                        }
                    }
                }
                Ok(found)
            })?;
        match ready_rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(())) => Ok(Self {
                stop,
                seen,
                last,
                ports_seen,
                handle: Some(handle),
            }),
            Ok(Err(e)) => {
                let _ = handle.join();
                Err(e)
            }
            Err(e) => Err(io::Error::other(format!(
                "the capture thread did not report: {e}"
            ))),
        }
    }

    /// SYN-ACKs kept so far.
    pub fn seen(&self) -> usize {
        self.seen.load(Ordering::Relaxed)
    }

    /// True once a SYN-ACK to `port` has been kept.
    pub fn has_seen(&self, port: u16) -> bool {
        self.ports_seen.lock().is_ok_and(|p| p.contains(&port))
    }

    /// When the last kept SYN-ACK arrived.
    pub fn last_at(&self) -> Option<Instant> {
        self.last.lock().ok().and_then(|l| *l)
    }

    /// Stops the capture and returns what it kept.
    pub fn finish(mut self) -> io::Result<Vec<SynAck>> {
        self.stop.store(true, Ordering::Relaxed);
        match self.handle.take().map(JoinHandle::join) {
            Some(Ok(result)) => result,
            Some(Err(payload)) => std::panic::resume_unwind(payload),
            None => Ok(Vec::new()),
        }
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use testkit::packets::{tcp_flags, PacketBuilder, VlanTag};

    #[test]
    fn synacks_are_recognised() {
        let frame = PacketBuilder::ipv4([10, 0, 0, 1].into(), [10, 0, 0, 2].into())
            .tcp(25, 4242, tcp_flags::SYN | tcp_flags::ACK)
            .seq(9)
            .ack_number(100)
            .build();
        let r = parse_synack(&frame).expect("a SYN-ACK");
        assert_eq!((r.src_port, r.dst_port, r.seq, r.ack), (25, 4242, 9, 100));
        let tagged = PacketBuilder::ipv6("fd00::1".parse().unwrap(), "fd00::2".parse().unwrap())
            .vlan(VlanTag::dot1q(100))
            .tcp(25, 4243, tcp_flags::SYN | tcp_flags::ACK)
            .build();
        assert_eq!(parse_synack(&tagged).map(|r| r.dst_port), Some(4243));
        let rst = PacketBuilder::ipv4([10, 0, 0, 1].into(), [10, 0, 0, 2].into())
            .tcp(25, 4242, tcp_flags::RST | tcp_flags::ACK)
            .build();
        assert_eq!(parse_synack(&rst), None);
    }
}
