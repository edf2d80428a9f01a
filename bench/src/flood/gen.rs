//! The SYN flood generator: a thread in the client namespace with an
//! AF_PACKET socket on the client veth that sends pre-built Ethernet frames
//! (TCP SYNs to the server's port 25 from random sources in
//! 198.18.0.0/15), round robin with sendmmsg, as fast as one CPU can,
//! bounded in time and in count. The socket is bound to no protocol, so it
//! receives nothing. Paced, it sends its batches on a schedule instead
//! (sleeping, then spinning, until each batch is due).

use std::{
    io,
    net::Ipv4Addr,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use testkit::packets::{tcp_flags, PacketBuilder, LINUX_SYN_OPTIONS};

use super::{
    net::{SPOOF_BASE, SPOOF_HOST_MASK},
    sys,
};

/// Frames built once and sent round robin.
pub const FRAMES: usize = 4096;
/// Frames per sendmmsg call.
const BATCH: usize = 64;

pub struct GenConfig {
    pub ns: String,
    pub iface: String,
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub dst: Ipv4Addr,
    pub port: u16,
    pub duration: Duration,
    pub max_packets: u64,
    pub cpu: usize,
    /// SYNs per second to send at most; `None`: as fast as it goes.
    pub rate_pps: Option<f64>,
}

#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct GenResult {
    /// Frames the kernel took (sendmmsg's count).
    pub sent: u64,
    /// Calls that failed because the server veth's ring was full
    /// (ENOBUFS, retried).
    pub errors: u64,
    /// System calls made.
    pub calls: u64,
    pub seconds: f64,
    /// CPU time of the generator thread (user + system).
    pub cpu_seconds: f64,
}

impl GenResult {
    pub fn rate_pps(&self) -> f64 {
        self.sent as f64 / self.seconds.max(1e-9)
    }
}

/// xorshift64*: enough randomness for addresses and ports.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// `count` SYN frames from distinct random sources in 198.18.0.0/15.
pub fn build_frames(cfg: &GenConfig, count: usize) -> Vec<Vec<u8>> {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0x1234_5678, |d| d.as_nanos() as u64)
        | 1;
    let mut rng = Rng(seed);
    let mut seen = std::collections::HashSet::new();
    let mut frames = Vec::with_capacity(count);
    while frames.len() < count {
        let r = rng.next();
        let host = (r as u32) & SPOOF_HOST_MASK;
        // Neither the network nor the broadcast address of the range.
        if host == 0 || host == SPOOF_HOST_MASK || !seen.insert(host) {
            continue;
        }
        let src = Ipv4Addr::from(SPOOF_BASE | host);
        let sport = 1024 + ((r >> 32) as u16 % 64_000);
        frames.push(
            PacketBuilder::ipv4(src, cfg.dst)
                .macs(cfg.src_mac, cfg.dst_mac)
                .ipv4_id((r >> 48) as u16)
                .tcp(sport, cfg.port, tcp_flags::SYN)
                .seq((r >> 16) as u32)
                .tcp_options(&LINUX_SYN_OPTIONS)
                .build(),
        );
    }
    frames
}

fn last_err() -> io::Error {
    io::Error::last_os_error()
}

/// Runs the generator on the calling thread, which it moves into the
/// client namespace and onto `cfg.cpu` (call it on a thread of its own).
/// Stops at the deadline, after `max_packets`, or when `stop` is set.
pub fn run(cfg: &GenConfig, frames: &[Vec<u8>], stop: &AtomicBool) -> io::Result<GenResult> {
    testkit::netns::enter_netns(&cfg.ns)?;
    sys::set_affinity(0, cfg.cpu)?;
    let name = std::ffi::CString::new(cfg.iface.clone()).expect("interface name with NUL");
    // SAFETY: name is NUL-terminated.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if ifindex == 0 {
        return Err(last_err());
    }
    // Protocol 0: the socket sends but never receives.
    // SAFETY: plain socket(2).
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(last_err());
    }
    struct Fd(i32);
    impl Drop for Fd {
        fn drop(&mut self) {
            // SAFETY: our own descriptor.
            unsafe { libc::close(self.0) };
        }
    }
    let fd = Fd(fd);
    let one: libc::c_int = 1;
    // Straight to the driver: a veth has no qdisc anyway.
    // SAFETY: a valid int option.
    unsafe {
        libc::setsockopt(
            fd.0,
            libc::SOL_PACKET,
            libc::PACKET_QDISC_BYPASS,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as u32,
        )
    };
    // SAFETY: a zeroed sockaddr_ll is valid.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = (libc::ETH_P_IP as u16).to_be();
    addr.sll_ifindex = ifindex as i32;
    addr.sll_halen = 6;
    addr.sll_addr[..6].copy_from_slice(&cfg.dst_mac);

    let mut iovecs: Vec<libc::iovec> = frames
        .iter()
        .map(|f| libc::iovec {
            iov_base: f.as_ptr() as *mut libc::c_void,
            iov_len: f.len(),
        })
        .collect();
    let mut headers: Vec<libc::mmsghdr> = iovecs
        .iter_mut()
        .map(|iov| {
            // SAFETY: a zeroed msghdr is valid; the pointers set below
            // outlive every sendmmsg call (the vectors live until return).
            let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
            msg.msg_name = (&mut addr as *mut libc::sockaddr_ll).cast();
            msg.msg_namelen = std::mem::size_of::<libc::sockaddr_ll>() as u32;
            msg.msg_iov = iov;
            msg.msg_iovlen = 1;
            libc::mmsghdr {
                msg_hdr: msg,
                msg_len: 0,
            }
        })
        .collect();

    if cfg.rate_pps.is_some() {
        // Sleeps end within a microsecond, not the default 50 µs slack.
        // SAFETY: prctl with integer arguments.
        unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1000, 0, 0, 0) };
    }
    let mut result = GenResult::default();
    let cpu_start = sys::thread_cpu_time();
    let started = Instant::now();
    let deadline = started + cfg.duration;
    let mut pos = 0usize;
    while result.sent < cfg.max_packets && !stop.load(Ordering::Relaxed) {
        if Instant::now() >= deadline {
            break;
        }
        let len = BATCH
            .min(headers.len() - pos)
            .min((cfg.max_packets - result.sent) as usize);
        // SAFETY: headers[pos..pos + len] are valid mmsghdrs.
        let n = unsafe { libc::sendmmsg(fd.0, headers.as_mut_ptr().add(pos), len as u32, 0) };
        result.calls += 1;
        if n < 0 {
            let e = last_err();
            match e.raw_os_error() {
                Some(libc::ENOBUFS) | Some(libc::EAGAIN) | Some(libc::EINTR) => {
                    result.errors += 1;
                    std::thread::yield_now();
                    continue;
                }
                _ => return Err(e),
            }
        }
        result.sent += n as u64;
        pos = (pos + n as usize) % headers.len();
        if let Some(rate) = cfg.rate_pps {
            wait_until(
                started + Duration::from_secs_f64(result.sent as f64 / rate),
                deadline,
                stop,
            );
        }
    }
    result.seconds = started.elapsed().as_secs_f64();
    result.cpu_seconds = (sys::thread_cpu_time() - cpu_start).as_secs_f64();
    Ok(result)
}

/// Sleeps, then spins for the last stretch, until `due`; never past
/// `deadline` or a stop. A late batch does not slow the rate: `due` comes
/// from the count sent since the start.
fn wait_until(due: Instant, deadline: Instant, stop: &AtomicBool) {
    const SPIN: Duration = Duration::from_micros(20);
    let due = due.min(deadline);
    loop {
        let now = Instant::now();
        if now >= due || stop.load(Ordering::Relaxed) {
            return;
        }
        let left = due - now;
        if left > SPIN {
            std::thread::sleep(left - SPIN);
        } else {
            std::hint::spin_loop();
        }
    }
}
