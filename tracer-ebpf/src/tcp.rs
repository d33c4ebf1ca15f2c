//! tcp-pressure: TCP socket-memory refusals, memory-related drops, retransmits and
//! the latency of send-type syscalls on TCP sockets, split by "under pressure".
//!
//! Only refusals (sock_exceed_buf_limit, rare and refused under pressure only) are
//! copied to userspace, one record each. Drops (kfree_skb fires per dropped packet)
//! are filtered to the memory-related reasons in the kernel and counted per CPU;
//! retransmits and receive-queue overflows are counted; send latencies go into an
//! in-kernel log-linear histogram, so a bulk sender costs no ring-buffer traffic.
use core::ffi::c_void;

use aya_ebpf::{
    Global,
    helpers::{
        bpf_get_current_comm,
        generated::{bpf_get_socket_cookie, bpf_skc_to_tcp_sock},
    },
    macros::{btf_tracepoint, fentry, fexit, kprobe, kretprobe, map, tracepoint},
    maps::{Array, LruHashMap, PerCpuArray},
    programs::{
        BtfTracePointContext, FEntryContext, FExitContext, ProbeContext, RetProbeContext,
        TracePointContext,
    },
};
use tracer_common::{
    EventHeader, EventKind,
    tcp::{
        BufLimitEvent, COUNT_DROP_BASE, COUNT_RCVQ_FULL, COUNT_REFUSALS, COUNT_RETRANS_NORMAL,
        COUNT_RETRANS_PRESSURE, COUNT_SLOTS, DROP_REASON_CAPACITY, DROP_SLOTS, EDGE_ENTER,
        EDGE_LEAVE, FLAG_BTF, FLAG_EDGE, FLAG_PRESSURE, FLAG_SLOTS, LAT_BUCKETS, LAT_SLOTS,
        PressureEdgeEvent, SEND_START_CAPACITY, TCP_SENDERS_CAPACITY, VIA_FENTRY, VIA_KPROBE,
        lat_bucket,
    },
};

use crate::common::{add, current_tgid, emit, field, inserted, now_ns};

/// Field offsets from tracefs `format` files, set by the loader.
#[unsafe(no_mangle)]
static TCP_LIMIT_NAME: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static TCP_LIMIT_SYSCTL_MEM: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static TCP_LIMIT_ALLOCATED: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static TCP_LIMIT_SYSCTL_RMEM: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static TCP_LIMIT_RMEM_ALLOC: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static TCP_LIMIT_SYSCTL_WMEM: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static TCP_LIMIT_WMEM_ALLOC: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static TCP_LIMIT_WMEM_QUEUED: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static TCP_LIMIT_KIND: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static TCP_DROP_REASON: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static TCP_SEND_FAMILY: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static TCP_SEND_PROTOCOL: Global<u32> = Global::new(0);

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const IPPROTO_TCP: u16 = 6;

/// Drop reason number -> 1 + counter slot (0: not memory-related, not counted).
/// Userspace fills it from the names in skb:kfree_skb's format file, because the
/// numbers differ between kernels.
#[map]
static TCP_DROP_SLOT: Array<u32> = Array::with_max_entries(DROP_REASON_CAPACITY, 0);

/// Global counters per CPU (retransmits split by pressure, rcvqueue_full, refusals,
/// then one slot per counted drop reason).
#[map]
pub(crate) static TCP_COUNTS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNT_SLOTS, 0);

/// [FLAG_PRESSURE]: 1 while TCP memory pressure is on (see tracer_common::tcp).
#[map]
static TCP_FLAGS: Array<u32> = Array::with_max_entries(FLAG_SLOTS, 0);

/// Thread id -> entry time of its current send-type syscall.
#[map]
static TCP_SEND_START: LruHashMap<u32, u64> = LruHashMap::with_max_entries(SEND_START_CAPACITY, 0);

/// Threads that sent on a TCP socket (value unused): their write()/writev() calls are
/// timed, everybody else's cost one lookup.
#[map]
static TCP_SENDERS: LruHashMap<u32, u8> = LruHashMap::with_max_entries(TCP_SENDERS_CAPACITY, 0);

/// Send latency histogram per CPU: LAT_BUCKETS normal buckets, then LAT_BUCKETS
/// pressure buckets (log-linear over ns, see tracer_common::tcp::lat_bucket).
#[map]
static TCP_SEND_HIST: PerCpuArray<u64> = PerCpuArray::with_max_entries(LAT_SLOTS, 0);

/// Largest send latency per CPU: [normal, pressure] (exact ns).
#[map]
static TCP_SEND_MAX: PerCpuArray<u64> = PerCpuArray::with_max_entries(2, 0);

/// Sum of the send latencies per CPU: [normal, pressure] (exact ns; the Prometheus
/// histogram's `_sum`, which the buckets cannot give).
#[map]
static TCP_SEND_SUM: PerCpuArray<u64> = PerCpuArray::with_max_entries(2, 0);

#[inline(always)]
fn flag(slot: u32) -> u32 {
    match TCP_FLAGS.get(slot) {
        Some(&f) if f != 0 => 1,
        _ => 0,
    }
}

#[inline(always)]
pub(crate) fn pressure() -> u32 {
    flag(FLAG_PRESSURE)
}

/// A TCP refusal happens only under pressure or above the hard limit (which enters
/// pressure first): from here on sends count as "during pressure".
#[inline(always)]
fn refused() {
    if let Some(f) = TCP_FLAGS.get_ptr_mut(FLAG_PRESSURE) {
        // SAFETY: pointer from an array lookup; a plain store of 1 is idempotent.
        unsafe { *f = 1 };
    }
    add(&TCP_COUNTS, COUNT_REFUSALS, 1);
}

/// The record of a refusal by the current task, without the per-path fields.
#[inline(always)]
fn refusal(kind: i32, allocated: i64) -> BufLimitEvent {
    BufLimitEvent {
        header: EventHeader {
            kind: EventKind::TcpBufLimit as u32,
            tgid: current_tgid(),
            ts_ns: now_ns(),
        },
        kind: kind as u32,
        allocated: allocated as u64,
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
        ..BufLimitEvent::default()
    }
}

/// tp_btf/sock_exceed_buf_limit(struct sock *sk, struct proto *prot, long allocated,
/// int kind): the same event with the socket itself, so the record carries the
/// socket's cookie and userspace can name the socket and its owner (a receive-side
/// refusal runs in softirq context, where the current task is a bystander).
/// bpf_skc_to_tcp_sock() is NULL for anything but a TCP socket: the kernel's own
/// type check, no struct offsets needed.
#[btf_tracepoint(function = "sock_exceed_buf_limit")]
pub fn tcp_buf_limit_sk(ctx: BtfTracePointContext) -> i32 {
    let sk: *mut c_void = ctx.arg(0);
    // SAFETY: sk is the tracepoint's trusted struct sock pointer (PTR_TO_BTF_ID); both
    // helpers take exactly that.
    if unsafe { bpf_skc_to_tcp_sock(sk) }.is_null() {
        return 0;
    }
    let cookie = unsafe { bpf_get_socket_cookie(sk) };
    let allocated: i64 = ctx.arg(2);
    let kind: i32 = ctx.arg(3);
    refused();
    emit(&BufLimitEvent {
        cookie,
        ..refusal(kind, allocated)
    });
    0
}

/// sock:sock_exceed_buf_limit: the kernel refused a socket-memory allocation.
/// `name` is the protocol ("TCP", "TCPv6", "UDP", ...), `allocated` the pages the
/// protocol holds, `sysctl_mem` its limits (tcp_mem), `kind` SK_MEM_SEND/RECV, and
/// the rmem/wmem fields the socket's own buffer figures.
#[tracepoint]
pub fn tcp_buf_limit(ctx: TracePointContext) -> u32 {
    try_buf_limit(&ctx).unwrap_or(0)
}

fn try_buf_limit(ctx: &TracePointContext) -> Option<u32> {
    let name: [u8; 8] = field(ctx, &TCP_LIMIT_NAME)?;
    // "TCP\0" or "TCPv6\0"; MPTCP and UDP are not TCP memory.
    let ipv6 = match name {
        [b'T', b'C', b'P', 0, ..] => 0,
        [b'T', b'C', b'P', b'v', b'6', 0, ..] => 1,
        _ => return Some(0),
    };
    if flag(FLAG_BTF) != 0 {
        // tcp_buf_limit_sk has this refusal, with its socket.
        return Some(0);
    }
    refused();
    let mem: [i64; 3] = field(ctx, &TCP_LIMIT_SYSCTL_MEM)?;
    let allocated: i64 = field(ctx, &TCP_LIMIT_ALLOCATED)?;
    let kind: i32 = field(ctx, &TCP_LIMIT_KIND)?;
    emit(&BufLimitEvent {
        ipv6,
        sysctl_mem: [mem[0] as u64, mem[1] as u64, mem[2] as u64],
        sysctl_rmem: field(ctx, &TCP_LIMIT_SYSCTL_RMEM).unwrap_or(0),
        rmem_alloc: field(ctx, &TCP_LIMIT_RMEM_ALLOC).unwrap_or(0),
        sysctl_wmem: field(ctx, &TCP_LIMIT_SYSCTL_WMEM).unwrap_or(0),
        wmem_alloc: field(ctx, &TCP_LIMIT_WMEM_ALLOC).unwrap_or(0),
        wmem_queued: field(ctx, &TCP_LIMIT_WMEM_QUEUED).unwrap_or(0),
        ..refusal(kind, allocated)
    });
    Some(0)
}

/// sock:sock_rcvqueue_full: a packet did not fit the socket's receive buffer
/// (`rmem_alloc` + `truesize` > `sk_rcvbuf`). Counted only: it fires in softirq
/// context, where the current task is not the socket's owner.
#[tracepoint]
pub fn tcp_rcvq_full(_ctx: TracePointContext) -> u32 {
    add(&TCP_COUNTS, COUNT_RCVQ_FULL, 1);
    0
}

/// skb:kfree_skb: a packet was dropped; `reason` is an enum skb_drop_reason. Only the
/// memory-related reasons userspace put in TCP_DROP_SLOT are counted.
#[tracepoint]
pub fn tcp_drop(ctx: TracePointContext) -> u32 {
    try_drop(&ctx).unwrap_or(0)
}

fn try_drop(ctx: &TracePointContext) -> Option<u32> {
    let reason: u32 = field(ctx, &TCP_DROP_REASON)?;
    if reason >= DROP_REASON_CAPACITY {
        return Some(0);
    }
    let slot = *TCP_DROP_SLOT.get(reason)?;
    if slot == 0 || slot > DROP_SLOTS {
        return Some(0);
    }
    add(&TCP_COUNTS, COUNT_DROP_BASE + slot - 1, 1);
    Some(0)
}

/// tcp:tcp_retransmit_skb: a TCP segment was retransmitted; counted apart during
/// pressure.
#[tracepoint]
pub fn tcp_retransmit(_ctx: TracePointContext) -> u32 {
    let slot = if pressure() != 0 {
        COUNT_RETRANS_PRESSURE
    } else {
        COUNT_RETRANS_NORMAL
    };
    add(&TCP_COUNTS, slot, 1);
    0
}

/// Entry of a send-type syscall: remember when this thread started it. sendto,
/// sendmsg and sendmmsg are socket calls and always timed; write and writev go to files and pipes
/// too, so they are timed only for threads known to send on TCP sockets (the first
/// write of a thread to a TCP socket makes it known and is not timed). Entries that
/// never reach a TCP send are overwritten by the thread's next one or evicted (LRU).
#[inline(always)]
fn send_enter(socket_call: bool) -> u32 {
    let tid = aya_ebpf::helpers::bpf_get_current_pid_tgid() as u32;
    // SAFETY: plain map lookup; only presence matters.
    if !socket_call && unsafe { TCP_SENDERS.get(&tid) }.is_none() {
        return 0;
    }
    inserted(TCP_SEND_START.insert(&tid, &now_ns(), 0));
    0
}

/// syscalls:sys_enter_sendto
#[tracepoint]
pub fn tcp_enter_sendto(_ctx: TracePointContext) -> u32 {
    send_enter(true)
}

/// syscalls:sys_enter_sendmsg
#[tracepoint]
pub fn tcp_enter_sendmsg(_ctx: TracePointContext) -> u32 {
    send_enter(true)
}

/// syscalls:sys_enter_sendmmsg (one start for the batch: the first message's latency
/// is timed, the others are not)
#[tracepoint]
pub fn tcp_enter_sendmmsg(_ctx: TracePointContext) -> u32 {
    send_enter(true)
}

/// syscalls:sys_enter_write
#[tracepoint]
pub fn tcp_enter_write(_ctx: TracePointContext) -> u32 {
    send_enter(false)
}

/// syscalls:sys_enter_writev
#[tracepoint]
pub fn tcp_enter_writev(_ctx: TracePointContext) -> u32 {
    send_enter(false)
}

/// sock:sock_send_length: sock_sendmsg() returned (`ret` bytes or -errno) on a socket
/// of `family`/`protocol`. For TCP this closes the send started at syscall entry,
/// including any time spent waiting for socket memory.
#[tracepoint]
pub fn tcp_send_length(ctx: TracePointContext) -> u32 {
    try_send_length(&ctx).unwrap_or(0)
}

fn try_send_length(ctx: &TracePointContext) -> Option<u32> {
    let family: u16 = field(ctx, &TCP_SEND_FAMILY)?;
    let protocol: u16 = field(ctx, &TCP_SEND_PROTOCOL)?;
    if (family != AF_INET && family != AF_INET6) || protocol != IPPROTO_TCP {
        return Some(0);
    }
    let tid = aya_ebpf::helpers::bpf_get_current_pid_tgid() as u32;
    // SAFETY: plain map lookup of a u64 value.
    let Some(start) = unsafe { TCP_SEND_START.get(&tid) }.copied() else {
        // Not timed (a thread's first write to a TCP socket): time the next ones.
        if unsafe { TCP_SENDERS.get(&tid) }.is_none() {
            inserted(TCP_SENDERS.insert(&tid, &0, 0));
        }
        return Some(0);
    };
    let _ = TCP_SEND_START.remove(&tid);
    record_send(start);
    Some(0)
}

/// Times a send that started at `start` (ns) and ended now, into the normal or the
/// pressure half of the histogram.
#[inline(always)]
fn record_send(start: u64) {
    let ns = now_ns().saturating_sub(start);
    let p = pressure();
    add(&TCP_SEND_HIST, p * LAT_BUCKETS + lat_bucket(ns), 1);
    add(&TCP_SEND_SUM, p, ns);
    if let Some(m) = TCP_SEND_MAX.get_ptr_mut(p) {
        // SAFETY: per-CPU slot, preemption is disabled while a tracing program runs.
        unsafe {
            if ns > *m {
                *m = ns;
            }
        }
    }
}

/// Start of a tcp_sendmsg() call of this thread (fast paths: fentry or kprobe).
#[inline(always)]
fn sendmsg_start() -> u32 {
    let tid = aya_ebpf::helpers::bpf_get_current_pid_tgid() as u32;
    inserted(TCP_SEND_START.insert(&tid, &now_ns(), 0));
    0
}

/// End of this thread's tcp_sendmsg() call: its latency, including any wait for
/// socket memory (sk_stream_wait_memory) under pressure.
#[inline(always)]
fn sendmsg_end() -> u32 {
    let tid = aya_ebpf::helpers::bpf_get_current_pid_tgid() as u32;
    // SAFETY: plain map lookup of a u64 value.
    let Some(start) = (unsafe { TCP_SEND_START.get(&tid) }).copied() else {
        return 0;
    };
    let _ = TCP_SEND_START.remove(&tid);
    record_send(start);
    0
}

/// fentry/tcp_sendmsg(struct sock *sk, struct msghdr *msg, size_t size): every send
/// on a TCP socket (send, sendto, sendmsg, write, writev) enters here.
#[fentry(function = "tcp_sendmsg")]
pub fn tcp_sendmsg_fentry(_ctx: FEntryContext) -> u32 {
    sendmsg_start()
}

/// fexit/tcp_sendmsg: the send returned (bytes or -errno).
#[fexit(function = "tcp_sendmsg")]
pub fn tcp_sendmsg_fexit(_ctx: FExitContext) -> u32 {
    sendmsg_end()
}

/// kprobe/tcp_sendmsg: as tcp_sendmsg_fentry where BPF trampolines are refused.
#[kprobe]
pub fn tcp_sendmsg_kprobe(_ctx: ProbeContext) -> u32 {
    sendmsg_start()
}

/// kretprobe/tcp_sendmsg: as tcp_sendmsg_fexit.
#[kretprobe]
pub fn tcp_sendmsg_kretprobe(_ctx: RetProbeContext) -> u32 {
    sendmsg_end()
}

/// TCP entered memory pressure (or tried to: tcp_enter_memory_pressure() runs on
/// every allocation above tcp_mem's "pressure" and returns at once when pressure is
/// already on). Only the first call after a leave is an edge: it sets the pressure
/// flag (send latency is split at the kernel's own moment) and is copied out with
/// the socket whose allocation caused it (`cookie`, 0 from kprobes) and the current
/// task, which in softirq is a bystander.
#[inline(always)]
fn pressure_enter(cookie: u64, via: u32) -> u32 {
    let Some(edge) = TCP_FLAGS.get_ptr_mut(FLAG_EDGE) else {
        return 0;
    };
    // SAFETY: pointer from an array lookup. Two CPUs may both see 0 and both report
    // an entry: userspace keeps the first.
    unsafe {
        if *edge != 0 {
            return 0;
        }
        *edge = 1;
    }
    if let Some(f) = TCP_FLAGS.get_ptr_mut(FLAG_PRESSURE) {
        // SAFETY: as above.
        unsafe { *f = 1 };
    }
    emit(&edge_event(EDGE_ENTER, cookie, via));
    0
}

/// TCP left memory pressure. tcp_leave_memory_pressure() is called when memory is
/// released below tcp_mem's "low" while the socket is under memory pressure, and
/// sk_under_memory_pressure() is also true while the socket's memory cgroup is under
/// socket pressure (vmpressure) with TCP's own flag off: then the call returns at once,
/// and under a busy memcg it comes on every release (thousands a second, which filled
/// the ring on a 6.12 guest). Only a call while pressure is on as far as this tracer
/// knows (an entering edge seen, or userspace's sampling set the flag) is an edge.
#[inline(always)]
fn pressure_leave(cookie: u64, via: u32) -> u32 {
    if flag(FLAG_EDGE) == 0 && flag(FLAG_PRESSURE) == 0 {
        return 0;
    }
    for slot in [FLAG_EDGE, FLAG_PRESSURE] {
        if let Some(f) = TCP_FLAGS.get_ptr_mut(slot) {
            // SAFETY: pointer from an array lookup.
            unsafe { *f = 0 };
        }
    }
    emit(&edge_event(EDGE_LEAVE, cookie, via));
    0
}

#[inline(always)]
fn edge_event(edge: u32, cookie: u64, via: u32) -> PressureEdgeEvent {
    PressureEdgeEvent {
        header: EventHeader {
            kind: EventKind::TcpPressureEdge as u32,
            tgid: current_tgid(),
            ts_ns: now_ns(),
        },
        edge,
        via,
        cookie,
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
    }
}

/// Cookie of the socket a tracing program got as a trusted struct sock pointer.
#[inline(always)]
fn cookie_of(sk: *mut c_void) -> u64 {
    // SAFETY: sk is the traced function's struct sock argument (PTR_TO_BTF_ID), which
    // bpf_get_socket_cookie takes in tracing programs (5.12+).
    unsafe { bpf_get_socket_cookie(sk) }
}

/// fentry/tcp_enter_memory_pressure(struct sock *sk)
#[fentry(function = "tcp_enter_memory_pressure")]
pub fn tcp_enter_pressure_fentry(ctx: FEntryContext) -> u32 {
    let sk: *mut c_void = ctx.arg(0);
    if sk.is_null() {
        return pressure_enter(0, VIA_FENTRY);
    }
    pressure_enter(cookie_of(sk), VIA_FENTRY)
}

/// fentry/tcp_leave_memory_pressure(struct sock *sk)
#[fentry(function = "tcp_leave_memory_pressure")]
pub fn tcp_leave_pressure_fentry(ctx: FEntryContext) -> u32 {
    let sk: *mut c_void = ctx.arg(0);
    if sk.is_null() {
        return pressure_leave(0, VIA_FENTRY);
    }
    pressure_leave(cookie_of(sk), VIA_FENTRY)
}

/// kprobe/tcp_enter_memory_pressure: the socket is a plain number here (no cookie
/// helper for kprobes), so the entry carries the current task only.
#[kprobe]
pub fn tcp_enter_pressure_kprobe(_ctx: ProbeContext) -> u32 {
    pressure_enter(0, VIA_KPROBE)
}

/// kprobe/tcp_leave_memory_pressure
#[kprobe]
pub fn tcp_leave_pressure_kprobe(_ctx: ProbeContext) -> u32 {
    pressure_leave(0, VIA_KPROBE)
}
