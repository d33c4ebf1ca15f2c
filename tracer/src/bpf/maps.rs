//! The maps of the embedded object, read from its ELF sections: their types, and which
//! of them the programs a detector loads reference (the others are created with one
//! entry).

/// Map types whose size is only memory: safe to create with one entry when no loaded
/// program uses them (ring buffers and the like keep their size).
pub(super) const SHRINKABLE: &[u32] = &[
    1,  // BPF_MAP_TYPE_HASH
    2,  // BPF_MAP_TYPE_ARRAY
    5,  // BPF_MAP_TYPE_PERCPU_HASH
    6,  // BPF_MAP_TYPE_PERCPU_ARRAY
    9,  // BPF_MAP_TYPE_LRU_HASH
    10, // BPF_MAP_TYPE_LRU_PERCPU_HASH
];

/// Every map of the `maps` section of `object` with its BPF map type.
pub(super) fn object_maps(object: &[u8]) -> Vec<(String, u32)> {
    use object::{Object, ObjectSection, ObjectSymbol};
    let Ok(file) = object::File::parse(object) else {
        return Vec::new();
    };
    let Some(maps) = file.section_by_name("maps") else {
        return Vec::new();
    };
    let data = maps.data().unwrap_or(&[]);
    file.symbols()
        .filter(|s| s.section_index() == Some(maps.index()))
        .filter_map(|s| {
            let at = usize::try_from(s.address()).ok()?;
            let ty = u32::from_le_bytes(data.get(at..at + 4)?.try_into().ok()?);
            Some((s.name().ok()?.to_string(), ty))
        })
        .collect()
}

/// The maps in the `maps` section of `object` that no program named `<prefix>_*` (for
/// a prefix in `prefixes`) and no shared function references, from the programs'
/// relocations. Unparseable input yields no names (nothing is shrunk).
pub(super) fn unused_maps(object: &[u8], prefixes: &[&str]) -> Vec<String> {
    use object::{Object, ObjectSection, ObjectSymbol, RelocationTarget, SectionKind};
    let Ok(file) = object::File::parse(object) else {
        return Vec::new();
    };
    let Some(maps) = file.section_by_name("maps") else {
        return Vec::new();
    };
    let maps_data = maps.data().unwrap_or(&[]);
    let ours = |name: &str| {
        prefixes
            .iter()
            .any(|p| name.strip_prefix(p).is_some_and(|r| r.starts_with('_')))
    };
    let mut used = std::collections::BTreeSet::new();
    for section in file.sections().filter(|s| s.kind() == SectionKind::Text) {
        // Program symbols of this section: (start, end, ours). Shared functions (in
        // .text) count as ours: any program may call them.
        let shared = section.name().is_ok_and(|n| n.starts_with(".text"));
        let progs: Vec<(u64, u64, bool)> = file
            .symbols()
            .filter(|s| s.section_index() == Some(section.index()) && s.size() > 0)
            .map(|s| {
                let name = s.name().unwrap_or("");
                (s.address(), s.address() + s.size(), shared || ours(name))
            })
            .collect();
        for (offset, reloc) in section.relocations() {
            let RelocationTarget::Symbol(idx) = reloc.target() else {
                continue;
            };
            let Ok(sym) = file.symbol_by_index(idx) else {
                continue;
            };
            if sym.section_index() != Some(maps.index()) {
                continue;
            }
            let keep = shared
                || progs
                    .iter()
                    .any(|&(a, b, ours)| ours && (a..b).contains(&offset));
            if keep {
                used.insert(sym.name().unwrap_or("").to_string());
            }
        }
    }
    file.symbols()
        .filter(|s| s.section_index() == Some(maps.index()))
        .filter_map(|s| {
            let name = s.name().ok()?;
            let at = usize::try_from(s.address()).ok()?;
            let ty = u32::from_le_bytes(maps_data.get(at..at + 4)?.try_into().ok()?);
            (!used.contains(name) && SHRINKABLE.contains(&ty)).then(|| name.to_string())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bpf::OBJECT;

    /// The contract between the two sides, for every registered detector: each program
    /// a spec or one of its choices names is in the object under the detector's prefix,
    /// each global an offset goes to exists, and so do the maps every run reads.
    #[test]
    fn every_program_global_and_shared_map_a_spec_names_is_in_the_object() {
        use object::{Object, ObjectSymbol};
        let programs = object_programs();
        let file = object::File::parse(OBJECT).expect("object");
        let symbols: Vec<String> = file
            .symbols()
            .filter_map(|s| s.name().ok().map(String::from))
            .collect();
        for d in crate::detectors::ALL {
            let spec = d.spec;
            let hooks = spec.hooks.iter().chain(
                d.choices
                    .iter()
                    .flat_map(|c| c.paths.iter().flat_map(|p| p.hooks)),
            );
            for h in hooks {
                assert!(
                    programs.iter().any(|n| n == h.program),
                    "{}: program {} is not in the object",
                    spec.detector,
                    h.program
                );
                assert!(
                    h.program.starts_with(&format!("{}_", spec.prefix)),
                    "{}: program {} is not named {}_*",
                    spec.detector,
                    h.program,
                    spec.prefix
                );
            }
            for o in spec.offsets {
                assert!(
                    symbols.iter().any(|n| n == o.global),
                    "{}: global {} is not in the object",
                    spec.detector,
                    o.global
                );
            }
        }
        let maps: Vec<String> = object_maps(OBJECT).into_iter().map(|(n, _)| n).collect();
        for m in [
            "EVENTS",
            crate::bpf::CpuSum::LOST,
            crate::bpf::CpuSum::READ_ERRORS,
            crate::bpf::CpuSum::MAP_FULL,
        ] {
            assert!(maps.iter().any(|n| n == m), "map {m} missing: {maps:?}");
        }
    }

    fn object_programs() -> Vec<String> {
        use object::{Object, ObjectSymbol, SymbolKind};
        let file = object::File::parse(OBJECT).expect("object");
        file.symbols()
            .filter(|s| s.kind() == SymbolKind::Text)
            .filter_map(|s| s.name().ok().map(String::from))
            .collect()
    }

    #[test]
    fn maps_of_other_detectors_are_found_unused() {
        let theirs = unused_maps(OBJECT, &["nobody"]);
        assert!(theirs.iter().any(|m| m == "ZOMBIES_PARENT"), "{theirs:?}");
        // Ring buffers keep their size whatever uses them.
        assert!(!theirs.iter().any(|m| m == "EVENTS"), "{theirs:?}");
        let ours = unused_maps(OBJECT, &["zombies"]);
        for m in [
            "ZOMBIES_PARENT",
            "ZOMBIES_EXITED",
            "ZOMBIES_COUNTERS",
            "ZOMBIES_COUNTS",
            "LOST",
        ] {
            assert!(
                !ours.iter().any(|u| u == m),
                "{m} is used by zombies: {ours:?}"
            );
        }
    }
}
