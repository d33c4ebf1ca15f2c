//! What to change, computed from what was measured: tcp_mem from the observed peak
//! and the machine's RAM, per-socket buffer maxima when a few sockets hold most of the
//! memory. Printed, never applied.
use serde::{Deserialize, Serialize};

use crate::snapshot::tcpmem::TcpMem;

/// Measurements the advice is computed from.
pub struct Inputs {
    pub tcp_mem: TcpMem,
    pub page_size: u64,
    pub peak_pages: u64,
    pub episodes: usize,
    /// The early warning's rule held at some point (memory stayed near the threshold).
    pub sustained_near: bool,
    /// That rule, as the report states it.
    pub near_rule: String,
    pub mem_total_bytes: Option<u64>,
    /// Share of TCP memory (0..1) the top sockets held, and whether receive queues
    /// (rather than send queues) made up most of it, at the look at the sockets.
    pub top_share: Option<(f64, usize, bool)>,
    /// net.ipv4.tcp_rmem and tcp_wmem (min, default, max bytes).
    pub rmem: Option<[u64; 3]>,
    pub wmem: Option<[u64; 3]>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Advice {
    /// `sysctl -w` lines (empty when nothing needs changing).
    pub sysctl: Vec<String>,
    /// Why, in sentences, from the numbers.
    pub notes: Vec<String>,
}

/// Share of the pressure threshold the peak may reach after the change.
const TARGET_SHARE: f64 = 0.8;
/// More than this share of RAM for TCP's hard limit is not advice, it is a bet.
const MAX_HIGH_SHARE_OF_RAM: f64 = 0.25;

pub fn compute(i: &Inputs) -> Advice {
    let mut a = Advice::default();
    let mib = |pages: u64| pages as f64 * i.page_size as f64 / (1 << 20) as f64;
    let peak_pct = crate::snapshot::pct(i.peak_pages, i.tcp_mem.pressure);
    let ram_pages = i.mem_total_bytes.map(|b| b / i.page_size.max(1));
    if let Some(ram) = ram_pages {
        // The kernel's boot-time default (tcp_init_mem): pressure = free buffer pages
        // / 16, low = 3/4 of it, high = 3/2 of it; MemTotal approximates those pages.
        let p = ram / 16;
        a.notes.push(format!(
            "for reference, the kernel's boot-time default for {:.1} GiB of RAM is about tcp_mem = {} {} {}",
            i.mem_total_bytes.unwrap_or(0) as f64 / (1u64 << 30) as f64,
            p / 4 * 3,
            p,
            p / 4 * 3 * 2
        ));
    }
    // Advice rests on an episode (the kernel's own pressure) or on memory that stayed
    // near the threshold (the early warning's rule): a peak touched for a moment is a
    // burst of a healthy transfer, not a reason to change limits.
    if i.episodes == 0 && !i.sustained_near {
        a.notes.insert(
            0,
            format!(
                "no change needed: no episode happened and TCP memory never stayed near the threshold (the early warning needs {}); the peak was {} pages ({:.1} MiB), {:.0}% of the pressure threshold ({} pages)",
                i.near_rule,
                i.peak_pages,
                mib(i.peak_pages),
                peak_pct,
                i.tcp_mem.pressure
            ),
        );
        return a;
    }
    let capped = i.peak_pages >= i.tcp_mem.high;
    let mut pressure = (i.peak_pages as f64 / TARGET_SHARE).ceil() as u64;
    if capped {
        // The hard limit clipped the peak: the demand is unknown but at least this.
        pressure = pressure.max(i.tcp_mem.high * 2);
    }
    pressure = pressure.max(i.tcp_mem.pressure);
    let (low, high) = (pressure / 4 * 3, pressure / 2 * 3);
    a.notes.insert(
        0,
        format!(
            "measured: {} episode(s), peak {} pages ({:.1} MiB) = {:.0}% of the pressure threshold {}{}",
            i.episodes,
            i.peak_pages,
            mib(i.peak_pages),
            peak_pct,
            i.tcp_mem.pressure,
            if capped {
                " (clipped by the hard limit: the demand was at least this)"
            } else {
                ""
            }
        ),
    );
    let too_big = ram_pages.is_some_and(|r| high as f64 > r as f64 * MAX_HIGH_SHARE_OF_RAM);
    if too_big {
        a.notes.push(format!(
            "raising tcp_mem to fit the peak would put the hard limit at {:.0}% of RAM: do not; find the sockets that hold the memory (below) and fix their readers or cap their buffers",
            high as f64 * 100.0 / ram_pages.unwrap_or(1) as f64
        ));
    } else {
        a.sysctl.push(format!(
            "sysctl -w net.ipv4.tcp_mem=\"{low} {pressure} {high}\"   # peak at {:.0}% of the new pressure threshold ({:.1} MiB; high {:.1} MiB)",
            TARGET_SHARE * 100.0,
            mib(pressure),
            mib(high)
        ));
    }
    if let Some((share, n, recv)) = i.top_share
        && share >= 0.5
    {
        let (name, cur) = if recv {
            ("tcp_rmem", i.rmem)
        } else {
            ("tcp_wmem", i.wmem)
        };
        // The top sockets may together hold at most half of the pressure
        // threshold: each gets pressure/(2n), rounded down to 64 KiB, at least 128 KiB.
        let bytes = pressure * i.page_size / (2 * n.max(1) as u64);
        let max = (bytes / 65_536 * 65_536).max(131_072);
        a.notes.push(format!(
                "{n} socket(s) held {:.0}% of TCP memory, mostly in their {} queues: per-socket buffers dominate",
                share * 100.0,
                if recv { "receive" } else { "send" }
            ));
        if let Some([min, def, cur_max]) = cur
            && max < cur_max
        {
            a.sysctl.push(format!(
                    "sysctl -w net.ipv4.{name}=\"{min} {} {max}\"   # cap one socket at {} KiB (now {} KiB)",
                    def.min(max),
                    max / 1024,
                    cur_max / 1024
                ));
        }
    }
    a
}

/// The note for limits changed since the worst episode: the advice is about the
/// limits in force then (`during`), not the ones in force `now`.
pub fn limits_changed(during: TcpMem, now: TcpMem) -> Option<String> {
    (during != now).then(|| {
        format!(
            "tcp_mem was {} {} {} during the worst episode and is {} {} {} now; the advice is about the former",
            during.low, during.pressure, during.high, now.low, now.pressure, now.high
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changed_limits_are_noted_unchanged_ones_are_not() {
        let then = inputs(0, 0).tcp_mem;
        assert_eq!(limits_changed(then, then), None);
        let now = TcpMem {
            pressure: 512,
            ..then
        };
        assert_eq!(
            limits_changed(then, now).as_deref(),
            Some(
                "tcp_mem was 64 128 256 during the worst episode and is 64 512 256 now; the advice is about the former"
            )
        );
    }

    fn inputs(peak: u64, episodes: usize) -> Inputs {
        Inputs {
            tcp_mem: TcpMem {
                low: 64,
                pressure: 128,
                high: 256,
            },
            page_size: 4096,
            peak_pages: peak,
            episodes,
            sustained_near: false,
            near_rule: "80% of the pressure threshold held for 3.0s".into(),
            mem_total_bytes: Some(24 << 30),
            top_share: Some((0.9, 40, true)),
            rmem: Some([4096, 131_072, 6_291_456]),
            wmem: Some([4096, 16_384, 4_194_304]),
        }
    }

    #[test]
    fn peak_sets_the_new_pressure_threshold() {
        let a = compute(&inputs(200, 1));
        // 200 / 0.8 = 250 pages of pressure.
        assert!(
            a.sysctl[0].contains("net.ipv4.tcp_mem=\"186 250 375\""),
            "{a:?}"
        );
        // 40 sockets hold 90%: cap rcv buffers at 250 pages / 80 -> 12.8 KiB -> 128 KiB floor.
        assert!(
            a.sysctl[1].contains("net.ipv4.tcp_rmem=\"4096 131072 131072\""),
            "{a:?}"
        );
        assert!(a.notes[0].contains("peak 200 pages"));
    }

    #[test]
    fn clipped_peak_doubles_the_hard_limit() {
        let a = compute(&inputs(300, 2));
        assert!(a.sysctl[0].contains("tcp_mem=\"384 512 768\""), "{a:?}");
        assert!(a.notes[0].contains("clipped"));
    }

    #[test]
    fn quiet_run_needs_no_change() {
        let a = compute(&inputs(50, 0));
        assert!(a.sysctl.is_empty());
        assert!(a.notes[0].starts_with("no change needed"));
    }

    #[test]
    fn a_peak_touched_for_a_moment_needs_no_change_a_held_one_does() {
        // 110 of 128 pages (86%) for one sample, no episode: a burst.
        let a = compute(&inputs(110, 0));
        assert!(a.sysctl.is_empty(), "{a:?}");
        assert!(a.notes[0].starts_with("no change needed"), "{a:?}");
        assert!(a.notes[0].contains("held for 3.0s"), "{a:?}");
        // The same peak held (the early warning fired): advice from the peak.
        let mut i = inputs(110, 0);
        i.sustained_near = true;
        let a = compute(&i);
        assert!(
            a.sysctl[0].contains("net.ipv4.tcp_mem=\"102 138 207\""),
            "{a:?}"
        );
        assert!(a.notes[0].starts_with("measured: 0 episode(s)"), "{a:?}");
    }

    #[test]
    fn absurd_demand_is_not_advised() {
        let mut i = inputs(3_000_000, 1);
        i.top_share = None;
        let a = compute(&i);
        assert!(a.sysctl.is_empty(), "{a:?}");
        assert!(a.notes.iter().any(|n| n.contains("do not")));
    }
}
