//! tcp-pressure: receive-queue pruning per socket.
//!
//! tcp_prune_queue() (TcpExt PruneCalled) is inlined into its only caller on the 6.1
//! and 6.12 kernels (no symbol, no BTF), so these programs sit on the functions it
//! calls with the socket: tcp_collapse() with a NULL `root` collapses the receive
//! queue, once per prune that had to merge buffers (the out-of-order queue's collapses
//! pass its rb-tree and are not counted); tcp_prune_ofo_queue() is the kernel going on
//! to discard data because collapsing was not enough (out-of-order packets first, then
//! the arriving packet: RcvPruned). Counts go to the socket's entry in `TCP_PRUNED`,
//! with the task current at the time (in softirq, a bystander: userspace names the
//! owner from the cookie or the ports).
use core::ffi::c_void;

use aya_ebpf::{
    helpers::{bpf_get_current_comm, bpf_probe_read_kernel, generated::bpf_get_socket_cookie},
    macros::{fentry, kprobe, map},
    maps::LruHashMap,
    programs::{FEntryContext, ProbeContext},
};
use tracer_common::tcp::{COUNT_PRUNE_DISCARDS, COUNT_PRUNES, PRUNED_CAPACITY, PrunedSock};

use crate::{
    common::{add, counted, current_tgid, get_or_insert, now_ns},
    tcp::{TCP_COUNTS, pressure},
};

/// Socket cookie (fentry) or struct sock address (kprobe) -> its prunes.
#[map]
static TCP_PRUNED: LruHashMap<u64, PrunedSock> = LruHashMap::with_max_entries(PRUNED_CAPACITY, 0);

/// struct sock_common begins with the address pair, the hash and the port pair: the
/// remote port (skc_dport, network order) at byte 12 and the local port (skc_num,
/// host order) at byte 14, in every kernel since 2.6.
const SKC_DPORT: usize = 12;
const SKC_NUM: usize = 14;

/// (local, remote) port of a socket, host order; a failed read is counted.
#[inline(always)]
fn ports(sk: *const u8) -> Option<(u16, u16)> {
    // SAFETY: bpf_probe_read_kernel checks the address; sk is a struct sock.
    let dport: u16 = counted(unsafe { bpf_probe_read_kernel(sk.wrapping_add(SKC_DPORT).cast()) })?;
    let num: u16 = counted(unsafe { bpf_probe_read_kernel(sk.wrapping_add(SKC_NUM).cast()) })?;
    Some((num, u16::from_be(dport)))
}

/// Counts a prune (`discard` false) or a discard on the socket `key`.
#[inline(always)]
fn pruned(key: u64, cookie: u64, sk: *const u8, discard: bool) -> u32 {
    add(
        &TCP_COUNTS,
        if discard {
            COUNT_PRUNE_DISCARDS
        } else {
            COUNT_PRUNES
        },
        1,
    );
    let init = PrunedSock {
        cookie,
        ..PrunedSock::default()
    };
    // A failed insert is counted in MAP_FULL; the global count above keeps it.
    let Some(p) = get_or_insert(&TCP_PRUNED, &key, &init) else {
        return 0;
    };
    let comm = bpf_get_current_comm().unwrap_or([0; 16]);
    // SAFETY: pointer from a map lookup; the socket's receive path runs under its lock,
    // so one CPU at a time updates its entry.
    unsafe {
        if discard {
            (*p).discards += 1;
        } else {
            (*p).prunes += 1;
            (*p).during_pressure += u64::from(pressure());
        }
        (*p).tgid = current_tgid();
        (*p).comm = comm;
        (*p).last_ns = now_ns();
        if (*p).lport == 0 {
            if let Some((l, r)) = ports(sk) {
                (*p).lport = l;
                (*p).rport = r;
            }
        }
    }
    0
}

/// A socket from a tracing program's trusted struct sock argument, keyed by cookie.
#[inline(always)]
fn by_cookie(sk: *mut c_void, discard: bool) -> u32 {
    if sk.is_null() {
        return 0;
    }
    // SAFETY: sk is the traced function's struct sock argument (PTR_TO_BTF_ID), which
    // bpf_get_socket_cookie takes in tracing programs (5.12+).
    let cookie = unsafe { bpf_get_socket_cookie(sk) };
    pruned(cookie, cookie, sk.cast(), discard)
}

/// fentry/tcp_collapse(struct sock *sk, struct sk_buff_head *list, struct rb_root
/// *root, ...): `root` NULL is tcp_prune_queue() collapsing the receive queue.
#[fentry(function = "tcp_collapse")]
pub fn tcp_prune_collapse_fentry(ctx: FEntryContext) -> u32 {
    let root: *const c_void = ctx.arg(2);
    if !root.is_null() {
        return 0;
    }
    by_cookie(ctx.arg(0), false)
}

/// fentry/tcp_prune_ofo_queue(struct sock *sk, ...): pruning goes on to discard data.
#[fentry(function = "tcp_prune_ofo_queue")]
pub fn tcp_prune_ofo_fentry(ctx: FEntryContext) -> u32 {
    by_cookie(ctx.arg(0), true)
}

/// kprobe/tcp_collapse: as tcp_prune_collapse_fentry, keyed by the socket's address
/// (no cookie helper for kprobes; userspace finds the socket by its ports).
#[kprobe]
pub fn tcp_prune_collapse_kprobe(ctx: ProbeContext) -> u32 {
    let Some(root) = ctx.arg::<u64>(2) else {
        return 0;
    };
    match ctx.arg::<u64>(0) {
        Some(sk) if root == 0 && sk != 0 => pruned(sk, 0, sk as *const u8, false),
        _ => 0,
    }
}

/// kprobe/tcp_prune_ofo_queue
#[kprobe]
pub fn tcp_prune_ofo_kprobe(ctx: ProbeContext) -> u32 {
    match ctx.arg::<u64>(0) {
        Some(sk) if sk != 0 => pruned(sk, 0, sk as *const u8, true),
        _ => 0,
    }
}
