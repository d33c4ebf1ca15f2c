//! Inode creations on every filesystem, not only ext4: which kernel path counts them
//! (the VFS hook where fentry or kprobes exist, the successful create syscalls on
//! tracepoint-only kernels), the kernel struct offsets those programs read (from the
//! kernel's BTF), and what the report says about it.
use anyhow::{Context as _, Result};
use aya::maps::{Array, MapData};
use serde::{Deserialize, Serialize};
use tracer_common::inodes::{
    CREATIONS_OFF, CREATIONS_SYSCALLS, CREATIONS_VFS, FLAG_CREATIONS, FLAG_EXT4_TRACED,
};

use crate::{
    bpf::{self, Choice, Hook, HookState},
    kbtf::KernelBtf,
};

/// Choice name (key of `Session::took`).
pub const CREATIONS: &str = "inode creations";

/// The VFS hook, fast path first; `tracer doctor` probes the same list.
pub const CHOICES: &[Choice] = &[Choice {
    name: CREATIONS,
    purpose: "attribute inode creations on every filesystem (xfs, tmpfs, btrfs, overlayfs, ...) \
              to the process and directory",
    paths: &[
        bpf::Path {
            name: "fentry",
            hooks: &[Hook::fentry(
                "inodes_init_owner_fentry",
                "inode_init_owner",
                "every new inode a filesystem sets up, with its parent directory",
            )],
        },
        bpf::Path {
            name: "kprobe",
            hooks: &[Hook::kprobe(
                "inodes_init_owner_kprobe",
                "inode_init_owner",
                "every new inode a filesystem sets up, with its parent directory",
            )],
        },
    ],
    otherwise: "creations counted at the exit of the create syscalls: open/creat exactly (the \
                file's FMODE_CREATED), mkdir/mknod/symlink placed from their path argument",
}];

/// How inode creations on a filesystem are counted per process and directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CreationHook {
    /// ext4's own tracepoints (ext4:ext4_allocate_inode), frees included.
    Ext4Tracepoints,
    /// fentry on inode_init_owner: every new inode of every filesystem.
    Fentry,
    /// kprobe on inode_init_owner, where BPF trampolines are refused.
    Kprobe,
    /// The exit of create syscalls that worked (tracepoint-only kernels): opens that
    /// created their file, exactly; mkdir/mknod/symlink placed from their path.
    Syscalls,
    /// Not counted (no hook): usage and rate from statvfs only.
    None,
}

impl CreationHook {
    pub fn as_str(self) -> &'static str {
        match self {
            CreationHook::Ext4Tracepoints => "ext4 tracepoints",
            CreationHook::Fentry => "fentry inode_init_owner",
            CreationHook::Kprobe => "kprobe inode_init_owner",
            CreationHook::Syscalls => "create syscalls",
            CreationHook::None => "none",
        }
    }
}

/// The report's word on creations: the path that counts them on filesystems other
/// than ext4 (or on ext4 without its tracepoints), and why when it is not the VFS hook.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Creations {
    pub hook: CreationHook,
    /// The choice as taken (`fentry`, or `kprobe (fentry: ...)`, or why none).
    pub detail: String,
    /// mkdir/mknod/symlink calls that worked but could not be placed on a filesystem
    /// and directory: a path with a slash in it, relative to a cwd or dirfd, from a
    /// process that exited before it was resolved (the syscall path only; None on the
    /// others, which place every creation).
    pub unplaced: Option<u64>,
}

/// The BTF struct offsets the creation programs read, as globals; Err when the kernel
/// has no BTF or lacks a member (then creations are counted on ext4 only).
pub fn globals() -> Result<Vec<(&'static str, u32)>> {
    let b = KernelBtf::from_sys_fs()?;
    Ok(vec![
        ("INODES_INODE_SB", b.member_offset("inode", "i_sb")?),
        ("INODES_INODE_INO", b.member_offset("inode", "i_ino")?),
        ("INODES_SB_DEV", b.member_offset("super_block", "s_dev")?),
        (
            "INODES_SB_MAGIC",
            b.member_offset("super_block", "s_magic")?,
        ),
        (
            "INODES_TASK_FILES",
            b.member_offset("task_struct", "files")?,
        ),
        ("INODES_FILES_FDT", b.member_offset("files_struct", "fdt")?),
        ("INODES_FDT_MAX", b.member_offset("fdtable", "max_fds")?),
        ("INODES_FDT_FD", b.member_offset("fdtable", "fd")?),
        ("INODES_FILE_MODE", b.member_offset("file", "f_mode")?),
        ("INODES_FILE_INODE", b.member_offset("file", "f_inode")?),
        (
            "INODES_FILE_DENTRY",
            b.member_offset("file", "f_path")? + b.member_offset("path", "dentry")?,
        ),
        (
            "INODES_DENTRY_PARENT",
            b.member_offset("dentry", "d_parent")?,
        ),
        ("INODES_DENTRY_INODE", b.member_offset("dentry", "d_inode")?),
        ("INODES_TASK_FS", b.member_offset("task_struct", "fs")?),
        (
            "INODES_FS_ROOT_DENTRY",
            b.member_offset("fs_struct", "root")? + b.member_offset("path", "dentry")?,
        ),
        (
            "INODES_FS_PWD_DENTRY",
            b.member_offset("fs_struct", "pwd")? + b.member_offset("path", "dentry")?,
        ),
    ])
}

/// The kernel side of creations once the hooks are attached.
pub struct Counting {
    pub hook: CreationHook,
    pub detail: String,
}

/// Sets which path counts creations (the VFS hook if it attached, else the syscall
/// exits if the offsets were read and sys_exit_openat attached) and whether ext4's
/// tracepoints count ext4's; `offsets` is why the BTF offsets are missing, if they are.
pub fn start(
    session: &mut bpf::Session,
    ext4_traced: bool,
    offsets: Option<&str>,
) -> Result<Counting> {
    let chosen = session.chosen(CREATIONS).cloned();
    let attached =
        |p: &str| (session.hooks.iter()).any(|h| h.program == p && h.state == HookState::Attached);
    let (hook, detail) = match (chosen.as_ref().and_then(|c| c.path), offsets) {
        (_, Some(why)) => (CreationHook::None, format!("not counted: {why}")),
        (Some("fentry"), None) => (CreationHook::Fentry, describe(&chosen)),
        (Some(_), None) => (CreationHook::Kprobe, describe(&chosen)),
        (None, None) if attached("inodes_exit_openat") => {
            (CreationHook::Syscalls, describe(&chosen))
        }
        (None, None) => (
            CreationHook::None,
            "not counted: syscalls:sys_exit_openat is not attached".into(),
        ),
    };
    let mode = match hook {
        CreationHook::Fentry | CreationHook::Kprobe => CREATIONS_VFS,
        CreationHook::Syscalls => CREATIONS_SYSCALLS,
        _ => CREATIONS_OFF,
    };
    let mut flags: Array<MapData, u32> = Array::try_from(session.take_map("INODES_FLAGS")?)?;
    flags
        .set(FLAG_EXT4_TRACED, ext4_traced as u32, 0)
        .context("setting the inodes flags")?;
    flags
        .set(FLAG_CREATIONS, mode, 0)
        .context("enabling the inode creation programs")?;
    Ok(Counting { hook, detail })
}

/// The path taken, or on the syscall path why the VFS paths were refused.
fn describe(c: &Option<bpf::Chosen>) -> String {
    match c {
        Some(c) if c.path.is_none() => (c.refused.iter())
            .map(|(p, e)| format!("{p}: {e}"))
            .collect::<Vec<_>>()
            .join("; "),
        Some(c) => c.describe(),
        None => String::new(),
    }
}

impl Counting {
    /// The hook that counts creations on a filesystem of type `fstype`.
    pub fn hook_for(&self, fstype: &str, ext4_traced: bool) -> CreationHook {
        if ext4_traced && fstype.starts_with("ext") {
            CreationHook::Ext4Tracepoints
        } else {
            self.hook
        }
    }

    /// `unplaced`: the syscall path's creations userspace could not place.
    pub fn report(&self, unplaced: u64) -> Creations {
        Creations {
            hook: self.hook,
            detail: self.detail.clone(),
            unplaced: (self.hook == CreationHook::Syscalls).then_some(unplaced),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_kernel_has_every_member_the_creation_programs_read() {
        let g = globals().unwrap();
        assert_eq!(g.len(), 16);
        // f_path.dentry lies past f_path's start, whatever union holds it.
        let at = |n: &str| g.iter().find(|(k, _)| *k == n).unwrap().1;
        assert!(at("INODES_FILE_DENTRY") > 0 && at("INODES_SB_DEV") > 0);
    }

    #[test]
    fn ext4_keeps_its_tracepoints_and_the_others_take_the_run_path() {
        let c = Counting {
            hook: CreationHook::Syscalls,
            detail: String::new(),
        };
        assert_eq!(c.hook_for("ext4", true), CreationHook::Ext4Tracepoints);
        assert_eq!(c.hook_for("ext4", false), CreationHook::Syscalls);
        assert_eq!(c.hook_for("xfs", true), CreationHook::Syscalls);
        assert_eq!(c.report(2).unplaced, Some(2));
        assert_eq!(
            serde_json::to_string(&CreationHook::Ext4Tracepoints).unwrap(),
            "\"ext4_tracepoints\""
        );
    }

    #[test]
    fn the_detail_names_why_the_vfs_paths_were_refused() {
        let chosen = bpf::Chosen::of(
            &CHOICES[0],
            None,
            vec![("fentry", "EPERM".into()), ("kprobe", "no kprobes".into())],
        );
        assert_eq!(describe(&Some(chosen)), "fentry: EPERM; kprobe: no kprobes");
        let fast = bpf::Chosen::of(&CHOICES[0], Some("fentry"), vec![]);
        assert_eq!(describe(&Some(fast)), "fentry");
    }
}
