//! The data caches of the CPU the process runs on, read once, for the GEMM's blocking.
//!
//! On x86-64 they come from CPUID: leaf 4 on Intel, leaf 0x8000_001D on AMD (the same format: for each cache
//! its type, level, ways, partitions, line size and sets, so size = ways·partitions·line·sets, and how many
//! logical processors share it). Elsewhere they come from Linux's `/sys/devices/system/cpu/cpu0/cache`. A
//! level that cannot be read keeps a conservative default.

use std::sync::OnceLock;

/// Data-cache sizes in bytes: L1d and L2 of one core, and L3 divided among the logical processors sharing it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Caches {
    pub l1d: usize,
    pub l2: usize,
    pub l3: usize,
    /// Where the sizes came from: "cpuid", "sysfs" or "default".
    pub source: &'static str,
}

/// What a CPU of the last decade has at least: 32 KiB L1d, 256 KiB L2, 1 MiB of L3 per core.
const DEFAULT: Caches = Caches {
    l1d: 32 << 10,
    l2: 256 << 10,
    l3: 1 << 20,
    source: "default",
};

/// The caches of this machine (read at the first call).
pub(crate) fn caches() -> Caches {
    static CACHES: OnceLock<Caches> = OnceLock::new();
    *CACHES.get_or_init(|| {
        let found = from_cpuid().or_else(from_sysfs).unwrap_or(DEFAULT);
        // A level that was not reported keeps the default.
        Caches {
            l1d: nonzero_or(found.l1d, DEFAULT.l1d),
            l2: nonzero_or(found.l2, DEFAULT.l2),
            l3: nonzero_or(found.l3, DEFAULT.l3),
            source: found.source,
        }
    })
}

fn nonzero_or(v: usize, default: usize) -> usize {
    if v == 0 {
        default
    } else {
        v
    }
}

/// One reported cache: (level, is data or unified, bytes per core).
type Level = (u32, bool, usize);

fn collect(levels: impl Iterator<Item = Level>, source: &'static str) -> Option<Caches> {
    let mut c = Caches {
        l1d: 0,
        l2: 0,
        l3: 0,
        source,
    };
    let mut any = false;
    for (level, data, bytes) in levels {
        if !data {
            continue;
        }
        any = true;
        match level {
            1 => c.l1d = bytes,
            2 => c.l2 = bytes,
            3 => c.l3 = bytes,
            _ => {}
        }
    }
    any.then_some(c)
}

#[cfg(target_arch = "x86_64")]
fn from_cpuid() -> Option<Caches> {
    use std::arch::x86_64::{__cpuid, __cpuid_count};
    // CPUID exists on every x86-64 processor; leaves above the reported maximum are not queried.
    let (max_leaf, max_ext) = (__cpuid(0).eax, __cpuid(0x8000_0000).eax);
    let leaf = if max_leaf >= 4 && __cpuid_count(4, 0).eax & 0x1f != 0 {
        4
    } else if max_ext >= 0x8000_001D {
        0x8000_001D
    } else {
        return None;
    };
    let levels = (0..16).map_while(|sub| {
        let r = __cpuid_count(leaf, sub);
        let kind = r.eax & 0x1f; // 0: no more caches, 1: data, 2: instruction, 3: unified
        if kind == 0 {
            return None;
        }
        let level = (r.eax >> 5) & 0x7;
        let sharing = ((r.eax >> 14) & 0xfff) as usize + 1;
        let ways = ((r.ebx >> 22) & 0x3ff) as usize + 1;
        let partitions = ((r.ebx >> 12) & 0x3ff) as usize + 1;
        let line = (r.ebx & 0xfff) as usize + 1;
        let sets = r.ecx as usize + 1;
        let bytes = ways * partitions * line * sets;
        // L1 and L2 are a core's own (shared only by its SMT threads); L3 is divided among the logical
        // processors that share it.
        let per_core = if level >= 3 { bytes / sharing } else { bytes };
        Some((level, kind != 2, per_core))
    });
    collect(levels, "cpuid")
}

#[cfg(not(target_arch = "x86_64"))]
fn from_cpuid() -> Option<Caches> {
    None
}

/// Linux: cpu0's caches, with the number of processors sharing each from `shared_cpu_list`.
fn from_sysfs() -> Option<Caches> {
    let dir = std::path::Path::new("/sys/devices/system/cpu/cpu0/cache");
    let read = |index: usize, file: &str| {
        std::fs::read_to_string(dir.join(format!("index{index}")).join(file))
            .ok()
            .map(|s| s.trim().to_string())
    };
    let levels = (0..8).map_while(|i| {
        let level: u32 = read(i, "level")?.parse().ok()?;
        let kind = read(i, "type")?;
        let size = read(i, "size")?;
        let bytes = parse_size(&size)?;
        let sharing = read(i, "shared_cpu_list").map_or(1, |l| count_cpus(&l));
        let per_core = if level >= 3 {
            bytes / sharing.max(1)
        } else {
            bytes
        };
        Some((level, kind != "Instruction", per_core))
    });
    collect(levels, "sysfs")
}

/// "48K", "2048K", "32M" or plain bytes.
fn parse_size(s: &str) -> Option<usize> {
    let (digits, unit) = match s.as_bytes().last()? {
        b'K' => (&s[..s.len() - 1], 1 << 10),
        b'M' => (&s[..s.len() - 1], 1 << 20),
        b'G' => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    digits.parse::<usize>().ok().map(|v| v * unit)
}

/// The number of CPUs in a list such as "0-3,8-11" or "5".
fn count_cpus(list: &str) -> usize {
    list.split(',')
        .filter_map(|part| match part.split_once('-') {
            Some((a, b)) => {
                Some(b.trim().parse::<usize>().ok()? + 1 - a.trim().parse::<usize>().ok()?)
            }
            None => part.trim().parse::<usize>().ok().map(|_| 1),
        })
        .sum::<usize>()
        .max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sysfs_sizes_and_cpu_lists_parse() {
        assert_eq!(parse_size("48K"), Some(48 << 10));
        assert_eq!(parse_size("32M"), Some(32 << 20));
        assert_eq!(parse_size("512"), Some(512));
        assert_eq!(parse_size("K"), None);
        assert_eq!(count_cpus("0-3,8-11"), 8);
        assert_eq!(count_cpus("5"), 1);
        assert_eq!(count_cpus("0,2,4"), 3);
    }

    /// Whatever the source, every level is at least a plausible size and the levels grow outwards.
    #[test]
    fn this_machine_reports_plausible_caches() {
        let c = caches();
        assert!(c.l1d >= 4 << 10 && c.l1d <= 4 << 20, "{c:?}");
        assert!(c.l2 >= c.l1d, "{c:?}");
        assert!(c.l3 >= 64 << 10, "{c:?}");
    }
}
