//! Struct member offsets from the kernel's BTF (/sys/kernel/btf/vmlinux), for the few
//! programs that must read a kernel struct where no tracepoint field has the value.
//! Classic tracepoints stay the rule (their format files are a stable ABI); an offset
//! found here is passed to a program as a global, like a format-file offset.
//!
//! aya parses BTF too, but does not expose its types; this reader walks the type
//! section once and answers only "byte offset of member M in struct S" (the BTF layout
//! is documented in the kernel's Documentation/bpf/btf.rst).
use std::{collections::HashMap, fs, path::Path};

use anyhow::{Context as _, Result, bail};

const MAGIC: u16 = 0xeb9f;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;

/// One member of a struct or union: name (empty for an anonymous one), type id, bit offset.
type Member = (String, u32, u32);

/// The structs of one BTF blob: name -> members, and the members of every struct and
/// union by type id (to look into anonymous ones, e.g. 6.18's `union { f_path; }` in
/// struct file).
pub struct KernelBtf {
    structs: HashMap<String, Vec<Member>>,
    by_id: HashMap<u32, Vec<Member>>,
}

impl KernelBtf {
    pub fn from_sys_fs() -> Result<Self> {
        let path = Path::new("/sys/kernel/btf/vmlinux");
        let data = fs::read(path).with_context(|| {
            format!(
                "reading {} (the kernel has no BTF: it needs CONFIG_DEBUG_INFO_BTF)",
                path.display()
            )
        })?;
        Self::parse(&data).with_context(|| format!("parsing {}", path.display()))
    }

    /// Parses a little-endian BTF blob (header, type section, string section).
    pub fn parse(data: &[u8]) -> Result<Self> {
        let u16_at = |o: usize| data.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
        let u32_at = |o: usize| {
            data.get(o..o + 4)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        };
        if u16_at(0) != Some(MAGIC) {
            bail!("not little-endian BTF (bad magic)");
        }
        let field = |o| {
            u32_at(o)
                .map(|v| v as usize)
                .context("truncated BTF header")
        };
        let hdr_len = field(4)?;
        let (type_off, type_len) = (hdr_len + field(8)?, field(12)?);
        let (str_off, str_len) = (hdr_len + field(16)?, field(20)?);
        let strings = data
            .get(str_off..str_off + str_len)
            .context("BTF string section out of bounds")?;
        let name = |off: u32| -> String {
            let s = strings.get(off as usize..).unwrap_or(&[]);
            let end = s.iter().position(|&b| b == 0).unwrap_or(s.len());
            String::from_utf8_lossy(&s[..end]).into_owned()
        };

        let mut structs = HashMap::new();
        let mut by_id = HashMap::new();
        let mut id = 0u32;
        let mut at = type_off;
        let end = type_off + type_len;
        while at < end {
            let (name_off, info) = (
                u32_at(at).context("truncated BTF type")?,
                u32_at(at + 4).context("truncated BTF type")?,
            );
            let kind = (info >> 24) & 0x1f;
            let vlen = (info & 0xffff) as usize;
            let kind_flag = info >> 31 == 1;
            at += 12;
            id += 1;
            let extra = match kind {
                1 | 14 | 17 => 4,             // INT, VAR, DECL_TAG
                3 => 12,                      // ARRAY
                4 | 5 | 15 | 19 => 12 * vlen, // STRUCT, UNION, DATASEC, ENUM64
                6 | 13 => 8 * vlen,           // ENUM, FUNC_PROTO
                2 | 7..=12 | 16 | 18 => 0,    // PTR, FWD, TYPEDEF..FUNC, FLOAT, TYPE_TAG
                k => bail!("unknown BTF kind {k}"),
            };
            if (kind == KIND_STRUCT || kind == KIND_UNION) && vlen > 0 {
                let members = (0..vlen)
                    .map(|i| {
                        let m = at + 12 * i;
                        let off = u32_at(m + 8).context("truncated BTF member")?;
                        // With kind_flag the low 24 bits are the bit offset (bitfields).
                        let bits = if kind_flag { off & 0xff_ffff } else { off };
                        let ty = u32_at(m + 4).context("truncated BTF member")?;
                        Ok((name(u32_at(m).context("truncated BTF member")?), ty, bits))
                    })
                    .collect::<Result<Vec<_>>>()?;
                if kind == KIND_STRUCT && name_off != 0 {
                    structs.entry(name(name_off)).or_insert(members.clone());
                }
                by_id.insert(id, members);
            }
            at += extra;
        }
        Ok(Self { structs, by_id })
    }

    /// Bit offset of `member` among `members`, looking into anonymous struct and union
    /// members (`depth` levels at most).
    fn find(&self, members: &[Member], member: &str, depth: u32) -> Option<u32> {
        if let Some(&(_, _, b)) = members.iter().find(|(n, _, _)| n == member) {
            return Some(b);
        }
        if depth == 0 {
            return None;
        }
        members
            .iter()
            .filter(|(n, _, _)| n.is_empty())
            .find_map(|(_, ty, base)| {
                let inner = self.by_id.get(ty)?;
                Some(base + self.find(inner, member, depth - 1)?)
            })
    }

    /// Byte offset of `member` in `struct name` (a byte-aligned member, direct or in an
    /// anonymous struct or union).
    pub fn member_offset(&self, name: &str, member: &str) -> Result<u32> {
        let members = self
            .structs
            .get(name)
            .with_context(|| format!("struct {name} is not in the kernel's BTF"))?;
        let bits = self
            .find(members, member, 3)
            .with_context(|| format!("struct {name} has no member {member} in the kernel's BTF"))?;
        if bits % 8 != 0 {
            bail!("{name}.{member} is a bitfield in the kernel's BTF");
        }
        Ok(bits / 8)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A BTF blob with `int` and `struct s { int a; int b; }`.
    fn blob() -> Vec<u8> {
        let strings = b"\0int\0s\0a\0b\0";
        let mut types = Vec::new();
        let mut push = |v: &[u32]| v.iter().for_each(|x| types.extend(x.to_le_bytes()));
        push(&[1, 1 << 24, 4, 32]); // [1] int, size 4, 32 bits
        push(&[5, (4 << 24) | 2, 8]); // [2] struct s, 2 members, size 8
        push(&[7, 1, 0]); // a: type 1, bit offset 0
        push(&[9, 1, 32]); // b: type 1, bit offset 32
        let mut out = Vec::new();
        out.extend(MAGIC.to_le_bytes());
        out.extend([1u8, 0]);
        for v in [
            24u32,
            0,
            types.len() as u32,
            types.len() as u32,
            strings.len() as u32,
        ] {
            out.extend(v.to_le_bytes());
        }
        out.extend(&types);
        out.extend(strings);
        out
    }

    #[test]
    fn finds_member_byte_offsets() {
        let btf = KernelBtf::parse(&blob()).unwrap();
        assert_eq!(btf.member_offset("s", "a").unwrap(), 0);
        assert_eq!(btf.member_offset("s", "b").unwrap(), 4);
        assert!(btf.member_offset("s", "c").is_err());
        assert!(btf.member_offset("t", "a").is_err());
        assert!(KernelBtf::parse(&[0, 0, 0]).is_err());
    }

    #[test]
    fn this_kernel_has_the_task_and_signal_members_zombies_reads() {
        let btf = KernelBtf::from_sys_fs().unwrap();
        assert!(btf.member_offset("task_struct", "signal").unwrap() > 0);
        btf.member_offset("signal_struct", "live").unwrap();
    }

    #[test]
    fn members_of_anonymous_unions_are_found() {
        // struct file's f_path is in an anonymous union since 6.13.
        let btf = KernelBtf::from_sys_fs().unwrap();
        assert!(btf.member_offset("file", "f_path").unwrap() > 0);
        btf.member_offset("path", "dentry").unwrap();
    }
}
