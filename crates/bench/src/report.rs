//! Summaries of the samples: medians, spreads, ratios to qemu-img, as text or JSON.

use std::fmt::Write as _;

use crate::bench::{Contestant, PartResult, Runs};
use crate::measure::Sample;

const MIB: f64 = (1u64 << 20) as f64;

/// Median, min and max of some samples' seconds, and their largest peak RSS.
#[derive(Debug, Clone, Copy)]
pub struct Summary {
    /// Median seconds (mean of the middle two for an even count).
    pub median: f64,
    /// Fastest run.
    pub min: f64,
    /// Slowest run.
    pub max: f64,
    /// Largest peak RSS over the runs, KiB.
    pub max_rss_kib: u64,
}

/// Summarizes samples; `None` when there are none.
pub fn summarize(samples: &[Sample]) -> Option<Summary> {
    let mut secs: Vec<f64> = samples.iter().map(|s| s.secs).collect();
    secs.sort_by(f64::total_cmp);
    Some(Summary {
        median: median_of_sorted(&secs)?,
        min: secs[0],
        max: secs[secs.len() - 1],
        max_rss_kib: samples.iter().map(|s| s.max_rss_kib).max().unwrap_or(0),
    })
}

/// Median of values sorted ascending (mean of the middle two for an even count).
fn median_of_sorted(xs: &[f64]) -> Option<f64> {
    let n = xs.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(xs[n / 2]),
        _ => Some((xs[n / 2 - 1] + xs[n / 2]) / 2.0),
    }
}

/// A contestant against qemu-img.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ratio {
    /// Of the medians.
    pub of_medians: f64,
    /// The median of per-round ratios (runs of one round were made back to back on
    /// identical copies, so each ratio compares like with like).
    pub per_round: f64,
    /// The first and third quartiles of the per-round ratios: the spread that tells a change
    /// from noise.
    pub iqr: (f64, f64),
}

/// How a contestant compares with qemu-img; `None` without samples of both.
pub fn ratios(runs: &Runs, qemu: &Runs) -> Option<Ratio> {
    let (a, b) = (summarize(&runs.samples)?, summarize(&qemu.samples)?);
    let mut per_round: Vec<f64> = runs
        .samples
        .iter()
        .zip(&qemu.samples)
        .map(|(x, q)| x.secs / q.secs)
        .collect();
    per_round.sort_by(f64::total_cmp);
    Some(Ratio {
        of_medians: a.median / b.median,
        per_round: median_of_sorted(&per_round)?,
        iqr: (quantile(&per_round, 0.25)?, quantile(&per_round, 0.75)?),
    })
}

/// The `q` quantile of values sorted ascending, linearly interpolated between ranks.
fn quantile(xs: &[f64], q: f64) -> Option<f64> {
    let last = xs.len().checked_sub(1)?;
    let at = q * last as f64;
    let (lo, hi) = (at.floor() as usize, at.ceil() as usize);
    Some(xs[lo] + (xs[hi] - xs[lo]) * (at - lo as f64))
}

fn qemu(part: &PartResult) -> Option<&Runs> {
    part.commits
        .iter()
        .find(|r| r.contestant == Contestant::QemuImg)
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// The human-readable report (markdown tables, pasteable into docs/performance.md).
pub fn text(parts: &[PartResult], header: &[(String, String)]) -> String {
    let mut out = String::new();
    for (k, v) in header {
        let _ = writeln!(out, "- {k}: {v}");
    }
    for part in parts {
        let _ = writeln!(
            out,
            "\n### {}: {} MiB base, {} MiB changed in {} writes\n",
            part.name,
            part.size >> 20,
            part.changed_bytes >> 20,
            part.ops
        );
        if !part.commits.is_empty() {
            out.push_str("| contestant | median s | min s | max s | MiB/s (changed / median) | peak RSS MiB | ratio of medians | per-round ratio: median [IQR] |\n");
            out.push_str("|---|---:|---:|---:|---:|---:|---:|---:|\n");
            for runs in &part.commits {
                let Some(s) = summarize(&runs.samples) else {
                    let why = runs.error.as_deref().unwrap_or("no runs");
                    let _ = writeln!(
                        out,
                        "| {} | failed: {} |",
                        runs.contestant.name(),
                        why.lines().next().unwrap_or("")
                    );
                    continue;
                };
                let ratio = qemu(part).and_then(|q| ratios(runs, q)).map_or(
                    ("–".to_owned(), "–".to_owned()),
                    |r| {
                        (
                            format!("{:.2}×", r.of_medians),
                            format!("{:.2}× [{:.2}–{:.2}]", r.per_round, r.iqr.0, r.iqr.1),
                        )
                    },
                );
                let _ = writeln!(
                    out,
                    "| {} | {:.3} | {:.3} | {:.3} | {:.0} | {:.1} | {} | {} |",
                    runs.contestant.name(),
                    s.median,
                    s.min,
                    s.max,
                    part.changed_bytes as f64 / MIB / s.median,
                    mib(s.max_rss_kib),
                    ratio.0,
                    ratio.1
                );
                if let Some(e) = &runs.error {
                    let _ = writeln!(
                        out,
                        "| ↳ later run failed: {} |",
                        e.lines().next().unwrap_or("")
                    );
                }
            }
            out.push('\n');
        }
        let timed = [
            ("imgtx begin", &part.begin),
            ("imgtx status", &part.status),
            ("imgtx diff", &part.diff),
        ];
        if timed.iter().any(|(_, s)| !s.is_empty()) {
            out.push_str("| command | runs | median ms | min ms | max ms | peak RSS MiB |\n|---|---:|---:|---:|---:|---:|\n");
            for (what, samples) in timed {
                if let Some(s) = summarize(samples) {
                    let _ = writeln!(
                        out,
                        "| {what} | {} | {:.1} | {:.1} | {:.1} | {:.1} |",
                        samples.len(),
                        s.median * 1e3,
                        s.min * 1e3,
                        s.max * 1e3,
                        mib(s.max_rss_kib)
                    );
                }
            }
        }
        for note in &part.notes {
            let _ = writeln!(out, "\nNote: {note}\n");
        }
    }
    out
}

fn samples_json(samples: &[Sample]) -> serde_json::Value {
    let summary = summarize(samples).map(|s| {
        serde_json::json!({
            "median_s": s.median, "min_s": s.min, "max_s": s.max, "max_rss_kib": s.max_rss_kib,
        })
    });
    serde_json::json!({
        "secs": samples.iter().map(|s| s.secs).collect::<Vec<_>>(),
        "max_rss_kib": samples.iter().map(|s| s.max_rss_kib).collect::<Vec<_>>(),
        "summary": summary,
    })
}

/// The machine-readable report: every sample plus the summaries.
pub fn json(parts: &[PartResult], header: &[(String, String)]) -> serde_json::Value {
    let parts: Vec<serde_json::Value> = parts
        .iter()
        .map(|part| {
            let commits: Vec<serde_json::Value> = part
                .commits
                .iter()
                .map(|runs| {
                    let ratio = qemu(part).and_then(|q| ratios(runs, q));
                    serde_json::json!({
                        "contestant": runs.contestant.name(),
                        "runs": samples_json(&runs.samples),
                        "ratio_of_medians_to_qemu_img": ratio.map(|r| r.of_medians),
                        "median_per_round_ratio_to_qemu_img": ratio.map(|r| r.per_round),
                        "per_round_ratio_iqr": ratio.map(|r| [r.iqr.0, r.iqr.1]),
                        "error": runs.error,
                    })
                })
                .collect();
            serde_json::json!({
                "name": part.name,
                "base_size": part.size,
                "changed_bytes": part.changed_bytes,
                "writes": part.ops,
                "commits": commits,
                "begin": samples_json(&part.begin),
                "status": samples_json(&part.status),
                "diff": samples_json(&part.diff),
                "notes": part.notes,
            })
        })
        .collect();
    let machine: serde_json::Map<String, serde_json::Value> = header
        .iter()
        .map(|(k, v)| (k.clone(), v.clone().into()))
        .collect();
    serde_json::json!({ "machine": machine, "parts": parts })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(secs: f64) -> Sample {
        Sample {
            secs,
            max_rss_kib: 10,
        }
    }

    #[test]
    fn summarize_takes_middle_of_odd_and_mean_of_even() {
        let odd = summarize(&[s(3.0), s(1.0), s(2.0)]).unwrap();
        let even = summarize(&[s(4.0), s(1.0), s(2.0), s(3.0)]).unwrap();

        assert_eq!((odd.median, odd.min, odd.max), (2.0, 1.0, 3.0));
        assert_eq!(even.median, 2.5);
    }

    #[test]
    fn ratios_compare_to_qemu_img_per_round_and_by_median() {
        let imgtx = Runs {
            contestant: Contestant::Imgtx,
            samples: vec![s(1.0), s(2.0), s(3.0)],
            error: None,
        };
        let qemu = Runs {
            contestant: Contestant::QemuImg,
            samples: vec![s(2.0), s(2.0), s(2.0)],
            error: None,
        };

        let r = ratios(&imgtx, &qemu).unwrap();

        assert_eq!((r.of_medians, r.per_round), (1.0, 1.0));
        assert_eq!(r.iqr, (0.75, 1.25));
    }
}
