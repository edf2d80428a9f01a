//! Our own handle on a BPF link. aya 0.14's `FdLink` hides its fd and
//! offers none of the link operations the gate needs to never leave an
//! interface ungated: which interface a link is on (0 once the interface
//! is gone: a VLAN or bond recreated, networkd restarted, while the pin
//! stays), detaching a link for every holder at once, swapping the program
//! under a link in place, and pinning a link again from an open fd.

use std::{
    ffi::CString,
    io,
    os::{
        fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
        unix::ffi::OsStrExt,
    },
    path::Path,
};

use super::bpf_asm::bpf;

const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_LINK_UPDATE: libc::c_long = 29;
const BPF_LINK_DETACH: libc::c_long = 34;

#[repr(C)]
struct ObjAttr {
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

#[repr(C)]
struct LinkUpdateAttr {
    link_fd: u32,
    new_prog_fd: u32,
    flags: u32,
    old_prog_fd: u32,
}

#[repr(C)]
struct LinkDetachAttr {
    link_fd: u32,
}

/// What the kernel says about a link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkInfo {
    /// The link's id: the same link whatever fd or pin it is reached by.
    pub id: u32,
    /// The program the link runs.
    pub prog_id: u32,
    /// The interface it is attached to; 0 once the interface is gone or
    /// the link was detached.
    pub ifindex: u32,
}

/// An open BPF link. Holding it keeps the link attached even when its pin
/// is removed (or the bpffs holding the pin is unmounted).
#[derive(Debug)]
pub struct LinkFd(OwnedFd);

impl LinkFd {
    /// Opens the link pinned at `path`.
    pub fn open_pinned(path: &Path) -> io::Result<Self> {
        let c_path = CString::new(path.as_os_str().as_bytes())?;
        let mut get = ObjAttr {
            pathname: c_path.as_ptr() as u64,
            bpf_fd: 0,
            file_flags: 0,
        };
        // SAFETY: a valid bpf_attr prefix for BPF_OBJ_GET; c_path outlives
        // the call.
        let fd = unsafe { bpf(BPF_OBJ_GET, &mut get) }?;
        // SAFETY: the kernel just returned this fd to us; we own it.
        Ok(Self(unsafe { OwnedFd::from_raw_fd(fd as i32) }))
    }

    pub fn info(&self) -> io::Result<LinkInfo> {
        // struct bpf_link_info: type, id and prog_id (3 x u32), then an
        // 8-aligned union whose xdp and tcx members both start with the
        // ifindex, at offset 16.
        let mut info = [0u32; 64];
        let mut attr = InfoByFdAttr {
            bpf_fd: self.0.as_raw_fd() as u32,
            info_len: std::mem::size_of_val(&info) as u32,
            info: info.as_mut_ptr() as u64,
        };
        // SAFETY: info is writable for info_len bytes.
        unsafe { bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr) }?;
        Ok(LinkInfo {
            id: info[1],
            prog_id: info[2],
            ifindex: info[4],
        })
    }

    /// Pins the link at `path` (which must not exist, on a bpffs).
    pub fn pin(&self, path: &Path) -> io::Result<()> {
        let c_path = CString::new(path.as_os_str().as_bytes())?;
        let mut pin = ObjAttr {
            pathname: c_path.as_ptr() as u64,
            bpf_fd: self.0.as_raw_fd() as u32,
            file_flags: 0,
        };
        // SAFETY: a valid bpf_attr prefix for BPF_OBJ_PIN.
        unsafe { bpf(BPF_OBJ_PIN, &mut pin) }?;
        Ok(())
    }

    /// Detaches the link from its interface for every holder (a pin, a
    /// daemon's fd), not only for this fd: what `detach` and a mode switch
    /// mean. The link object stays, defunct, until its last fd closes.
    pub fn detach(&self) -> io::Result<()> {
        let mut attr = LinkDetachAttr {
            link_fd: self.0.as_raw_fd() as u32,
        };
        // SAFETY: a valid bpf_attr prefix for BPF_LINK_DETACH.
        unsafe { bpf(BPF_LINK_DETACH, &mut attr) }?;
        Ok(())
    }

    /// Runs `program` under this link from now on, atomically: the
    /// interface is never without a program (an upgrade in place).
    pub fn update_program(&self, program: BorrowedFd<'_>) -> io::Result<()> {
        let mut attr = LinkUpdateAttr {
            link_fd: self.0.as_raw_fd() as u32,
            new_prog_fd: program.as_raw_fd() as u32,
            flags: 0,
            old_prog_fd: 0,
        };
        // SAFETY: a valid bpf_attr prefix for BPF_LINK_UPDATE.
        unsafe { bpf(BPF_LINK_UPDATE, &mut attr) }?;
        Ok(())
    }
}

impl AsFd for LinkFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

/// The ifindex of the link pinned at `path`: 0 if its interface is gone.
pub fn pinned_link_ifindex(path: &Path) -> io::Result<u32> {
    Ok(LinkFd::open_pinned(path)?.info()?.ifindex)
}
