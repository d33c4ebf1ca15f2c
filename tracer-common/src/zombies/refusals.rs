//! zombies, fork refusals: a fork/clone that returned -EAGAIN (a pids cgroup at its
//! pids.max, or the global pid space, threads-max or RLIMIT_NPROC full).
use crate::{COMM_LEN, EventHeader, plain, record};

/// The syscall that was refused: the slot of [`super::refusals`] counters and the
/// record's `call` field.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ForkCall {
    Clone = 0,
    Clone3 = 1,
    Fork = 2,
    Vfork = 3,
}

impl ForkCall {
    pub const ALL: [ForkCall; 4] = [Self::Clone, Self::Clone3, Self::Fork, Self::Vfork];

    pub fn from_u32(v: u32) -> Option<Self> {
        Self::ALL.get(v as usize).copied()
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Clone => "clone",
            Self::Clone3 => "clone3",
            Self::Fork => "fork",
            Self::Vfork => "vfork",
        }
    }
}

/// Slots of the per-CPU refusal counters: one per [`ForkCall`].
pub const REFUSAL_SLOTS: u32 = 4;

/// -EAGAIN, the only error of a fork that means "no pid for you" (pids.max,
/// threads-max, pid_max, RLIMIT_NPROC).
pub const EAGAIN: i64 = 11;

/// A ForkRefused record: header.tgid is the refused process.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ForkRefusal {
    pub header: EventHeader,
    /// The thread that called fork/clone.
    pub tid: u32,
    /// A [`ForkCall`].
    pub call: u32,
    /// comm of the refused process.
    pub comm: [u8; COMM_LEN],
}
const _: () = assert!(core::mem::size_of::<ForkRefusal>() == 40);

plain!(ForkRefusal);
record!(ForkRefusal: ForkRefused);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{EventKind, as_bytes, decode_record};

    #[test]
    fn fork_refusal_round_trip() {
        let mut ev = ForkRefusal {
            header: EventHeader {
                kind: EventKind::ForkRefused as u32,
                tgid: 7,
                ts_ns: 5,
            },
            tid: 8,
            call: ForkCall::Clone3 as u32,
            comm: [0; COMM_LEN],
        };
        ev.comm[..2].copy_from_slice(b"sh");
        assert_eq!(
            decode_record::<ForkRefusal>(as_bytes(&ev)),
            Some((EventKind::ForkRefused, ev))
        );
        assert_eq!(decode_record::<ForkRefusal>(&as_bytes(&ev)[..39]), None);
        assert_eq!(ForkCall::from_u32(1), Some(ForkCall::Clone3));
        assert_eq!(ForkCall::from_u32(4), None);
    }
}
