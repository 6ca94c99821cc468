//! `cargo xtask bench`: runs the benchmark workloads of `dagger-bench` several times and
//! prints the median of every figure.
//!
//! Contract with `dagger-bench`: it is invoked as `dagger-bench <ID> [--quick]` and prints
//! each figure on stdout as `dagger <ID> <metric> <value> <unit>`, and each part of a
//! workload it could not measure as `dagger <ID> <name> skipped: <why>` (a note, reported
//! once after the workload's medians); everything else it prints is echoed to stderr. A
//! non-zero exit fails the whole benchmark.
//!
//! The device workload (DEV) runs on a build of `dagger-bench` with the device backends
//! (feature `devices`: OpenCL, wgpu, CUDA; OpenCL is left out, with a note saying why,
//! where the linker cannot find the OpenCL ICD loader). The other workloads run on a build
//! without them, so that device detection in every worker adds nothing to their figures;
//! cargo keeps both builds' artifacts, so switching between them relinks at most.

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
const WORKLOADS: &[&str] = &["W1", "W2", "W3", "W4", "W5", "W6", "L1", "W1t", "S1", "DEV"];

/// Workloads run when `--only` is not given (S1 is left out: it takes minutes).
const DEFAULT_WORKLOADS: &[&str] = &["W1", "W2", "W3", "W4", "W5", "W6", "L1", "W1t", "DEV"];

/// Workloads that run on the build with the device backends.
const DEVICE_WORKLOADS: &[&str] = &["DEV"];

/// The features of `dagger-bench` with every device backend, and without OpenCL (whose
/// crate links the ICD loader at build time; wgpu and CUDA load their drivers at run time).
const DEVICE_FEATURES: &str = "devices";
const DEVICE_FEATURES_NO_OPENCL: &str = "wgpu,cuda";

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
    /// Comma-separated workload ids to run (default: W1,W2,W3,W4,W5,W6,L1,W1t,DEV;
    /// `--only DEV` runs the device workload alone; S1, a graph of about 2,000,000 tasks
    /// that takes minutes, runs only when named: `--only S1`).
    #[arg(long, value_delimiter = ',', value_name = "IDS")]
    only: Vec<String>,
    /// Pass --quick to dagger-bench (smaller workloads, for smoke tests).
    #[arg(long)]
    quick: bool,
}

/// Runs `cargo xtask bench`: builds `dagger-bench` (release; with the device backends for
/// the device workloads), runs each selected workload `--runs` times and prints one median
/// line per (workload, metric) on stdout as soon as the workload's runs are done, then its
/// notes. Fails on an unknown workload id, a build failure, a run that exits
/// unsuccessfully or prints a malformed or no result line.
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
    let binary = binary_path(&workspace);
    // Whether the binary last built has the device backends.
    let mut built: Option<bool> = None;
    // The note on OpenCL when the device build leaves it out.
    let mut build_notes = Vec::new();
    for id in workloads {
        let devices = DEVICE_WORKLOADS.contains(&id);
        if built != Some(devices) {
            build_notes = build(root, devices)?;
            built = Some(devices);
        }
        let mut all = Vec::<Series>::new();
        let mut notes: Vec<Note> = build_notes
            .iter()
            .filter(|note| note.id == id)
            .cloned()
            .collect();
        for run in 1..=args.runs {
            let label = format!("{id} run {run}/{}", args.runs);
            let (samples, run_notes) = run_once(root, &binary, id, &label, args.quick)?;
            for sample in samples {
                add_sample(&mut all, sample)?;
            }
            for note in run_notes {
                add_note(&mut notes, note);
            }
        }
        for series in &all {
            report(series, args.runs);
        }
        for note in &notes {
            println!("{note}");
        }
    }
    Ok(())
}

/// Builds `dagger-bench` in release mode, with the device backends if `devices`. Returns
/// the notes of the build (OpenCL left out, and why).
fn build(root: &Path, devices: bool) -> Result<Vec<Note>> {
    let mut command = process::cargo(root);
    command.args(["build", "--release", "-p", BENCH_PACKAGE]);
    let mut notes = Vec::new();
    if devices {
        let features = match opencl_loader() {
            Ok(_) => DEVICE_FEATURES,
            Err(why) => {
                eprintln!("OpenCL is left out of the device build: {why}");
                for &id in DEVICE_WORKLOADS {
                    notes.push(Note {
                        id: id.to_owned(),
                        name: "opencl".to_owned(),
                        reason: format!("left out of the build: {why}"),
                    });
                }
                DEVICE_FEATURES_NO_OPENCL
            }
        };
        command.args(["--features", features]);
    }
    let status = process::run_inherited(&mut command)?;
    if !status.success() {
        bail!("`{}` exited with {status}", process::display(&command));
    }
    Ok(notes)
}

/// Where the linker finds the OpenCL ICD loader (`-lOpenCL` needs the unversioned
/// `libOpenCL.so`, which the loader's development package installs), or why it cannot.
///
/// Looks in `LIBRARY_PATH`, then in the usual library folders, then in the dynamic
/// linker's cache (`ldconfig -p`).
fn opencl_loader() -> Result<PathBuf, String> {
    const NAME: &str = "libOpenCL.so";
    let multiarch = format!("/usr/lib/{}-linux-gnu", std::env::consts::ARCH);
    let usual = [
        "/usr/local/lib",
        multiarch.as_str(),
        "/usr/lib64",
        "/usr/lib",
        "/lib64",
        "/lib",
    ];
    let from_env = std::env::var_os("LIBRARY_PATH")
        .map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .unwrap_or_default();
    let found = from_env
        .into_iter()
        .chain(usual.iter().map(PathBuf::from))
        .map(|dir| dir.join(NAME))
        .find(|path| path.exists());
    if let Some(path) = found {
        return Ok(path);
    }
    for ldconfig in ["ldconfig", "/sbin/ldconfig"] {
        let Ok(out) = Command::new(ldconfig)
            .arg("-p")
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
        else {
            continue;
        };
        if let Some(path) = ldconfig_entry(&String::from_utf8_lossy(&out.stdout), NAME) {
            return Ok(path);
        }
        break;
    }
    Err(format!(
        "the linker cannot find {NAME}, the OpenCL ICD loader (on Debian: install \
         ocl-icd-opencl-dev)"
    ))
}

/// The path of library `name` in the output of `ldconfig -p`
/// (`\tlibOpenCL.so (libc6,x86-64) => /lib/x86_64-linux-gnu/libOpenCL.so`).
fn ldconfig_entry(listing: &str, name: &str) -> Option<PathBuf> {
    listing.lines().find_map(|line| {
        let (lib, rest) = line.trim().split_once(' ')?;
        if lib != name {
            return None;
        }
        let (_, path) = rest.split_once("=> ")?;
        Some(PathBuf::from(path.trim()))
    })
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

/// Runs `dagger-bench <id>` once and returns the figures and the notes it printed.
///
/// Every line the run prints (stdout and stderr) is echoed to stderr prefixed with
/// `[<label>]`. Fails when the run cannot start, exits unsuccessfully (the error repeats
/// the tail of its stderr), prints a malformed result line or no figure at all.
fn run_once(
    root: &Path,
    binary: &Path,
    id: &str,
    label: &str,
    quick: bool,
) -> Result<(Vec<Sample>, Vec<Note>)> {
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
    let mut notes = Vec::new();
    let mut malformed = Vec::new();
    let stdout_result = for_each_line(stdout, |line| {
        eprintln!("{prefix}{line}");
        match parse_result_line(line) {
            Ok(Some(Parsed::Figure(sample))) => samples.push(sample),
            Ok(Some(Parsed::Note(note))) => notes.push(note),
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
    Ok((samples, notes))
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

/// A part of a workload that a run did not measure, and why (a backend with no device).
#[derive(Debug, Clone, PartialEq)]
struct Note {
    id: String,
    name: String,
    reason: String,
}

impl std::fmt::Display for Note {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "dagger {} {} skipped: {}",
            self.id, self.name, self.reason
        )
    }
}

/// Adds `note` unless one of the same workload and name is there already (the first reason
/// given is kept: a note of the build comes before those of the runs).
fn add_note(notes: &mut Vec<Note>, note: Note) {
    if !notes
        .iter()
        .any(|seen| seen.id == note.id && seen.name == note.name)
    {
        notes.push(note);
    }
}

/// A result line of `dagger-bench`.
#[derive(Debug, Clone, PartialEq)]
enum Parsed {
    /// `dagger <ID> <metric> <value> <unit>`.
    Figure(Sample),
    /// `dagger <ID> <name> skipped: <why>`.
    Note(Note),
}

/// Parses a stdout line of `dagger-bench`.
///
/// A line is a result line when its first word is `dagger` and its second a known workload
/// id. It is a note when its fourth word is `skipped:`: `dagger <ID> <name> skipped: <why>`
/// (`why` not empty). Otherwise it must read `dagger <ID> <metric> <value> <unit>` with a
/// finite number as value (the unit may have several words). Returns `Ok(None)` for any
/// other line.
fn parse_result_line(line: &str) -> Result<Option<Parsed>, String> {
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
    if value == "skipped:" {
        let reason = words.collect::<Vec<_>>().join(" ");
        if reason.is_empty() {
            return Err(format!(
                "malformed note (no reason; expected `dagger <ID> <name> skipped: <why>`): {line}"
            ));
        }
        return Ok(Some(Parsed::Note(Note {
            id: id.to_owned(),
            name: metric.to_owned(),
            reason,
        })));
    }
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
    Ok(Some(Parsed::Figure(Sample {
        id: id.to_owned(),
        metric: metric.to_owned(),
        value,
        unit,
    })))
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
            Ok(Some(Parsed::Figure(sample(
                "tasks_per_s",
                Value::Int(512034),
                "tasks/s"
            ))))
        );
        assert_eq!(
            parse_result_line("dagger W1 startup_ms 12.5 ms"),
            Ok(Some(Parsed::Figure(sample(
                "startup_ms",
                Value::Float(12.5),
                "ms"
            ))))
        );
        assert_eq!(parse_result_line("warming up"), Ok(None));
        assert_eq!(parse_result_line("dagger started"), Ok(None));
        assert_eq!(parse_result_line(""), Ok(None));
    }

    #[test]
    fn parses_notes_apart_from_figures() {
        assert_eq!(
            parse_result_line("dagger DEV cuda skipped: no CUDA driver (libcuda.so not found)"),
            Ok(Some(Parsed::Note(Note {
                id: "DEV".into(),
                name: "cuda".into(),
                reason: "no CUDA driver (libcuda.so not found)".into(),
            })))
        );
        assert!(parse_result_line("dagger DEV cuda skipped:").is_err());
        assert!(parse_result_line("dagger DEV cuda skipped no driver").is_err());
        assert_eq!(
            parse_result_line("dagger DEV cuda skipped: no driver")
                .unwrap()
                .map(|parsed| match parsed {
                    Parsed::Note(note) => note.to_string(),
                    Parsed::Figure(_) => String::new(),
                }),
            Some("dagger DEV cuda skipped: no driver".to_string())
        );
    }

    #[test]
    fn notes_keep_the_first_reason_per_name() {
        let note = |name: &str, reason: &str| Note {
            id: "DEV".into(),
            name: name.into(),
            reason: reason.into(),
        };
        let mut notes = vec![note("opencl", "left out of the build")];
        add_note(
            &mut notes,
            note("opencl", "not built with the `opencl` feature"),
        );
        add_note(&mut notes, note("cuda", "no CUDA driver"));
        add_note(&mut notes, note("cuda", "no CUDA driver"));
        assert_eq!(
            notes,
            vec![
                note("opencl", "left out of the build"),
                note("cuda", "no CUDA driver")
            ]
        );
    }

    #[test]
    fn finds_libraries_in_the_ldconfig_cache() {
        let listing = "3 libs found in cache `/etc/ld.so.cache'
\tlibOpenCL.so.1 (libc6,x86-64) => /lib/x86_64-linux-gnu/libOpenCL.so.1
\tlibOpenCL.so (libc6,x86-64) => /lib/x86_64-linux-gnu/libOpenCL.so
\tlibm.so.6 (libc6,x86-64) => /lib/x86_64-linux-gnu/libm.so.6
";
        assert_eq!(
            ldconfig_entry(listing, "libOpenCL.so"),
            Some(PathBuf::from("/lib/x86_64-linux-gnu/libOpenCL.so"))
        );
        let runtime_only =
            "\tlibOpenCL.so.1 (libc6,x86-64) => /lib/x86_64-linux-gnu/libOpenCL.so.1\n";
        assert_eq!(ldconfig_entry(runtime_only, "libOpenCL.so"), None);
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
        assert_eq!(select_workloads(&["dev".to_string()]).unwrap(), vec!["DEV"]);
    }
}
