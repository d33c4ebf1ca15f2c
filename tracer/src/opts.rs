//! The options every tracing command takes, and the parsers of the values detectors
//! share (durations, ages, row counts).
use std::time::Duration;

/// Options every tracing command takes.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct RunOpts {
    /// Stop after this long and print the final report (e.g. 10s, 2m). Default: run
    /// until Ctrl-C or SIGTERM.
    #[arg(short = 'd', long, value_parser = parse_duration, value_name = "DURATION")]
    pub duration: Option<Duration>,
    /// Also print a report every INTERVAL (e.g. 5s) while running.
    #[arg(short = 'i', long, value_parser = parse_duration, value_name = "INTERVAL")]
    pub interval: Option<Duration>,
    /// Print each report as one JSON object on its own line; the last has "final": true.
    #[arg(long)]
    pub json: bool,
    /// Also write each report to FILE as Prometheus metrics, for node_exporter's
    /// textfile collector (e.g. /var/lib/node_exporter/textfile/tracer.prom).
    #[arg(long, value_name = "FILE")]
    pub prom_file: Option<std::path::PathBuf>,
}

/// humantime durations ("500ms", "10s", "1m30s"); a bare number means seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = match s.parse::<f64>() {
        Ok(secs) if secs.is_finite() && secs >= 0.0 => Duration::from_secs_f64(secs),
        Ok(_) => return Err(format!("`{s}` is not a duration")),
        Err(_) => humantime::parse_duration(s)
            .map_err(|e| format!("`{s}` is not a duration like 500ms, 10s or 2m ({e})"))?,
    };
    if d.is_zero() {
        return Err("the duration must be greater than zero".into());
    }
    Ok(d)
}

/// `--top N`: rows per table, 1 to 1000 (every detector takes it the same way).
pub fn parse_top(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if (1..=1000).contains(&n) => Ok(n),
        _ => Err(format!("`{s}` is not a row count between 1 and 1000")),
    }
}

/// A duration that may be zero (`--min-age 0s`).
pub fn parse_age(s: &str) -> Result<Duration, String> {
    if s.trim_start_matches('0')
        .trim_end_matches(['s', 'm', 'h'])
        .is_empty()
        && !s.is_empty()
    {
        return Ok(Duration::ZERO);
    }
    parse_duration(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_and_reject() {
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("1.5").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert!(parse_duration("0s").is_err());
        assert!(
            parse_duration("ten")
                .unwrap_err()
                .contains("not a duration")
        );
        assert_eq!(parse_age("0s").unwrap(), Duration::ZERO);
        assert_eq!(parse_age("0").unwrap(), Duration::ZERO);
        assert_eq!(parse_age("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_top("10"), Ok(10));
        assert!(parse_top("0").is_err() && parse_top("1001").is_err() && parse_top("x").is_err());
    }
}
