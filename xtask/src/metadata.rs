//! The workspace as `cargo metadata --format-version 1 --no-deps` describes it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use crate::process;

/// The members of the workspace and where cargo puts its build outputs.
#[derive(Debug)]
pub struct Workspace {
    /// Workspace members by package name.
    pub packages: BTreeMap<String, Package>,
    /// The target directory cargo uses for this workspace (honours `CARGO_TARGET_DIR`).
    pub target_directory: PathBuf,
}

/// One member of the workspace.
#[derive(Debug)]
pub struct Package {
    /// Direct normal and build dependencies on other workspace members (dev-dependencies
    /// excluded), by package name.
    pub workspace_deps: BTreeSet<String>,
    /// Names of the example targets of the package.
    pub examples: BTreeSet<String>,
    /// Names of the binary targets of the package.
    pub binaries: BTreeSet<String>,
}

impl Workspace {
    /// Runs `cargo metadata --format-version 1 --no-deps` in `root` and parses its output.
    ///
    /// Costs one cargo invocation (fast: dependencies are not resolved). Fails when cargo
    /// cannot be started, exits unsuccessfully or prints JSON of an unexpected shape.
    pub fn load(root: &Path) -> Result<Self> {
        let mut command = process::cargo(root);
        command.args(["metadata", "--format-version", "1", "--no-deps"]);
        let output = process::run_captured(&mut command)?;
        if !output.status.success() {
            bail!(
                "`{}` exited with {}:\n{}",
                process::display(&command),
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
        }
        let raw: RawMetadata = serde_json::from_slice(&output.stdout)
            .context("could not parse the output of `cargo metadata`")?;
        Ok(Self::from_raw(raw))
    }

    /// Builds the workspace model from parsed metadata. Path dependencies whose name is a
    /// workspace member count as workspace dependencies.
    fn from_raw(raw: RawMetadata) -> Self {
        let members: BTreeSet<&str> = raw
            .packages
            .iter()
            .filter(|package| raw.workspace_members.contains(&package.id))
            .map(|package| package.name.as_str())
            .collect();
        let packages = raw
            .packages
            .iter()
            .filter(|package| members.contains(package.name.as_str()))
            .map(|package| {
                let workspace_deps = package
                    .dependencies
                    .iter()
                    .filter(|dep| dep.kind.as_deref() != Some("dev"))
                    .filter(|dep| dep.path.is_some() && members.contains(dep.name.as_str()))
                    .map(|dep| dep.name.clone())
                    .collect();
                let targets_of_kind = |kind: &str| {
                    package
                        .targets
                        .iter()
                        .filter(|target| target.kind.iter().any(|k| k == kind))
                        .map(|target| target.name.clone())
                        .collect()
                };
                let model = Package {
                    workspace_deps,
                    examples: targets_of_kind("example"),
                    binaries: targets_of_kind("bin"),
                };
                (package.name.clone(), model)
            })
            .collect();
        Self {
            packages,
            target_directory: raw.target_directory,
        }
    }

    /// The package that has an example target named `example`, if any.
    pub fn package_with_example(&self, example: &str) -> Option<&str> {
        self.packages
            .iter()
            .find(|(_, package)| package.examples.contains(example))
            .map(|(name, _)| name.as_str())
    }
}

/// The parts of `cargo metadata` output this tool reads.
#[derive(Debug, Deserialize)]
struct RawMetadata {
    packages: Vec<RawPackage>,
    workspace_members: Vec<String>,
    target_directory: PathBuf,
}

#[derive(Debug, Deserialize)]
struct RawPackage {
    name: String,
    id: String,
    dependencies: Vec<RawDependency>,
    targets: Vec<RawTarget>,
}

#[derive(Debug, Deserialize)]
struct RawDependency {
    name: String,
    kind: Option<String>,
    path: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
struct RawTarget {
    name: String,
    kind: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_normal_and_build_workspace_deps_and_drops_dev_and_external() {
        let json = r#"{
            "packages": [
                {"name": "a", "id": "a-id", "targets": [
                    {"name": "a", "kind": ["lib"]},
                    {"name": "demo", "kind": ["example"]}
                ], "dependencies": [
                    {"name": "b", "kind": null, "path": "/w/b"},
                    {"name": "c", "kind": "dev", "path": "/w/c"},
                    {"name": "d", "kind": "build", "path": "/w/d"},
                    {"name": "serde", "kind": null}
                ]},
                {"name": "b", "id": "b-id", "targets": [], "dependencies": []},
                {"name": "c", "id": "c-id", "targets": [], "dependencies": []},
                {"name": "d", "id": "d-id", "targets": [
                    {"name": "d", "kind": ["bin"]}
                ], "dependencies": []}
            ],
            "workspace_members": ["a-id", "b-id", "c-id", "d-id"],
            "target_directory": "/w/target"
        }"#;
        let raw: RawMetadata = serde_json::from_str(json).unwrap();
        let workspace = Workspace::from_raw(raw);
        let a = &workspace.packages["a"];
        assert_eq!(
            a.workspace_deps.iter().collect::<Vec<_>>(),
            vec!["b", "d"],
            "dev and registry dependencies must be ignored"
        );
        assert_eq!(workspace.package_with_example("demo"), Some("a"));
        assert_eq!(workspace.package_with_example("missing"), None);
        assert!(workspace.packages["d"].binaries.contains("d"));
        assert_eq!(workspace.target_directory, PathBuf::from("/w/target"));
    }
}
