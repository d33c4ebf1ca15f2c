//! tracefs: where it is (mounting it when it is missing, as perf and bpftrace do) and
//! the tracepoint `format` files, from which kernel programs get their field offsets.
use std::{
    fs,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};

use crate::bpf::caps;

const TRACEFS: &str = "/sys/kernel/tracing";
const DEBUGFS_TRACING: &str = "/sys/kernel/debug/tracing";

#[derive(Clone, Debug)]
pub struct Tracefs {
    root: PathBuf,
}

impl Tracefs {
    /// Finds tracefs, mounting it at /sys/kernel/tracing when neither usual place has it.
    pub fn open() -> Result<Self> {
        if let Some(t) = Self::find() {
            return Ok(t);
        }
        if let Some(why) = Self::unreadable() {
            bail!("{why}");
        }
        log::debug!("tracefs is not mounted; mounting it at {TRACEFS}");
        nix::mount::mount(
            Some("tracefs"),
            TRACEFS,
            Some("tracefs"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .map_err(|e| {
            let how = format!("mount it with `mount -t tracefs tracefs {TRACEFS}` and run again");
            match e {
                nix::Error::EPERM => anyhow::anyhow!(
                    "tracefs is not mounted, and mounting it at {TRACEFS} needs CAP_SYS_ADMIN, \
                     which this process lacks (EPERM); as root, {how}"
                ),
                e => anyhow::anyhow!(
                    "tracefs is not mounted and mounting it at {TRACEFS} failed ({e}); {how}"
                ),
            }
        })?;
        Self::find().with_context(|| format!("tracefs mounted at {TRACEFS} has no events/"))
    }

    /// Why [`Tracefs::find`] found nothing, without mounting: tracefs is mounted where
    /// this process cannot read it, or it is not mounted.
    pub fn why_not_found() -> String {
        Self::unreadable()
            .unwrap_or_else(|| format!("not mounted at {TRACEFS} nor {DEBUGFS_TRACING}"))
    }

    /// A usual place where tracefs is mounted (as /proc/self/mountinfo says) but its
    /// `events/` cannot be read, said in one sentence.
    fn unreadable() -> Option<String> {
        let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mounted = |dir: &str| {
            mounts.lines().any(|l| {
                // mountinfo: ID PARENT MAJ:MIN ROOT MOUNT_POINT ... - FSTYPE SOURCE OPTS
                let (pre, post) = l.split_once(" - ").unwrap_or((l, ""));
                pre.split(' ').nth(4) == Some(dir) && post.starts_with("tracefs ")
            })
        };
        [TRACEFS, DEBUGFS_TRACING].iter().find_map(|dir| {
            let err = fs::metadata(Path::new(dir).join("events")).err()?;
            if !mounted(dir) || err.kind() != std::io::ErrorKind::PermissionDenied {
                return None;
            }
            let whose = fs::metadata(dir).map_or(String::new(), |m| {
                format!(": it is uid {}'s, mode {:04o}", m.uid(), m.mode() & 0o7777)
            });
            Some(format!(
                "tracefs is mounted at {dir} but this process cannot read it (permission \
                 denied{whose}); reading it needs {} or root",
                caps::READ_TRACEFS.name
            ))
        })
    }

    /// tracefs if it is mounted already (TRACER_TRACEFS overrides, for tests).
    pub fn find() -> Option<Self> {
        if let Some(p) = std::env::var_os("TRACER_TRACEFS") {
            return Some(Self {
                root: PathBuf::from(p),
            });
        }
        [TRACEFS, DEBUGFS_TRACING]
            .iter()
            .map(Path::new)
            .find(|p| p.join("events").is_dir())
            .map(|p| Self {
                root: p.to_path_buf(),
            })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn has_tracepoint(&self, category: &str, name: &str) -> bool {
        self.root
            .join("events")
            .join(category)
            .join(name)
            .join("format")
            .is_file()
    }

    /// Parsed `events/<category>/<name>/format`.
    pub fn format(&self, category: &str, name: &str) -> Result<Format> {
        let path = self
            .root
            .join("events")
            .join(category)
            .join(name)
            .join("format");
        let text = fs::read_to_string(&path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                anyhow::anyhow!("tracepoint {category}:{name} does not exist on this kernel")
            } else {
                anyhow::anyhow!("reading {}: {e}", path.display())
            }
        })?;
        Format::parse(&text).with_context(|| format!("parsing {}", path.display()))
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Field {
    pub name: String,
    pub ctype: String,
    pub offset: u32,
    pub size: u32,
    pub signed: bool,
}

#[derive(Clone, Debug, Default)]
pub struct Format {
    pub fields: Vec<Field>,
    pub print_fmt: String,
}

impl Format {
    pub fn parse(text: &str) -> Result<Self> {
        let mut fmt = Format::default();
        for line in text.lines() {
            let line = line.trim();
            if let Some(rest) = line.strip_prefix("print fmt:") {
                fmt.print_fmt = rest.trim().to_string();
                continue;
            }
            let Some(rest) = line.strip_prefix("field:") else {
                continue;
            };
            let mut decl = "";
            let (mut offset, mut size, mut signed) = (None, None, false);
            for part in rest.split(';').map(str::trim).filter(|p| !p.is_empty()) {
                if let Some(v) = part.strip_prefix("offset:") {
                    offset = v.parse().ok();
                } else if let Some(v) = part.strip_prefix("size:") {
                    size = v.parse().ok();
                } else if let Some(v) = part.strip_prefix("signed:") {
                    signed = v == "1";
                } else if decl.is_empty() {
                    decl = part;
                }
            }
            // The declaration ends with the name, maybe followed by an array size.
            let name_part = decl.rsplit(' ').next().unwrap_or(decl);
            let name = name_part.split('[').next().unwrap_or(name_part).to_string();
            let ctype = decl[..decl.len() - name_part.len()].trim().to_string();
            let (Some(offset), Some(size)) = (offset, size) else {
                bail!("malformed field line: {line}");
            };
            fmt.fields.push(Field {
                name,
                ctype,
                offset,
                size,
                signed,
            });
        }
        if fmt.fields.is_empty() {
            bail!("no fields");
        }
        Ok(fmt)
    }

    pub fn field(&self, name: &str) -> Option<&Field> {
        self.fields.iter().find(|f| f.name == name)
    }

    /// Offset of a field, or an error naming the field.
    pub fn offset(&self, name: &str) -> Result<u32> {
        self.field(name)
            .map(|f| f.offset)
            .with_context(|| format!("field `{name}` is missing from the tracepoint's format"))
    }

    /// The `__print_symbolic(REC->field, { 1, "NAME" }, ...)` table for `field`: value
    /// to name (e.g. skb:kfree_skb drop reasons, whose numbers differ between kernels).
    pub fn symbolic(&self, field: &str) -> Vec<(u64, String)> {
        let needle = format!("__print_symbolic(REC->{field},");
        let Some(start) = self.print_fmt.find(&needle) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        let mut rest = &self.print_fmt[start + needle.len()..];
        // Entries look like `{ 2, "NOT_SPECIFIED" }`; the table ends at the first `)`
        // that is not inside an entry.
        loop {
            let rest_trim = rest.trim_start_matches([' ', ',']);
            let Some(body) = rest_trim.strip_prefix('{') else {
                break;
            };
            let Some(end) = body.find('}') else { break };
            let entry = &body[..end];
            rest = &body[end + 1..];
            let Some((num, name)) = entry.split_once(',') else {
                continue;
            };
            let num = num.trim();
            let parsed = match num.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16).ok(),
                None => num.parse().ok(),
            };
            if let Some(n) = parsed {
                out.push((n, name.trim().trim_matches('"').to_string()));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXIT: &str = "name: sched_process_exit\nID: 300\nformat:\n\
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;\n\n\
\tfield:char comm[16];\toffset:8;\tsize:16;\tsigned:0;\n\
\tfield:pid_t pid;\toffset:24;\tsize:4;\tsigned:1;\n\
\tfield:bool group_dead;\toffset:32;\tsize:1;\tsigned:0;\n\n\
print fmt: \"comm=%s pid=%d group_dead=%s\", REC->comm, REC->pid, REC->group_dead ? \"true\" : \"false\"\n";

    #[test]
    fn parses_fields_and_offsets() {
        let f = Format::parse(EXIT).unwrap();
        assert_eq!(f.offset("pid").unwrap(), 24);
        assert_eq!(f.offset("group_dead").unwrap(), 32);
        let comm = f.field("comm").unwrap();
        assert_eq!(
            (comm.offset, comm.size, comm.ctype.as_str()),
            (8, 16, "char")
        );
        assert!(f.field("pid").unwrap().signed);
        assert!(f.offset("nope").unwrap_err().to_string().contains("`nope`"));
        assert!(f.print_fmt.starts_with("\"comm=%s"));
    }

    #[test]
    fn parses_data_loc_fields() {
        let f = Format::parse(
            "format:\n\tfield:__data_loc char[] parent_comm;\toffset:8;\tsize:4;\tsigned:0;\n",
        )
        .unwrap();
        let fld = f.field("parent_comm").unwrap();
        assert_eq!((fld.offset, fld.ctype.as_str()), (8, "__data_loc char[]"));
    }

    #[test]
    fn rejects_garbage() {
        assert!(Format::parse("hello").is_err());
        assert!(Format::parse("\tfield:int x;\toffset:zz;\tsize:4;\tsigned:1;\n").is_err());
    }

    #[test]
    fn symbolic_table() {
        let f = Format {
            fields: vec![],
            print_fmt: "\"reason: %s\", __print_symbolic(REC->reason, { 2, \"NOT_SPECIFIED\" }, \
                        { 0x10, \"PROTO_MEM\" }), REC->x"
                .into(),
        };
        assert_eq!(
            f.symbolic("reason"),
            vec![(2, "NOT_SPECIFIED".into()), (16, "PROTO_MEM".into())]
        );
        assert!(f.symbolic("other").is_empty());
    }
}
