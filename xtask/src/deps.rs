//! `cargo xtask deps`: the crate graph of the workspace and its layering check.

use std::path::Path;

use anyhow::{bail, Result};

use crate::layering;
use crate::metadata::Workspace;

/// Prints each workspace crate with its direct workspace dependencies (normal and build),
/// marking those its layer may not use, then runs the layering check.
///
/// Fails when the layering is broken or cargo cannot be run.
pub fn run(root: &Path) -> Result<()> {
    let workspace = Workspace::load(root)?;
    println!("workspace crates and their direct workspace dependencies (dev excluded):");
    let width = workspace
        .packages
        .keys()
        .map(String::len)
        .max()
        .unwrap_or(0);
    // Layered crates first, bottom-up, then the unconstrained ones by name.
    let layered = layering::ALLOWED.iter().map(|(name, _)| *name);
    let others = workspace
        .packages
        .keys()
        .map(String::as_str)
        .filter(|name| layering::allowed_deps(name).is_none());
    for name in layered.chain(others) {
        let Some(package) = workspace.packages.get(name) else {
            continue;
        };
        let allowed = layering::allowed_deps(name);
        let deps = package
            .workspace_deps
            .iter()
            .map(|dep| match allowed {
                Some(allowed) if !allowed.contains(&dep.as_str()) => format!("{dep} (!)"),
                _ => dep.clone(),
            })
            .collect::<Vec<_>>();
        let note = if allowed.is_none() {
            "  [unconstrained]"
        } else {
            ""
        };
        if deps.is_empty() {
            println!("  {name}{note}");
        } else {
            println!("  {name:<width$} -> {}{note}", deps.join(", "));
        }
    }
    println!();
    let violations = layering::check_and_report(root, &workspace)?;
    if !violations.is_empty() {
        bail!("{} layering violation(s)", violations.len());
    }
    Ok(())
}
