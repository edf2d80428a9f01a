//! The packet cursor: the one place that turns packet addresses into
//! references. Every header read of the parser goes through [`Packet::view`],
//! which checks the bounds the verifier (and the host) need.

use core::{marker::PhantomData, mem::size_of};

/// No header the parser reads starts deeper into a frame than this. The
/// bound keeps every offset the verifier sees small, and a header chain
/// that goes deeper is judged, not walked (see `Parsed::Partial`).
pub const MAX_WALK: usize = 1024;

/// Types that may be viewed in place in a packet.
///
/// # Safety
/// The type must be made of `u8` and `[u8; N]` only: alignment 1, no
/// padding, every bit pattern valid.
pub unsafe trait Header: Copy {}

unsafe impl<const N: usize> Header for [u8; N] {}

/// Why a header could not be viewed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cut {
    /// It runs past the end of the packet.
    Packet,
    /// It lies inside the packet but past the part that can be read in
    /// place (the linear part of a socket buffer in TC): pull and retry.
    Readable,
    /// It starts deeper than [`MAX_WALK`].
    TooDeep,
}

/// A packet of `len` octets whose first `end - start` octets are readable
/// in place at `start`.
#[derive(Clone, Copy)]
pub struct Packet<'a> {
    start: usize,
    end: usize,
    len: usize,
    _bytes: PhantomData<&'a [u8]>,
}

impl<'a> Packet<'a> {
    /// # Safety
    /// `start..end` must be readable memory that nothing changes for `'a`,
    /// and `len >= end - start` the length of the whole packet.
    #[inline(always)]
    pub unsafe fn new(start: usize, end: usize, len: usize) -> Self {
        Self {
            start,
            end,
            len,
            _bytes: PhantomData,
        }
    }

    /// A whole packet held in memory.
    pub fn from_slice(bytes: &'a [u8]) -> Self {
        Self::from_prefix(bytes, bytes.len())
    }

    /// The first `bytes.len()` octets of a packet that is `len` octets
    /// long: what TC sees of a non-linear socket buffer.
    pub fn from_prefix(bytes: &'a [u8], len: usize) -> Self {
        let start = bytes.as_ptr() as usize;
        // SAFETY: the borrow keeps the bytes readable and unchanged for 'a.
        unsafe { Self::new(start, start + bytes.len(), len.max(bytes.len())) }
    }

    /// Length of the whole packet.
    #[inline(always)]
    pub fn len(&self) -> usize {
        self.len
    }

    #[inline(always)]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The `T` at `offset`, in place. Only the fields used are loaded (a
    /// copy of a whole header would cost one load per octet in BPF, which
    /// has no unaligned loads).
    #[inline(always)]
    pub fn view<T: Header>(&self, offset: usize) -> Result<&'a T, Cut> {
        if offset > MAX_WALK {
            return Err(Cut::TooDeep);
        }
        if self.start + offset + size_of::<T>() > self.end {
            return Err(if offset + size_of::<T>() > self.len {
                Cut::Packet
            } else {
                Cut::Readable
            });
        }
        // SAFETY: the T lies inside start..end, which the constructor's
        // caller promised is readable and unchanged for 'a; T has
        // alignment 1 and accepts every bit pattern (Header).
        Ok(unsafe { &*((self.start + offset) as *const T) })
    }
}

/// A packet being rewritten in place (the reset reply).
pub struct PacketMut<'a> {
    start: usize,
    end: usize,
    _bytes: PhantomData<&'a mut [u8]>,
}

impl<'a> PacketMut<'a> {
    /// # Safety
    /// `start..end` must be writable memory that nothing else reads or
    /// writes for `'a`.
    #[inline(always)]
    pub unsafe fn new(start: usize, end: usize) -> Self {
        Self {
            start,
            end,
            _bytes: PhantomData,
        }
    }

    pub fn from_slice(bytes: &'a mut [u8]) -> Self {
        let start = bytes.as_mut_ptr() as usize;
        // SAFETY: the exclusive borrow gives us the bytes for 'a.
        unsafe { Self::new(start, start + bytes.len()) }
    }

    /// Writes `value` at `offset`; `None` if it does not fit.
    #[inline(always)]
    pub fn write<T: Header>(&mut self, offset: usize, value: T) -> Option<()> {
        if offset > MAX_WALK || self.start + offset + size_of::<T>() > self.end {
            return None;
        }
        // SAFETY: inside start..end, which is ours for 'a; alignment 1.
        unsafe { ((self.start + offset) as *mut T).write(value) };
        Some(())
    }

    /// The `T` at `offset`, copied out; `None` if it does not fit.
    #[inline(always)]
    pub fn read<T: Header>(&self, offset: usize) -> Option<T> {
        if offset > MAX_WALK || self.start + offset + size_of::<T>() > self.end {
            return None;
        }
        // SAFETY: as in `write`.
        Some(unsafe { *((self.start + offset) as *const T) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn view_tells_a_short_packet_from_an_unreadable_part() {
        let bytes = [1u8, 2, 3, 4, 5, 6];
        let whole = Packet::from_slice(&bytes);
        assert_eq!(whole.view::<[u8; 2]>(4), Ok(&[5, 6]));
        assert_eq!(whole.view::<[u8; 2]>(5), Err(Cut::Packet));
        let prefix = Packet::from_prefix(&bytes[..4], 6);
        assert_eq!(prefix.view::<[u8; 2]>(2), Ok(&[3, 4]));
        assert_eq!(prefix.view::<[u8; 2]>(3), Err(Cut::Readable));
        assert_eq!(prefix.view::<[u8; 2]>(5), Err(Cut::Packet));
        assert_eq!(whole.view::<[u8; 1]>(MAX_WALK + 1), Err(Cut::TooDeep));
    }

    #[test]
    fn writes_stay_inside() {
        let mut bytes = [0u8; 4];
        let mut p = PacketMut::from_slice(&mut bytes);
        assert_eq!(p.write(2, [7u8, 8]), Some(()));
        assert_eq!(p.write(3, [7u8, 8]), None);
        assert_eq!(p.read::<[u8; 2]>(2), Some([7, 8]));
        assert_eq!(bytes, [0, 0, 7, 8]);
    }
}
