//! Types shared by the kernel programs (`tracer-ebpf`) and the loader (`tracer`).
//!
//! Rules for every type here: `#[repr(C)]`, `Copy`, padding spelled out as fields, no
//! `bool`, and a compile-time size assertion. Every ring-buffer record starts with an
//! [`EventHeader`] whose `kind` is one of the fixed [`EventKind`] ids, so the loader can
//! decode a record with a length check instead of a blind pointer cast.
#![no_std]

pub mod cgroups;
pub mod inodes;
pub mod tcp;
pub mod triage;
pub mod zombies;

/// floor(log2(v)) for v > 0 (0 for 0), without a count-leading-zeros instruction
/// (the BPF instruction set has none).
#[inline(always)]
pub fn log2(mut v: u64) -> u32 {
    let mut r = 0;
    if v >> 32 != 0 {
        v >>= 32;
        r += 32;
    }
    if v >> 16 != 0 {
        v >>= 16;
        r += 16;
    }
    if v >> 8 != 0 {
        v >>= 8;
        r += 8;
    }
    if v >> 4 != 0 {
        v >>= 4;
        r += 4;
    }
    if v >> 2 != 0 {
        v >>= 2;
        r += 2;
    }
    if v >> 1 != 0 {
        r += 1;
    }
    r
}

/// Length of `task->comm`, as the kernel defines TASK_COMM_LEN.
pub const COMM_LEN: usize = 16;

/// Declares [`EventKind`] from one list: each kind's fixed id and meaning, with
/// `from_u32` and `ALL` generated from the same list, so a new kind is one line.
macro_rules! event_kinds {
    ($($(#[doc = $doc:literal])* $name:ident = $id:literal,)+) => {
        /// Fixed ids of the records that the kernel programs put on the ring buffer.
        /// Ids never change meaning; new kinds get new numbers.
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum EventKind {
            $($(#[doc = $doc])* $name = $id,)+
        }

        impl EventKind {
            /// Every kind, in the order declared.
            pub const ALL: &'static [EventKind] = &[$(EventKind::$name),+];

            pub fn from_u32(v: u32) -> Option<Self> {
                match v {
                    $($id => Some(Self::$name),)+
                    _ => None,
                }
            }
        }
    };
}

event_kinds! {
    /// zombies: a whole process exited (sched_process_exit with group_dead).
    ProcessExit = 1,
    /// zombies: an exited process was reaped (wait4 returned it, or it was freed).
    ProcessReap = 2,
    /// zombies: a fork/clone returned -EAGAIN (pids.max or the global pid space full).
    ForkRefused = 5,
    /// tcp-pressure: a TCP socket-memory allocation was refused (sock_exceed_buf_limit).
    TcpBufLimit = 10,
    /// tcp-pressure: TCP entered or left memory pressure (fentry/kprobe edges).
    TcpPressureEdge = 11,
    /// cgroups: a cgroup was created (cgroup:cgroup_mkdir).
    CgroupMkdir = 20,
    /// cgroups: a cgroup was removed (cgroup:cgroup_rmdir); it is dying until released.
    CgroupRmdir = 21,
    /// cgroups: a removed cgroup was freed (cgroup:cgroup_release).
    CgroupRelease = 22,
    /// inodes: the first inode allocated in a directory (with the create's path).
    InodesNewDir = 30,
    /// inodes: a process's first create on a filesystem that failed with ENOSPC.
    InodesEnospc = 31,
    /// inodes: a mkdir/mknod/symlink that worked, on a kernel without the VFS hook
    /// (userspace places it from its path).
    InodesMadeAt = 32,
}

/// First field of every ring-buffer record.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventHeader {
    /// An [`EventKind`] id.
    pub kind: u32,
    /// tgid of the task that was current when the event fired.
    pub tgid: u32,
    /// bpf_ktime_get_ns(): CLOCK_MONOTONIC nanoseconds.
    pub ts_ns: u64,
}
const _: () = assert!(core::mem::size_of::<EventHeader>() == 16);

/// Capacity of the ring buffer shared by the programs of one run, in bytes (a power of
/// two and a multiple of the page size). The loader may raise it per detector.
pub const RING_BYTES: u32 = 1 << 20;

/// Marker for types that may be read from a ring-buffer record.
///
/// # Safety
/// Implementors must be `#[repr(C)]`, contain no padding bytes the kernel leaves
/// uninitialised and be valid for any bit pattern.
pub unsafe trait Plain: Copy + 'static {}

/// Reads a `T` from the front of `bytes` after checking the length: never a blind cast.
pub fn decode<T: Plain>(bytes: &[u8]) -> Option<T> {
    if bytes.len() < core::mem::size_of::<T>() {
        return None;
    }
    // SAFETY: the length was checked above and `T: Plain` is valid for any bit pattern;
    // read_unaligned copes with the ring buffer's 8-byte alignment.
    Some(unsafe { core::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

/// A ring-buffer record type: it starts with an [`EventHeader`] whose kind is one of
/// `KINDS`. The loader decodes every record through [`decode_record`].
pub trait Record: Plain {
    const KINDS: &'static [EventKind];
}

/// Implements [`Record`] for a record type and the kinds it carries.
#[macro_export]
macro_rules! record {
    ($t:ty: $($k:ident),+ $(,)?) => {
        impl $crate::Record for $t {
            const KINDS: &'static [$crate::EventKind] = &[$($crate::EventKind::$k),+];
        }
    };
}

/// The kind of a ring-buffer record, from its header (None: too short or unknown).
pub fn record_kind(bytes: &[u8]) -> Option<EventKind> {
    EventKind::from_u32(decode::<EventHeader>(bytes)?.kind)
}

/// Decodes a record of type `T`: the header's kind must be one of `T`'s and the bytes
/// long enough. `None` is a bad record, for the caller to count.
pub fn decode_record<T: Record>(bytes: &[u8]) -> Option<(EventKind, T)> {
    let kind = EventKind::from_u32(decode::<EventHeader>(bytes)?.kind)?;
    if !T::KINDS.contains(&kind) {
        return None;
    }
    Some((kind, decode::<T>(bytes)?))
}

/// The bytes of a `T`, for tests and for the kernel side's copies.
pub fn as_bytes<T: Plain>(v: &T) -> &[u8] {
    // SAFETY: `T: Plain` has no uninitialised padding.
    unsafe { core::slice::from_raw_parts((v as *const T).cast::<u8>(), core::mem::size_of::<T>()) }
}

/// Turns a NUL-padded `comm` into a str (lossy at the first invalid byte).
pub fn comm_str(comm: &[u8]) -> &str {
    let end = comm.iter().position(|&b| b == 0).unwrap_or(comm.len());
    match core::str::from_utf8(&comm[..end]) {
        Ok(s) => s,
        Err(e) => core::str::from_utf8(&comm[..e.valid_up_to()]).unwrap_or(""),
    }
}

/// Implements [`Plain`] and, on the user side, `aya::Pod` for shared types.
#[macro_export]
macro_rules! plain {
    ($($t:ty),* $(,)?) => {$(
        unsafe impl $crate::Plain for $t {}
        #[cfg(feature = "user")]
        unsafe impl aya::Pod for $t {}
    )*};
}

plain!(EventHeader);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log2_matches_leading_zeros() {
        for v in [1u64, 2, 3, 15, 16, 17, 1 << 20, (1 << 33) + 5, u64::MAX] {
            assert_eq!(log2(v), 63 - v.leading_zeros(), "{v}");
        }
    }

    #[test]
    fn header_round_trip_and_short_input() {
        let h = EventHeader {
            kind: EventKind::ProcessExit as u32,
            tgid: 42,
            ts_ns: 7,
        };
        let bytes = as_bytes(&h);
        assert_eq!(decode::<EventHeader>(bytes), Some(h));
        assert_eq!(decode::<EventHeader>(&bytes[..15]), None);
        assert_eq!(EventKind::from_u32(h.kind), Some(EventKind::ProcessExit));
        assert_eq!(EventKind::from_u32(0), None);
        for k in EventKind::ALL {
            assert_eq!(EventKind::from_u32(*k as u32), Some(*k));
        }
    }

    #[test]
    fn records_decode_only_with_their_own_kinds() {
        let mut ev = zombies::ProcEvent {
            header: EventHeader {
                kind: EventKind::ProcessReap as u32,
                tgid: 1,
                ts_ns: 2,
            },
            ..Default::default()
        };
        assert_eq!(
            decode_record::<zombies::ProcEvent>(as_bytes(&ev)),
            Some((EventKind::ProcessReap, ev))
        );
        let n = core::mem::size_of::<zombies::ProcEvent>();
        assert_eq!(
            decode_record::<zombies::ProcEvent>(&as_bytes(&ev)[..n - 1]),
            None
        );
        ev.header.kind = EventKind::CgroupMkdir as u32;
        assert_eq!(decode_record::<zombies::ProcEvent>(as_bytes(&ev)), None);
        ev.header.kind = 999;
        assert_eq!(decode_record::<zombies::ProcEvent>(as_bytes(&ev)), None);
        assert_eq!(decode_record::<zombies::ProcEvent>(&[]), None);
    }

    #[test]
    fn comm_is_cut_at_nul() {
        let mut c = [0u8; COMM_LEN];
        c[..4].copy_from_slice(b"bash");
        assert_eq!(comm_str(&c), "bash");
        assert_eq!(comm_str(b"0123456789abcdef"), "0123456789abcdef");
    }
}
