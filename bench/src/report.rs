//! What every benchmark report carries: the machine, figures as median of
//! several runs with min and max, percentiles of latency samples, and
//! files under target/bench/.

use std::{fs, path::PathBuf};

use anyhow::{Context, Result};
use serde::Serialize;

/// Median, min and max of repeated measurements.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Figure {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub runs: usize,
}

impl Figure {
    pub fn of(samples: &[f64]) -> Self {
        assert!(!samples.is_empty(), "a figure needs at least one sample");
        let mut sorted = samples.to_vec();
        sorted.sort_by(|a, b| a.total_cmp(b));
        let mid = sorted.len() / 2;
        let median = if sorted.len() % 2 == 1 {
            sorted[mid]
        } else {
            (sorted[mid - 1] + sorted[mid]) / 2.0
        };
        Self {
            median,
            min: sorted[0],
            max: sorted[sorted.len() - 1],
            runs: sorted.len(),
        }
    }

    pub fn cell(&self, decimals: usize) -> String {
        format!(
            "{:.d$} ({:.d$}–{:.d$})",
            self.median,
            self.min,
            self.max,
            d = decimals
        )
    }
}

/// The `percent` percentile of `samples` by the nearest-rank method: the
/// smallest sample that at least `percent`% of the samples are less than
/// or equal to, i.e. the ⌈percent/100 · n⌉-th smallest (the smallest for
/// 0). Always one of the samples, never an interpolation; NaN when there
/// are none.
pub fn percentile(samples: &[f64], percent: f64) -> f64 {
    assert!(
        (0.0..=100.0).contains(&percent),
        "a percentile is between 0 and 100, not {percent}"
    );
    if samples.is_empty() {
        return f64::NAN;
    }
    let mut sorted = samples.to_vec();
    sorted.sort_by(|a, b| a.total_cmp(b));
    // percent · n before the division: exact for whole percents, so a
    // rank that is a whole number is not pushed up by rounding.
    let rank = (percent * sorted.len() as f64 / 100.0).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[derive(Clone, Debug, Serialize)]
pub struct Machine {
    pub cpu_model: String,
    pub cores: usize,
    pub kernel: String,
}

impl Machine {
    pub fn describe() -> Self {
        let cpu_model = fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|info| {
                info.lines()
                    .find_map(|l| l.strip_prefix("model name"))
                    .map(|rest| rest.trim_start_matches([' ', '\t', ':']).to_string())
            })
            .unwrap_or_else(|| "unknown".into());
        let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "unknown".into());
        Self {
            cpu_model,
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            kernel,
        }
    }

    pub fn markdown(&self) -> String {
        format!(
            "Machine: {} ({} cores), kernel {}\n",
            self.cpu_model, self.cores, self.kernel
        )
    }
}

/// Writes `<name>.md` and `<name>.json` under target/bench/ and returns
/// the Markdown path.
pub fn write(name: &str, markdown: &str, json: &serde_json::Value) -> Result<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("target")
        .join("bench");
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let md = dir.join(format!("{name}.md"));
    fs::write(&md, markdown)?;
    fs::write(
        dir.join(format!("{name}.json")),
        serde_json::to_string_pretty(json)?,
    )?;
    Ok(md)
}

#[cfg(test)]
mod tests {
    use super::{percentile, Figure};

    #[test]
    fn median_of_odd_and_even_counts() {
        let f = Figure::of(&[3.0, 1.0, 2.0]);
        assert_eq!((f.median, f.min, f.max, f.runs), (2.0, 1.0, 3.0, 3));
        let f = Figure::of(&[4.0, 1.0, 2.0, 3.0]);
        assert_eq!(f.median, 2.5);
    }

    #[test]
    fn percentiles_are_nearest_ranks() {
        let hundred: Vec<f64> = (1..=100).rev().map(f64::from).collect();
        assert_eq!(percentile(&hundred, 50.0), 50.0);
        assert_eq!(percentile(&hundred, 99.0), 99.0);
        assert_eq!(percentile(&hundred, 100.0), 100.0);
        assert_eq!(percentile(&hundred, 0.0), 1.0);
        // Four samples: p50 is the 2nd, p75 the 3rd, p76 and p99 the 4th.
        let four = [40.0, 10.0, 30.0, 20.0];
        assert_eq!(percentile(&four, 50.0), 20.0);
        assert_eq!(percentile(&four, 75.0), 30.0);
        assert_eq!(percentile(&four, 76.0), 40.0);
        assert_eq!(percentile(&four, 99.0), 40.0);
        assert_eq!(percentile(&[7.0], 99.0), 7.0);
        assert!(percentile(&[], 50.0).is_nan());
    }
}
