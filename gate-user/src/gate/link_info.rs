//! Which interface a pinned link is attached to. When an interface goes
//! away (a VLAN or bond recreated, networkd restarted), its XDP or tcx
//! link is detached by the kernel but stays pinned; a gate must not take
//! such a link for a working attachment.

use std::{ffi::CString, io, os::unix::ffi::OsStrExt, path::Path};

const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;

#[repr(C)]
struct ObjGetAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
}

#[repr(C)]
struct InfoByFdAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// The ifindex of the link pinned at `path`: 0 if its interface is gone.
/// In `struct bpf_link_info`, type, id and prog_id (3 x u32) are followed
/// by an 8-aligned union whose xdp and tcx members both start with the
/// ifindex, at offset 16.
pub fn pinned_link_ifindex(path: &Path) -> io::Result<u32> {
    let c_path = CString::new(path.as_os_str().as_bytes())?;
    let get = ObjGetAttr {
        pathname: c_path.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: 0,
    };
    // SAFETY: a valid bpf_attr prefix for BPF_OBJ_GET.
    let fd = unsafe { bpf(BPF_OBJ_GET, &get) }?;
    // SAFETY: the kernel just returned this fd to us; we own it.
    let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd as i32) };
    let mut info = [0u64; 32];
    let attr = InfoByFdAttr {
        bpf_fd: std::os::fd::AsRawFd::as_raw_fd(&fd) as u32,
        info_len: std::mem::size_of_val(&info) as u32,
        info: info.as_mut_ptr() as u64,
    };
    // SAFETY: info is writable for info_len bytes.
    unsafe { bpf(BPF_OBJ_GET_INFO_BY_FD, &attr) }?;
    Ok(info[2] as u32)
}

/// bpf(2) with `attr` as the attribute prefix the command reads.
///
/// # Safety
/// `attr` must be a valid `bpf_attr` prefix for `cmd`, and every buffer it
/// points to must be valid for what the command does with it.
unsafe fn bpf<A>(cmd: libc::c_long, attr: &A) -> io::Result<libc::c_long> {
    // SAFETY: the caller's promise; the size is that of `attr`.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *const A,
            std::mem::size_of::<A>(),
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(rc)
}
