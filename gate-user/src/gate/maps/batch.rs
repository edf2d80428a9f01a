//! A hash map's entries a few thousand at a time: BPF_MAP_LOOKUP_BATCH
//! (Linux 5.6; hash and LRU hash maps), one bpf() call per [`BATCH`]
//! entries, where aya's iterator makes two per key (BPF_MAP_GET_NEXT_KEY,
//! then a lookup). The census of 262,144 grants (census.rs) makes about
//! a thousand calls instead of over half a million. aya 0.14 has no batch calls: the
//! syscall is made here, on the map's own fd.

use std::{io, mem, os::fd::AsRawFd, os::fd::BorrowedFd};

use aya::Pod;

/// Entries asked for per call. Few enough that one call stays short: the
/// kernel (PREEMPT_NONE, as Debian's cloud kernels and many servers run)
/// does not preempt a bpf() call, so a task woken on the walk's CPU waits
/// for the call to end: 4096 entries a call held logins up by a
/// millisecond and more at the p99 (`cargo xtask bench metrics`), 256 by
/// about 80 µs at most.
pub const BATCH: u32 = 256;

/// The most calls one walk makes: [`BATCH`] entries each, far more than
/// any map holds. A kernel that kept answering would not hold the walk.
const MOST_CALLS: usize = 1 << 16;

/// `enum bpf_cmd` (include/uapi/linux/bpf.h).
const BPF_MAP_LOOKUP_BATCH: libc::c_int = 24;
/// The kernel's own "operation not supported" (include/linux/errno.h),
/// which it returns for a map type without batch calls.
const ENOTSUPP: i32 = 524;

/// The part of `union bpf_attr` the batch commands read (`batch`).
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Why a batched walk did not happen.
#[derive(Debug)]
pub enum BatchError {
    /// The kernel has no batch lookups for this map (older than 5.6, or
    /// a map type without them): walk it key by key. Only said before
    /// any entry was handed out.
    Unsupported,
    Failed(io::Error),
}

/// Calls `each` with every key and value of the hash map `fd`, [`BATCH`]
/// at a time; gives how many calls it took. Entries written or deleted
/// meanwhile may be seen or not (the kernel reads a bucket at a time), as
/// with any walk of a map in use.
pub fn for_each<K: Pod, V: Pod>(
    fd: BorrowedFd<'_>,
    mut each: impl FnMut(&K, &V),
) -> Result<usize, BatchError> {
    // SAFETY: Pod types are plain integers and arrays of them (aya::Pod's
    // contract): all zeroes is a value of each.
    let (mut keys, mut values): (Vec<K>, Vec<V>) = unsafe {
        (
            vec![mem::zeroed(); BATCH as usize],
            vec![mem::zeroed(); BATCH as usize],
        )
    };
    // The position between calls: a bucket number for hash maps (4
    // octets); 8 leave room.
    let mut position: u64 = 0;
    let mut next: u64 = 0;
    for call in 0..MOST_CALLS {
        let mut attr = BatchAttr {
            in_batch: if call == 0 {
                0
            } else {
                &mut position as *mut u64 as u64
            },
            out_batch: &mut next as *mut u64 as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: BATCH,
            map_fd: fd.as_raw_fd() as u32,
            ..BatchAttr::default()
        };
        // SAFETY: `attr` is the batch layout of bpf_attr; the kernel
        // writes at most `count` keys and values into buffers of that many
        // elements of the map's key and value types (the callers' maps are
        // typed by aya, which checked the sizes), and the position into
        // `next`, 8 octets of ours.
        let done = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_BATCH,
                &mut attr as *mut BatchAttr,
                mem::size_of::<BatchAttr>() as libc::c_uint,
            )
        };
        let error = (done != 0).then(io::Error::last_os_error);
        let filled = (attr.count as usize).min(keys.len());
        match error.as_ref().and_then(io::Error::raw_os_error) {
            // ENOENT: the end, with the last entries (perhaps none).
            None | Some(libc::ENOENT) => {
                for (key, value) in keys[..filled].iter().zip(&values[..filled]) {
                    each(key, value);
                }
                if error.is_some() {
                    return Ok(call + 1);
                }
            }
            Some(libc::EINVAL | libc::EOPNOTSUPP | ENOTSUPP) if call == 0 => {
                return Err(BatchError::Unsupported)
            }
            _ => {
                let e = error.expect("an error, matched above");
                return Err(BatchError::Failed(io::Error::new(
                    e.kind(),
                    format!("BPF_MAP_LOOKUP_BATCH: {e}"),
                )));
            }
        }
        position = next;
    }
    Err(BatchError::Failed(io::Error::other(format!(
        "BPF_MAP_LOOKUP_BATCH did not come to the end in {MOST_CALLS} calls"
    ))))
}
