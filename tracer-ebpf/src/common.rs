//! What every detector's programs share: the ring buffer of the run, the lost-event,
//! read-error and map-full counters, and small helpers for counters in maps.
use aya_ebpf::{
    Global,
    macros::map,
    maps::{LruHashMap, PerCpuArray, RingBuf, ring_buf::RingBufEntry},
    programs::TracePointContext,
};
use tracer_common::RING_BYTES;

/// The run's ring buffer. Only one detector's programs are attached per run, so this is
/// that detector's ring buffer; the loader sizes it per detector.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(RING_BYTES, 0);

/// Records that did not fit in EVENTS (failed reserve), per CPU. The loader sums it and
/// every report shows it as `lost_events`.
#[map]
pub static LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Bytes waiting in EVENTS above which a record wakes the reader at once; below it
/// records are submitted without a wakeup and the reader drains them on its timer
/// (every 100 ms). One wakeup per record would cost the reader more CPU than the
/// records themselves. Set by the loader (a quarter of the ring).
#[unsafe(no_mangle)]
static WAKEUP_BYTES: Global<u64> = Global::new(0);

/// Kernel reads that failed (a tracepoint field, a task_struct member, a string copied
/// into a record), per CPU. A failed read never passes as a zero: the program counts it
/// here and drops or marks what it was building; the loader sums it and every report
/// shows it as `kernel_read_errors`. A read that fails means an offset the loader
/// passed in does not fit this kernel. (Reads of user memory are not counted: a page
/// that is not present makes them fail on a healthy host.)
#[map]
pub static READ_ERRORS: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Map inserts that failed, per CPU. Every hash map here is an LRU map, which makes
/// room by evicting its least recently used entry; an insert still fails when the
/// kernel finds no element it can free (-ENOMEM, a map full of entries in use on other
/// CPUs). The program counts it here and goes on without the entry; the loader sums it
/// and every report shows it as `kernel_map_full`.
#[map]
pub static MAP_FULL: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// The insert's errno when the key is there already (BPF_NOEXIST): not a failure.
pub const EEXIST: i64 = 17;

/// Whether a map insert added its entry; a failure other than "already there" is
/// counted in [`MAP_FULL`].
#[inline(always)]
pub fn inserted<E: Into<i64>>(r: Result<(), E>) -> bool {
    match r {
        Ok(()) => true,
        Err(e) => {
            if e.into() != -EEXIST {
                add(&MAP_FULL, 0, 1);
            }
            false
        }
    }
}

/// The value of a kernel read, or `None` after counting the failure in [`READ_ERRORS`].
#[inline(always)]
pub fn counted<T, E>(r: Result<T, E>) -> Option<T> {
    match r {
        Ok(v) => Some(v),
        Err(_) => {
            add(&READ_ERRORS, 0, 1);
            None
        }
    }
}

const BPF_RB_AVAIL_DATA: u64 = 0;
const BPF_RB_NO_WAKEUP: u64 = 1;
const BPF_RB_FORCE_WAKEUP: u64 = 2;

/// Copies `ev` to the ring buffer, or counts it as lost.
#[inline(always)]
pub fn emit<T: Copy + 'static>(ev: &T) {
    if let Some(mut entry) = reserve::<T>() {
        entry.write(*ev);
        submit(entry);
    }
}

/// Reserves room for a `T` on the ring buffer, to be filled in place and handed to
/// [`submit`] (for records too large for the 512-byte BPF stack), or counts it as lost.
#[inline(always)]
pub fn reserve<T: 'static>() -> Option<RingBufEntry<T>> {
    let entry = EVENTS.reserve::<T>(0);
    if entry.is_none() {
        add(&LOST, 0, 1);
    }
    entry
}

/// Submits a reserved record, waking the reader only when the ring is filling up.
#[inline(always)]
pub fn submit<T: 'static>(entry: RingBufEntry<T>) {
    let flags = if EVENTS.query(BPF_RB_AVAIL_DATA) >= WAKEUP_BYTES.load() {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    entry.submit(flags);
}

/// Adds `n` to slot `idx` of a per-CPU counter array (no atomics needed per CPU).
#[inline(always)]
pub fn add(arr: &PerCpuArray<u64>, idx: u32, n: u64) {
    if let Some(p) = arr.get_ptr_mut(idx) {
        // SAFETY: per-CPU slot, preemption is disabled while a tracing program runs.
        unsafe { *p += n };
    }
}

/// Returns a pointer to the value for `key`, inserting `init` first when absent.
#[inline(always)]
pub fn get_or_insert<K, V>(map: &LruHashMap<K, V>, key: &K, init: &V) -> Option<*mut V> {
    if let Some(p) = map.get_ptr_mut(key) {
        return Some(p);
    }
    // BPF_NOEXIST: another CPU may have inserted it meanwhile; either way look it up again.
    inserted(map.insert(key, init, 1));
    map.get_ptr_mut(key)
}

/// Reads a tracepoint field at an offset the loader took from the tracepoint's
/// `format` file (passed in as a global). A failed read is counted and yields `None`.
#[inline(always)]
pub fn field<T>(ctx: &TracePointContext, off: &Global<u32>) -> Option<T> {
    // SAFETY: read_at goes through bpf_probe_read_kernel, which checks the address.
    counted(unsafe { ctx.read_at::<T>(off.load() as usize) })
}

/// tgid (process id) of the current task.
#[inline(always)]
pub fn current_tgid() -> u32 {
    (aya_ebpf::helpers::bpf_get_current_pid_tgid() >> 32) as u32
}

/// CLOCK_MONOTONIC nanoseconds.
#[inline(always)]
pub fn now_ns() -> u64 {
    // SAFETY: plain helper call without arguments.
    unsafe { aya_ebpf::helpers::bpf_ktime_get_ns() }
}
