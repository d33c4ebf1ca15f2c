//! The kernel's BTF, for fentry, fexit and tp_btf loads (and CO-RE relocations, which
//! the object has none of): parsed once, only when needed, from a mapping where the
//! kernel allows one; and the allocator setting that keeps its big buffers out of the
//! peak RSS afterwards.

use aya::{Btf, Ebpf, EbpfLoader, programs::Program};

use super::spec::{Hook, HookKind};

/// The kernel's BTF, parsed (for fentry, fexit and tp_btf loads and CO-RE relocations).
/// From a read-only mapping of /sys/kernel/btf/vmlinux where the kernel allows one
/// (6.16+): its pages are the kernel's own (remap_pfn_range) and not counted in our
/// RSS, so the parse peaks 5.3 MiB (the file's size here) lower than from a copy read
/// into the heap, which stays the way elsewhere.
pub(super) fn kernel_btf() -> Result<Btf, String> {
    parse_mapped(KERNEL_BTF)
        .unwrap_or_else(Btf::from_sys_fs)
        .map_err(|e| format!("no kernel BTF: {e}"))
}

const KERNEL_BTF: &str = "/sys/kernel/btf/vmlinux";

/// Parses the BTF at `path` from a private read-only mapping; None when it cannot be
/// mapped.
fn parse_mapped(path: &str) -> Option<Result<Btf, aya::BtfError>> {
    use std::os::fd::AsRawFd as _;
    let file = std::fs::File::open(path).ok()?;
    let len = usize::try_from(file.metadata().ok()?.len()).ok()?;
    if len == 0 {
        return None;
    }
    // SAFETY: a new private read-only mapping of `len` bytes of an open file; nothing
    // else in this process maps it, and it is unmapped below, after its last use.
    let at = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_PRIVATE,
            file.as_raw_fd(),
            0,
        )
    };
    if at == libc::MAP_FAILED {
        return None;
    }
    // SAFETY: `at` is a readable mapping of `len` bytes, alive until the munmap below;
    // the kernel's BTF does not change while the system runs.
    let data = unsafe { std::slice::from_raw_parts(at.cast::<u8>(), len) };
    let btf = Btf::parse(data, aya::Endianness::default());
    // SAFETY: unmaps the mapping made above; `data` is not used after this.
    unsafe { libc::munmap(at, len) };
    Some(btf)
}

/// A loader without the kernel BTF that `EbpfLoader::new()` parses (~13 MiB here,
/// ~18.5 MiB at the peak of the parse, the floor of every detector's peak RSS with
/// aya 0.14, which has no way to build a loader without it): aya uses it only for
/// CO-RE relocations, so it is dropped at once unless `OBJECT` has some, and a copy
/// the caller parses is handed in with `EbpfLoader::btf` when it does.
pub(super) fn loader_without_btf<'a>() -> EbpfLoader<'a> {
    let mut loader = EbpfLoader::new();
    loader.btf(None);
    loader
}

/// Whether `object` has CO-RE relocations (the only use aya's loader makes of the
/// kernel's BTF): the `core_relo_len` field of its `.BTF.ext` header (libbpf's struct
/// btf_ext_header). Unreadable counts as yes, so the loader keeps its BTF.
pub(super) fn has_core_relocations(object: &[u8]) -> bool {
    use object::{Object, ObjectSection};
    let Ok(file) = object::File::parse(object) else {
        return true;
    };
    let Some(ext) = file.section_by_name(".BTF.ext") else {
        return false;
    };
    let Ok(data) = ext.data() else {
        return true;
    };
    let u32_at = |o: usize| {
        data.get(o..o + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    // magic u16, version u8, flags u8, hdr_len u32, then func_info off/len,
    // line_info off/len, and (hdr_len >= 32) core_relo off/len.
    if data.get(..2) != Some(&0xeb9f_u16.to_le_bytes()[..]) {
        return true;
    }
    match u32_at(4) {
        Some(hdr_len) if hdr_len < 32 => false,
        Some(_) => u32_at(28).is_none_or(|len| len > 0),
        None => true,
    }
}

/// Loads a fentry, fexit or tp_btf program against its BTF target.
pub(super) fn load_btf_program(
    ebpf: &mut Ebpf,
    h: &Hook,
    btf: &Btf,
) -> Result<(), aya::programs::ProgramError> {
    let Some(p) = ebpf.program_mut(h.program) else {
        return Err(aya::programs::ProgramError::UnexpectedProgramType);
    };
    match (h.kind(), p) {
        (HookKind::FEntry, Program::FEntry(p)) => p.load(h.name, btf),
        (HookKind::FExit, Program::FExit(p)) => p.load(h.name, btf),
        (HookKind::BtfTracePoint, Program::BtfTracePoint(p)) => p.load(h.name, btf),
        _ => Err(aya::programs::ProgramError::UnexpectedProgramType),
    }
}

/// Makes glibc's malloc give big freed buffers back to the OS at once. By default
/// glibc raises its mmap threshold to the size of the last freed mmap'd chunk, so
/// once the loader's parse of the kernel's BTF freed its 5.3 MiB read buffer, the big
/// buffers of the next parse came from the heap and left holes there when freed.
/// Pinning the threshold (which also pins the trim threshold) keeps every allocation
/// of 1 MiB or more in its own mapping, unmapped on free: `tracer tcp-pressure -d 1s`
/// peaks at 23.9 MiB with it, 26.1 MiB without (medians of 5); the detectors that parse
/// the BTF once only (zombies) do not change.
///
/// It also caps glibc's malloc arenas at 2. Each thread that allocates can get an arena
/// of its own, and the blocking threads that build reports come and go: over a 10-minute
/// `cargo xtask bench serve` the tracer's RSS grew 28 MiB with the default (8 per core)
/// and 4.7 MiB with one arena. The tracer's threads seldom allocate at the same time.
pub fn return_big_buffers() {
    // SAFETY: mallopt only sets allocator parameters; called first thing in main.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bpf::OBJECT;

    #[test]
    fn the_object_has_no_core_relocations_and_garbage_counts_as_having_some() {
        assert!(!has_core_relocations(OBJECT));
        assert!(has_core_relocations(b"not an ELF object"));
    }

    /// Where the kernel lets /sys/kernel/btf/vmlinux be mapped (6.16+), the mapped
    /// parse is the same BTF as aya's own read.
    #[test]
    fn the_mapped_kernel_btf_is_the_read_one() {
        // Mappable from 6.16 on (sysfs BTF mmap support); read into the heap before.
        let release = super::super::probe::kernel_release();
        let mut v = release
            .split(|c: char| !c.is_ascii_digit())
            .filter_map(|n| n.parse::<u32>().ok());
        let (major, minor) = (v.next().unwrap_or(0), v.next().unwrap_or(0));
        let mapped = parse_mapped(KERNEL_BTF);
        if (major, minor) < (6, 16) {
            assert!(mapped.is_none(), "{release} mapped its BTF");
            return;
        }
        let mapped = mapped.unwrap_or_else(|| panic!("{release} did not map its BTF"));
        let read = Btf::from_sys_fs().unwrap();
        assert!(mapped.unwrap().to_bytes() == read.to_bytes());
    }
}
