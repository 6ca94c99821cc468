//! `cargo xtask bench`: runs the benchmark workloads of `dagger-bench` several times and
//! prints the median of every figure.
//!
//! Contract with `dagger-bench`: it is invoked as `dagger-bench <ID> [--quick]` and prints
//! each figure on stdout as `dagger <ID> <metric> <value> <unit>`; everything else it
//! prints is echoed to stderr. A non-zero exit fails the whole benchmark.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;

use crate::metadata::Workspace;
use crate::process;

/// Every workload id `dagger-bench` may be asked for.
const WORKLOADS: &[&str] = &["W1", "W2", "W3", "W4", "W5", "W6", "L1", "W1t", "S1"];

/// Workloads run when `--only` is not given.
const DEFAULT_WORKLOADS: &[&str] = &["W1", "W2", "W3", "W4", "W5", "W6", "L1", "W1t"];

/// The package and binary that implement the workloads.
const BENCH_PACKAGE: &str = "dagger-bench";

/// How many trailing stderr lines of a failed run are repeated in the error.
const STDERR_TAIL_LINES: usize = 200;

/// Options of `cargo xtask bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Runs per workload; the median over the runs is reported.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    runs: u32,
    /// Comma-separated workload ids to run (default: W1,W2,W3,W4,W5,W6,L1,W1t).
    #[arg(long, value_delimiter = ',', value_name = "IDS")]
    only: Vec<String>,
    /// Pass --quick to dagger-bench (smaller workloads, for smoke tests).
    #[arg(long)]
    quick: bool,
}

/// Runs `cargo xtask bench`: builds `dagger-bench` (release), runs each selected workload
/// `--runs` times and prints one median line per (workload, metric) on stdout as soon as
/// the workload's runs are done. Fails on an unknown workload id, a build failure, a run
/// that exits unsuccessfully or prints a malformed or no result line.
pub fn run(root: &Path, args: &BenchArgs) -> Result<()> {
    let workloads = select_workloads(&args.only)?;
    let workspace = Workspace::load(root)?;
    let has_binary = workspace
        .packages
        .get(BENCH_PACKAGE)
        .is_some_and(|package| package.binaries.contains(BENCH_PACKAGE));
    if !has_binary {
        bail!("the workspace has no `{BENCH_PACKAGE}` package with a `{BENCH_PACKAGE}` binary");
    }
    let mut build = process::cargo(root);
    build.args(["build", "--release", "-p", BENCH_PACKAGE]);
    let status = process::run_inherited(&mut build)?;
    if !status.success() {
        bail!("`{}` exited with {status}", process::display(&build));
    }
    let binary = binary_path(&workspace);
    for id in workloads {
        let mut all = Vec::<Series>::new();
        for run in 1..=args.runs {
            let label = format!("{id} run {run}/{}", args.runs);
            for sample in run_once(root, &binary, id, &label, args.quick)? {
                add_sample(&mut all, sample)?;
            }
        }
        for series in &all {
            report(series, args.runs);
        }
    }
    Ok(())
}

/// The workloads to run, in order, without duplicates; ids are case-insensitive.
fn select_workloads(only: &[String]) -> Result<Vec<&'static str>> {
    if only.iter().all(|id| id.trim().is_empty()) {
        return Ok(DEFAULT_WORKLOADS.to_vec());
    }
    let mut selected = Vec::new();
    for id in only.iter().map(|id| id.trim()).filter(|id| !id.is_empty()) {
        let known = WORKLOADS
            .iter()
            .find(|known| known.eq_ignore_ascii_case(id))
            .ok_or_else(|| {
                anyhow!(
                    "unknown workload id `{id}` (known: {})",
                    WORKLOADS.join(", ")
                )
            })?;
        if !selected.contains(known) {
            selected.push(*known);
        }
    }
    Ok(selected)
}

/// Where cargo puts the release `dagger-bench` binary.
fn binary_path(workspace: &Workspace) -> PathBuf {
    workspace
        .target_directory
        .join("release")
        .join(format!("{BENCH_PACKAGE}{}", std::env::consts::EXE_SUFFIX))
}

/// Runs `dagger-bench <id>` once and returns the figures it printed.
///
/// Every line the run prints (stdout and stderr) is echoed to stderr prefixed with
/// `[<label>]`. Fails when the run cannot start, exits unsuccessfully (the error repeats
/// the tail of its stderr), prints a malformed result line or no result line at all.
fn run_once(root: &Path, binary: &Path, id: &str, label: &str, quick: bool) -> Result<Vec<Sample>> {
    let mut command = Command::new(binary);
    command.arg(id);
    if quick {
        command.arg("--quick");
    }
    command
        .current_dir(root)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    eprintln!("$ {}", process::display(&command));
    let mut child = command
        .spawn()
        .with_context(|| format!("could not start {}", binary.display()))?;
    let prefix = format!("[{label}] ");
    let stderr = child
        .stderr
        .take()
        .context("stderr of the run is not piped")?;
    let stderr_prefix = prefix.clone();
    let stderr_reader = thread::spawn(move || forward_lines(stderr, &stderr_prefix));

    let stdout = child
        .stdout
        .take()
        .context("stdout of the run is not piped")?;
    let mut samples = Vec::new();
    let mut malformed = Vec::new();
    let stdout_result = for_each_line(stdout, |line| {
        eprintln!("{prefix}{line}");
        match parse_result_line(line) {
            Ok(Some(sample)) => samples.push(sample),
            Ok(None) => {}
            Err(err) => malformed.push(err),
        }
    });
    let status = child
        .wait()
        .with_context(|| format!("could not wait for dagger-bench {label}"))?;
    let stderr_tail = stderr_reader
        .join()
        .map_err(|_| anyhow!("the stderr reader of dagger-bench {label} panicked"))?;
    if !status.success() {
        let tail = Vec::from(stderr_tail).join("\n");
        bail!(
            "dagger-bench {label} exited with {status}; its stderr (last {STDERR_TAIL_LINES} \
             lines at most):\n{tail}"
        );
    }
    stdout_result.with_context(|| format!("could not read the output of dagger-bench {label}"))?;
    if let Some(err) = malformed.first() {
        bail!("dagger-bench {label}: {err}");
    }
    if samples.is_empty() {
        bail!("dagger-bench {label} exited successfully but printed no `dagger {id} ...` line");
    }
    Ok(samples)
}

/// Calls `f` with each line of `reader` (lossily decoded, line terminator removed).
fn for_each_line(reader: impl Read, mut f: impl FnMut(&str)) -> std::io::Result<()> {
    for line in BufReader::new(reader).split(b'\n') {
        let line = line?;
        let text = String::from_utf8_lossy(&line);
        f(text.trim_end_matches('\r'));
    }
    Ok(())
}

/// Echoes every line of `reader` to stderr with `prefix` and returns the last
/// [`STDERR_TAIL_LINES`] lines. A read error ends the stream (what was read is kept).
fn forward_lines(reader: impl Read, prefix: &str) -> VecDeque<String> {
    let mut tail = VecDeque::with_capacity(STDERR_TAIL_LINES);
    let _ = for_each_line(reader, |line| {
        eprintln!("{prefix}{line}");
        if tail.len() == STDERR_TAIL_LINES {
            tail.pop_front();
        }
        tail.push_back(line.to_owned());
    });
    tail
}

/// A figure value as printed: integers are kept exact.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Value {
    Int(i64),
    Float(f64),
}

impl Value {
    fn as_f64(self) -> f64 {
        match self {
            Self::Int(value) => value as f64,
            Self::Float(value) => value,
        }
    }

    fn format(self) -> String {
        match self {
            Self::Int(value) => value.to_string(),
            Self::Float(value) => format_float(value),
        }
    }
}

/// One figure of one run.
#[derive(Debug, Clone, PartialEq)]
struct Sample {
    id: String,
    metric: String,
    value: Value,
    unit: String,
}

/// Parses a stdout line of `dagger-bench`.
///
/// A line is a result line when its first word is `dagger` and its second a known workload
/// id; it must then read `dagger <ID> <metric> <value> <unit>` with a finite number as value
/// (the unit may have several words). Returns `Ok(None)` for any other line.
fn parse_result_line(line: &str) -> Result<Option<Sample>, String> {
    let mut words = line.split_whitespace();
    if words.next() != Some("dagger") {
        return Ok(None);
    }
    let Some(id) = words.next().filter(|id| WORKLOADS.contains(id)) else {
        return Ok(None);
    };
    let malformed = |why: &str| {
        format!(
            "malformed result line ({why}; expected `dagger <ID> <metric> <value> <unit>`): {line}"
        )
    };
    let metric = words.next().ok_or_else(|| malformed("no metric"))?;
    let value = words.next().ok_or_else(|| malformed("no value"))?;
    let unit = words.collect::<Vec<_>>().join(" ");
    if unit.is_empty() {
        return Err(malformed("no unit"));
    }
    let value = if let Ok(int) = value.parse::<i64>() {
        Value::Int(int)
    } else {
        match value.parse::<f64>() {
            Ok(float) if float.is_finite() => Value::Float(float),
            _ => return Err(malformed("the value is not a finite number")),
        }
    };
    Ok(Some(Sample {
        id: id.to_owned(),
        metric: metric.to_owned(),
        value,
        unit,
    }))
}

/// All values of one (workload, metric) pair, in run order.
#[derive(Debug)]
struct Series {
    id: String,
    metric: String,
    unit: String,
    values: Vec<Value>,
}

/// Adds `sample` to its series (created on first sight, so series keep the order in which
/// their metrics first appeared). Fails when the unit differs from earlier runs.
fn add_sample(all: &mut Vec<Series>, sample: Sample) -> Result<()> {
    match all
        .iter_mut()
        .find(|series| series.id == sample.id && series.metric == sample.metric)
    {
        Some(series) if series.unit != sample.unit => bail!(
            "{} {}: unit `{}` differs from `{}` in an earlier run",
            sample.id,
            sample.metric,
            sample.unit,
            series.unit
        ),
        Some(series) => series.values.push(sample.value),
        None => all.push(Series {
            id: sample.id,
            metric: sample.metric,
            unit: sample.unit,
            values: vec![sample.value],
        }),
    }
    Ok(())
}

/// Median, minimum and maximum of a series.
#[derive(Debug, PartialEq)]
struct Summary {
    median: Value,
    min: Value,
    max: Value,
}

/// Summarises `values` (not empty). When every value is an integer the result is integral
/// (the median of an even count is the midpoint rounded half away from zero); otherwise all
/// values are taken as floats.
fn summarize(values: &[Value]) -> Summary {
    let ints: Option<Vec<i64>> = values
        .iter()
        .map(|value| match value {
            Value::Int(int) => Some(*int),
            Value::Float(_) => None,
        })
        .collect();
    if let Some(mut ints) = ints {
        ints.sort_unstable();
        let n = ints.len();
        let median = if n % 2 == 1 {
            ints[n / 2]
        } else {
            let sum = i128::from(ints[n / 2 - 1]) + i128::from(ints[n / 2]);
            // Both halves are i64, so their midpoint is too.
            ((sum + sum.signum()) / 2) as i64
        };
        return Summary {
            median: Value::Int(median),
            min: Value::Int(ints[0]),
            max: Value::Int(ints[n - 1]),
        };
    }
    let mut floats: Vec<f64> = values.iter().map(|value| value.as_f64()).collect();
    floats.sort_unstable_by(f64::total_cmp);
    let n = floats.len();
    let median = if n % 2 == 1 {
        floats[n / 2]
    } else {
        (floats[n / 2 - 1] + floats[n / 2]) / 2.0
    };
    Summary {
        median: Value::Float(median),
        min: Value::Float(floats[0]),
        max: Value::Float(floats[n - 1]),
    }
}

/// Formats a float with 3 decimals (3 significant digits below 1), trailing zeros removed.
fn format_float(value: f64) -> String {
    let magnitude = value.abs();
    let decimals = if magnitude == 0.0 || magnitude >= 1.0 {
        3
    } else {
        (2 - magnitude.log10().floor() as i64).clamp(3, 15) as usize
    };
    let text = format!("{value:.decimals$}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    if text == "-0" {
        "0".to_owned()
    } else {
        text.to_owned()
    }
}

/// Prints the median line of `series` on stdout and its spread on stderr.
fn report(series: &Series, runs: u32) {
    let summary = summarize(&series.values);
    println!(
        "dagger {} {} {} {}",
        series.id,
        series.metric,
        summary.median.format(),
        series.unit
    );
    let missing = if series.values.len() < runs as usize {
        format!(
            " (missing from {} run(s))",
            runs as usize - series.values.len()
        )
    } else {
        String::new()
    };
    eprintln!(
        "{} {}: median {}, min {}, max {} {} over {} run(s){missing}",
        series.id,
        series.metric,
        summary.median.format(),
        summary.min.format(),
        summary.max.format(),
        series.unit,
        series.values.len()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(metric: &str, value: Value, unit: &str) -> Sample {
        Sample {
            id: "W1".into(),
            metric: metric.into(),
            value,
            unit: unit.into(),
        }
    }

    #[test]
    fn parses_result_lines_and_ignores_others() {
        assert_eq!(
            parse_result_line("dagger W1 tasks_per_s 512034 tasks/s"),
            Ok(Some(sample("tasks_per_s", Value::Int(512034), "tasks/s")))
        );
        assert_eq!(
            parse_result_line("dagger W1 startup_ms 12.5 ms"),
            Ok(Some(sample("startup_ms", Value::Float(12.5), "ms")))
        );
        assert_eq!(parse_result_line("warming up"), Ok(None));
        assert_eq!(parse_result_line("dagger started"), Ok(None));
        assert_eq!(parse_result_line(""), Ok(None));
    }

    #[test]
    fn rejects_malformed_result_lines() {
        assert!(parse_result_line("dagger W1 tasks_per_s").is_err());
        assert!(parse_result_line("dagger W1 tasks_per_s 12").is_err());
        assert!(parse_result_line("dagger W1 tasks_per_s fast tasks/s").is_err());
        assert!(parse_result_line("dagger W1 tasks_per_s NaN tasks/s").is_err());
    }

    #[test]
    fn integer_medians_stay_integers() {
        let values = [Value::Int(30), Value::Int(10), Value::Int(20)];
        assert_eq!(
            summarize(&values),
            Summary {
                median: Value::Int(20),
                min: Value::Int(10),
                max: Value::Int(30),
            }
        );
        assert_eq!(
            summarize(&[Value::Int(3), Value::Int(4)]).median,
            Value::Int(4)
        );
        assert_eq!(
            summarize(&[Value::Int(i64::MAX)]).median,
            Value::Int(i64::MAX)
        );
    }

    #[test]
    fn mixed_values_give_float_medians() {
        let summary = summarize(&[
            Value::Int(1),
            Value::Float(2.5),
            Value::Int(4),
            Value::Int(9),
        ]);
        assert_eq!(summary.median, Value::Float(3.25));
        assert_eq!(summary.min, Value::Float(1.0));
        assert_eq!(summary.max, Value::Float(9.0));
    }

    #[test]
    fn floats_are_printed_compactly() {
        assert_eq!(format_float(87.25), "87.25");
        assert_eq!(format_float(87.0), "87");
        assert_eq!(format_float(1234.56789), "1234.568");
        assert_eq!(format_float(0.123456), "0.123");
        assert_eq!(format_float(0.000123456), "0.000123");
        assert_eq!(format_float(0.0), "0");
        assert_eq!(format_float(-2.5), "-2.5");
    }

    #[test]
    fn series_keep_first_seen_order_and_reject_unit_changes() {
        let mut all = Vec::new();
        add_sample(&mut all, sample("startup_ms", Value::Int(5), "ms")).unwrap();
        add_sample(&mut all, sample("tasks_per_s", Value::Int(7), "tasks/s")).unwrap();
        add_sample(&mut all, sample("startup_ms", Value::Int(6), "ms")).unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].metric, "startup_ms");
        assert_eq!(all[0].values, vec![Value::Int(5), Value::Int(6)]);
        assert!(add_sample(&mut all, sample("startup_ms", Value::Int(6), "s")).is_err());
    }

    #[test]
    fn workload_selection() {
        assert_eq!(select_workloads(&[]).unwrap(), DEFAULT_WORKLOADS);
        let only = ["w3".to_string(), "W1".to_string(), "W3".to_string()];
        assert_eq!(select_workloads(&only).unwrap(), vec!["W3", "W1"]);
        assert!(select_workloads(&["W9".to_string()]).is_err());
    }
}
