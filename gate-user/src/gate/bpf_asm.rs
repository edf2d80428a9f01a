//! Just enough of the bpf(2) system call to load small XDP programs
//! assembled in place (the gate clock's probe; the benchmarks' flood
//! generator, guard and floor programs) and to run them with
//! BPF_PROG_TEST_RUN, without an object file.

use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

const BPF_PROG_LOAD: libc::c_long = 5;
pub const BPF_PROG_TEST_RUN: libc::c_long = 10;
pub const BPF_LINK_CREATE: libc::c_long = 28;
pub const BPF_XDP: u32 = 37;
const BPF_PROG_TYPE_XDP: u32 = 6;
pub const XDP_DROP: i32 = 1;
pub const XDP_PASS: i32 = 2;
pub const XDP_TX: i32 = 3;

/// One eBPF instruction.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Insn {
    pub code: u8,
    pub regs: u8,
    pub off: i16,
    pub imm: i32,
}

pub const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: dst | (src << 4),
        off,
        imm,
    }
}

/// `dst = map` for a map given by file descriptor: the two-slot
/// BPF_LD_IMM64 with BPF_PSEUDO_MAP_FD.
pub fn ld_map_fd(dst: u8, fd: i32) -> [Insn; 2] {
    [insn(LD_IMM64, dst, 1, 0, fd), insn(0, 0, 0, 0, 0)]
}

// Opcodes (BPF_CLASS | BPF_OP | BPF_SRC, BPF_CLASS | BPF_SIZE | BPF_MEM).
pub const MOV64_REG: u8 = 0xbf;
pub const MOV64_IMM: u8 = 0xb7;
pub const ADD64_IMM: u8 = 0x07;
pub const ADD64_REG: u8 = 0x0f;
pub const AND64_IMM: u8 = 0x57;
pub const OR64_IMM: u8 = 0x47;
pub const RSH64_IMM: u8 = 0x77;
pub const XOR64_IMM: u8 = 0xa7;
pub const LD_IMM64: u8 = 0x18;
pub const LDX_W: u8 = 0x61;
pub const LDX_H: u8 = 0x69;
pub const STX_H: u8 = 0x6b;
pub const STX_DW: u8 = 0x7b;
pub const ST_W: u8 = 0x62;
pub const ST_H: u8 = 0x6a;
pub const ST_B: u8 = 0x72;
pub const JGT_REG: u8 = 0x2d;
pub const JEQ_IMM: u8 = 0x15;
pub const JNE_IMM: u8 = 0x55;
pub const CALL: u8 = 0x85;
pub const EXIT: u8 = 0x95;

/// bpf(2) with `attr` as its bpf_attr: a `#[repr(C)]` prefix of the
/// kernel's union for `cmd`, or a zero-padded byte image of it. The kernel
/// may write into `attr` (it reports lengths back).
///
/// # Safety
/// `attr` must be laid out as the kernel reads it for `cmd`, and every
/// pointer it holds must be valid, for the length `attr` gives it, for
/// reading or (where the kernel writes back) for writing, until the call
/// returns.
pub unsafe fn bpf<A>(cmd: libc::c_long, attr: &mut A) -> io::Result<i64> {
    // SAFETY: attr is valid for its size; its layout and pointers are the
    // caller's promise.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut A,
            std::mem::size_of::<A>() as u32,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(rc)
}

pub fn put_u32(attr: &mut [u8; 128], at: usize, v: u32) {
    attr[at..at + 4].copy_from_slice(&v.to_ne_bytes());
}

pub fn put_u64(attr: &mut [u8; 128], at: usize, v: u64) {
    attr[at..at + 8].copy_from_slice(&v.to_ne_bytes());
}

/// A program or link descriptor, closed when dropped.
pub struct ProgFd(OwnedFd);

impl ProgFd {
    /// Takes ownership of a descriptor bpf(2) returned.
    ///
    /// # Safety
    /// `fd` is open and owned by nothing else.
    pub unsafe fn from_raw(fd: i64) -> Self {
        // SAFETY: the caller's promise.
        Self(unsafe { OwnedFd::from_raw_fd(fd as i32) })
    }

    /// The descriptor, as a bpf_attr field holds it.
    pub fn raw(&self) -> u32 {
        self.0.as_raw_fd() as u32
    }
}

/// Loads an XDP program; the error carries the verifier's log.
pub fn load_xdp(insns: &[Insn], name: &str, attach_type: u32) -> io::Result<ProgFd> {
    let license = c"GPL";
    let mut log = vec![0u8; 64 * 1024];
    let mut attr = [0u8; 128];
    put_u32(&mut attr, 0, BPF_PROG_TYPE_XDP);
    put_u32(&mut attr, 4, insns.len() as u32);
    put_u64(&mut attr, 8, insns.as_ptr() as u64);
    put_u64(&mut attr, 16, license.as_ptr() as u64);
    put_u32(&mut attr, 24, 1); // log_level
    put_u32(&mut attr, 28, log.len() as u32);
    put_u64(&mut attr, 32, log.as_mut_ptr() as u64);
    let name = &name.as_bytes()[..name.len().min(15)];
    attr[48..48 + name.len()].copy_from_slice(name);
    put_u32(&mut attr, 68, attach_type); // expected_attach_type
                                         // SAFETY: insns, license, log and name outlive the call, with the
                                         // lengths given.
    match unsafe { bpf(BPF_PROG_LOAD, &mut attr) } {
        // SAFETY: a descriptor the kernel just gave us.
        Ok(fd) => Ok(unsafe { ProgFd::from_raw(fd) }),
        Err(e) => {
            let end = log.iter().position(|b| *b == 0).unwrap_or(log.len());
            Err(io::Error::new(
                e.kind(),
                format!(
                    "loading the XDP program {}: {e}\n{}",
                    String::from_utf8_lossy(name),
                    String::from_utf8_lossy(&log[..end])
                ),
            ))
        }
    }
}

/// What BPF_PROG_TEST_RUN reports: the last verdict and the mean ns.
pub struct TestRun {
    pub retval: u32,
    pub duration_ns: u32,
}

/// BPF_PROG_TEST_RUN: runs `prog` `repeat` times on `frame`. `flags`,
/// `batch_size` and the xdp_md context are for live-frames mode (zero and
/// `None` otherwise).
pub fn test_run(
    prog: &ProgFd,
    frame: &[u8],
    repeat: u32,
    live: Option<(u32, &[u32; 6])>,
) -> io::Result<TestRun> {
    let mut attr = [0u8; 128];
    put_u32(&mut attr, 0, prog.raw());
    put_u32(&mut attr, 8, frame.len() as u32);
    put_u64(&mut attr, 16, frame.as_ptr() as u64);
    put_u32(&mut attr, 32, repeat);
    if let Some((flags, ctx)) = live {
        put_u32(&mut attr, 40, std::mem::size_of_val(ctx) as u32);
        put_u64(&mut attr, 48, ctx.as_ptr() as u64);
        put_u32(&mut attr, 64, flags);
        put_u32(&mut attr, 72, 64); // batch_size
    }
    // SAFETY: frame and ctx outlive the call, with the lengths given; no
    // output is asked for.
    unsafe { bpf(BPF_PROG_TEST_RUN, &mut attr)? };
    let field = |at: usize| u32::from_ne_bytes(attr[at..at + 4].try_into().expect("4 octets"));
    Ok(TestRun {
        retval: field(4),
        duration_ns: field(36),
    })
}

/// BPF_PROG_TEST_RUN once on `frame`, with the frame as the program left
/// it copied into `out` (at most `out.len()` octets): the verdict and the
/// length of the frame after.
pub fn run_once_into(prog: &ProgFd, frame: &[u8], out: &mut [u8]) -> io::Result<(u32, usize)> {
    let mut attr = [0u8; 128];
    put_u32(&mut attr, 0, prog.raw());
    put_u32(&mut attr, 8, frame.len() as u32);
    put_u32(&mut attr, 12, out.len() as u32); // data_size_out
    put_u64(&mut attr, 16, frame.as_ptr() as u64);
    put_u64(&mut attr, 24, out.as_mut_ptr() as u64);
    put_u32(&mut attr, 32, 1);
    // SAFETY: frame and out outlive the call, with the lengths given; the
    // kernel writes at most data_size_out octets to out.
    unsafe { bpf(BPF_PROG_TEST_RUN, &mut attr)? };
    let field = |at: usize| u32::from_ne_bytes(attr[at..at + 4].try_into().expect("4 octets"));
    Ok((field(4), field(12) as usize))
}
