//! The crate layering rules of the workspace and their check.
//!
//! Two kinds of rule:
//! - direct workspace dependencies: each layered crate may depend (normal or build
//!   dependency) only on the workspace crates listed for it in [`ALLOWED`];
//! - forbidden crates: some crates must not reach I/O crates at all, even transitively
//!   ([`FORBIDDEN`]), checked with `cargo tree -e normal`.

use std::collections::BTreeSet;
use std::fmt;
use std::path::Path;

use anyhow::{bail, Result};

use crate::metadata::Workspace;
use crate::process;

/// For each layered crate, the workspace crates it may depend on directly.
///
/// Workspace crates not listed here (the `dagger` facade, `dagger-macros`, examples,
/// benchmarks, `xtask`) are not constrained.
pub const ALLOWED: &[(&str, &[&str])] = &[
    ("dagger-core", &[]),
    ("dagger-proc", &["dagger-core"]),
    ("dagger-move", &["dagger-core", "dagger-proc"]),
    ("dagger-sched", &["dagger-core", "dagger-move"]),
    ("dagger-net", &["dagger-core"]),
    (
        "dagger-ft",
        &["dagger-core", "dagger-proc", "dagger-move", "dagger-sched"],
    ),
    (
        "dagger-runtime",
        &[
            "dagger-core",
            "dagger-proc",
            "dagger-move",
            "dagger-sched",
            "dagger-ft",
        ],
    ),
];

/// Crates that must not appear anywhere in the normal dependency tree of a workspace crate
/// (with its default features): the data model and the scheduler stay free of I/O runtimes.
pub const FORBIDDEN: &[(&str, &[&str])] = &[
    ("dagger-core", &["quinn", "tokio"]),
    // The scheduler needs the topology graph only: not the thread runtime, nor hwloc.
    (
        "dagger-sched",
        &["quinn", "tokio", "dagger-proc", "hwlocality"],
    ),
    ("dagger-runtime", &["quinn", "tokio"]),
];

/// One broken layering rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Violation {
    /// A layered crate depends directly on a workspace crate it may not use.
    DisallowedDependency {
        /// The depending crate.
        krate: String,
        /// The workspace crate it must not depend on.
        dependency: String,
    },
    /// A crate named by the rules is not a member of the workspace (the rules are stale).
    MissingCrate {
        /// The crate named in the rules.
        krate: String,
    },
    /// A forbidden crate appears in the normal dependency tree of a crate.
    ForbiddenInTree {
        /// The crate whose tree was inspected.
        krate: String,
        /// The forbidden crate found.
        forbidden: String,
        /// How it is reached (`cargo tree -i` output).
        path: String,
    },
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::DisallowedDependency { krate, dependency } => write!(
                f,
                "{krate} depends on {dependency}, which its layer may not use"
            ),
            Self::MissingCrate { krate } => write!(
                f,
                "{krate} is named by the layering rules but is not a workspace member"
            ),
            Self::ForbiddenInTree {
                krate,
                forbidden,
                path,
            } => {
                write!(f, "{forbidden} is in the normal dependency tree of {krate}")?;
                for line in path.lines() {
                    write!(f, "\n      {line}")?;
                }
                Ok(())
            }
        }
    }
}

/// The workspace crates `krate` may depend on directly, or `None` when it is unconstrained.
pub fn allowed_deps(krate: &str) -> Option<&'static [&'static str]> {
    ALLOWED
        .iter()
        .find(|(name, _)| *name == krate)
        .map(|(_, allowed)| *allowed)
}

/// Checks the direct workspace dependencies of `workspace` against [`ALLOWED`].
///
/// Pure; costs nothing beyond a walk of the crate list.
pub fn check_direct(workspace: &Workspace) -> Vec<Violation> {
    let mut violations = Vec::new();
    for (krate, allowed) in ALLOWED {
        let Some(package) = workspace.packages.get(*krate) else {
            violations.push(Violation::MissingCrate {
                krate: krate.to_string(),
            });
            continue;
        };
        for dependency in &package.workspace_deps {
            if !allowed.contains(&dependency.as_str()) {
                violations.push(Violation::DisallowedDependency {
                    krate: krate.to_string(),
                    dependency: dependency.clone(),
                });
            }
        }
    }
    violations
}

/// Checks [`FORBIDDEN`] with `cargo tree -p <crate> -e normal` for each constrained crate
/// (and `cargo tree -i` to show the path to each crate found).
///
/// Costs one or more cargo invocations per constrained crate (resolution only, no build;
/// may need the registry index when the lock file is out of date). Fails when cargo cannot
/// run or reports an error.
pub fn check_trees(root: &Path, workspace: &Workspace) -> Result<Vec<Violation>> {
    let mut violations = Vec::new();
    for (krate, forbidden) in FORBIDDEN {
        if !workspace.packages.contains_key(*krate) {
            // Reported by `check_direct` when the crate is also in `ALLOWED`.
            continue;
        }
        let names = tree_package_names(root, krate)?;
        for name in forbidden.iter().filter(|name| names.contains(**name)) {
            violations.push(Violation::ForbiddenInTree {
                krate: krate.to_string(),
                forbidden: name.to_string(),
                path: inverted_tree(root, krate, name)?,
            });
        }
    }
    Ok(violations)
}

/// Runs the whole layering check, printing what it checks and what it finds.
///
/// Returns the violations (empty when the layering holds); fails only when cargo cannot be
/// run.
pub fn check_and_report(root: &Path, workspace: &Workspace) -> Result<Vec<Violation>> {
    println!("direct workspace dependencies (normal and build):");
    for (krate, allowed) in ALLOWED {
        println!("  {krate:<14} may use {{{}}}", allowed.join(", "));
    }
    let mut violations = check_direct(workspace);
    for (krate, forbidden) in FORBIDDEN {
        println!(
            "normal dependency tree of {krate} must not contain: {}",
            forbidden.join(", ")
        );
    }
    violations.extend(check_trees(root, workspace)?);
    if violations.is_empty() {
        println!("layering holds");
    } else {
        println!("layering violations:");
        for violation in &violations {
            println!("  - {violation}");
        }
    }
    Ok(violations)
}

/// The names of all packages in the normal dependency tree of `krate` (itself included).
fn tree_package_names(root: &Path, krate: &str) -> Result<BTreeSet<String>> {
    let mut command = process::cargo(root);
    command.args(["tree", "-p", krate, "-e", "normal", "--prefix", "none"]);
    let output = process::run_captured(&mut command)?;
    if !output.status.success() {
        bail!(
            "`{}` exited with {}:\n{}",
            process::display(&command),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(parse_tree_names(&String::from_utf8_lossy(&output.stdout)))
}

/// Parses `cargo tree --prefix none` output: the first word of each line is a package name.
fn parse_tree_names(tree: &str) -> BTreeSet<String> {
    tree.lines()
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

/// The inverted tree from `krate` to `target` (`cargo tree -p <krate> -i <target> -e
/// normal`), for diagnostics.
///
/// Cargo reports "did not match any packages" when `target` is not reachable from `krate`;
/// that case yields an empty string.
fn inverted_tree(root: &Path, krate: &str, target: &str) -> Result<String> {
    let mut command = process::cargo(root);
    command.args(["tree", "-p", krate, "-i", target, "-e", "normal"]);
    let output = process::run_captured(&mut command)?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else if stderr.contains("did not match any packages") {
        Ok(String::new())
    } else {
        bail!(
            "`{}` exited with {}:\n{stderr}",
            process::display(&command),
            output.status
        )
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::PathBuf;

    use super::*;
    use crate::metadata::Package;

    fn workspace(edges: &[(&str, &[&str])]) -> Workspace {
        let packages = edges
            .iter()
            .map(|(name, deps)| {
                let package = Package {
                    workspace_deps: deps.iter().map(|dep| dep.to_string()).collect(),
                    examples: BTreeSet::new(),
                    binaries: BTreeSet::new(),
                };
                (name.to_string(), package)
            })
            .collect::<BTreeMap<_, _>>();
        Workspace {
            packages,
            target_directory: PathBuf::from("/target"),
        }
    }

    #[test]
    fn the_intended_layering_passes() {
        let ws = workspace(ALLOWED);
        assert_eq!(check_direct(&ws), vec![]);
    }

    #[test]
    fn a_lower_layer_using_a_higher_one_is_reported() {
        let mut edges: Vec<(&str, &[&str])> = ALLOWED.to_vec();
        edges[0] = ("dagger-core", &["dagger-sched"]);
        edges.push(("dagger", &["dagger-core", "dagger-net", "dagger-ft"]));
        let violations = check_direct(&workspace(&edges));
        assert_eq!(
            violations,
            vec![Violation::DisallowedDependency {
                krate: "dagger-core".into(),
                dependency: "dagger-sched".into(),
            }]
        );
    }

    #[test]
    fn sched_depending_on_net_is_reported() {
        let mut edges: Vec<(&str, &[&str])> = ALLOWED.to_vec();
        edges[3] = ("dagger-sched", &["dagger-core", "dagger-net"]);
        let violations = check_direct(&workspace(&edges));
        assert_eq!(
            violations,
            vec![Violation::DisallowedDependency {
                krate: "dagger-sched".into(),
                dependency: "dagger-net".into(),
            }]
        );
    }

    #[test]
    fn a_crate_missing_from_the_workspace_is_reported() {
        let edges: Vec<(&str, &[&str])> = ALLOWED
            .iter()
            .copied()
            .filter(|(name, _)| *name != "dagger-ft")
            .collect();
        assert_eq!(
            check_direct(&workspace(&edges)),
            vec![Violation::MissingCrate {
                krate: "dagger-ft".into()
            }]
        );
    }

    #[test]
    fn tree_names_are_first_words() {
        let tree = "dagger-core v0.1.0 (/w/dagger-core)\n\
                    postcard v1.2.0\n\
                    serde_derive v1.0.229 (proc-macro)\n\
                    serde v1.0.229 (*)\n";
        let names = parse_tree_names(tree);
        assert_eq!(
            names.into_iter().collect::<Vec<_>>(),
            vec!["dagger-core", "postcard", "serde", "serde_derive"]
        );
    }
}
