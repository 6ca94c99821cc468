//! CPU detection with hwloc (feature `hwloc`): one [`ThreadProc`] per core the process may
//! use, with its PUs, NUMA node and cache sizes as properties, each thread bound to its
//! core with hwloc's thread CPU binding.
//!
//! If hwloc cannot load the topology at run time, or finds no usable core, detection falls
//! back to [`detect_plain`] and every thread processor carries a `hwloc` property saying
//! why. It never panics.

use crate::cpu::{cap_from_env, detect_plain};
use crate::detect::DetectContext;
use crate::processor::Processor;
use crate::sys;
use crate::thread::{PinFailure, Pinning, ThreadProc};
use hwlocality::cpu::binding::CpuBindingFlags;
use hwlocality::cpu::cpuset::CpuSet;
use hwlocality::object::attributes::ObjectAttributes;
use hwlocality::object::types::ObjectType;
use hwlocality::object::TopologyObject;
use hwlocality::Topology;
use std::collections::BTreeMap;
use std::sync::Arc;

/// One usable core as hwloc describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CoreInfo {
    /// hwloc's logical index of the core.
    pub core: usize,
    /// The OS indices of the core's PUs (hardware threads) the process may use.
    pub pus: Vec<usize>,
    /// The OS indices of the NUMA nodes local to the core.
    pub numa: Vec<usize>,
    /// Cache sizes in bytes by level name (`l1d`, `l1i`, `l2`, `l3`, ...).
    pub caches: BTreeMap<String, u64>,
}

/// Reads the cores of `topology` the calling thread may run on (its affinity mask, further
/// restricted to hwloc's allowed CPU set). Costs a walk over the topology.
pub fn usable_cores(topology: &Topology) -> Vec<CoreInfo> {
    let mask = sys::affinity().ok();
    let allowed = topology.allowed_cpuset();
    let numa_nodes: Vec<&TopologyObject> =
        topology.objects_with_type(ObjectType::NUMANode).collect();
    let mut out = Vec::new();
    for core in topology.objects_with_type(ObjectType::Core) {
        let Some(set) = core.cpuset() else { continue };
        let pus: Vec<usize> = set
            .iter_set()
            .map(usize::from)
            .filter(|pu| allowed.is_set(*pu))
            .filter(|pu| mask.as_ref().is_none_or(|m| m.contains(pu)))
            .collect();
        if pus.is_empty() {
            continue;
        }
        let numa = numa_nodes
            .iter()
            .filter(|n| n.cpuset().is_some_and(|ns| ns.intersects(&*set)))
            .filter_map(|n| n.os_index())
            .collect();
        let mut caches = BTreeMap::new();
        for obj in std::iter::once(core).chain(core.ancestors()) {
            let name = match obj.object_type() {
                ObjectType::L1Cache => "l1d",
                ObjectType::L1ICache => "l1i",
                ObjectType::L2Cache => "l2",
                ObjectType::L3Cache => "l3",
                ObjectType::L4Cache => "l4",
                _ => continue,
            };
            if let Some(ObjectAttributes::Cache(c)) = obj.attributes() {
                if let Some(size) = c.size() {
                    caches.entry(name.to_string()).or_insert(size.get());
                }
            }
        }
        out.push(CoreInfo {
            core: core.logical_index(),
            pus,
            numa,
            caches,
        });
    }
    out
}

/// `0,1,5`.
fn list(items: &[usize]) -> String {
    items
        .iter()
        .map(|c| c.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// `bytes` as a short human size (`48 KiB`, `32 MiB`).
fn human(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = bytes;
    let mut unit = 0;
    while unit + 1 < UNITS.len() && v >= 1024 && v % 1024 == 0 {
        v /= 1024;
        unit += 1;
    }
    format!("{v} {}", UNITS[unit])
}

/// The `hwloc` CPU detector. See the module documentation.
pub fn detect(ctx: &DetectContext) -> Vec<Box<dyn Processor>> {
    let topology = match Topology::new() {
        Ok(t) => Arc::new(t),
        Err(e) => {
            eprintln!("dagger: hwloc could not read the topology ({e}); detecting CPUs without it");
            return detect_plain(ctx, &[("hwloc", format!("unavailable: {e}"))]);
        }
    };
    let cores = usable_cores(&topology);
    if cores.is_empty() {
        eprintln!("dagger: hwloc found no usable core; detecting CPUs without it");
        return detect_plain(ctx, &[("hwloc", "no usable core found".to_string())]);
    }
    let pin = sys::pin_from_env();
    let chosen = sys::spread(
        cores.len(),
        cap_from_env().unwrap_or(usize::MAX),
        sys::process_slot(ctx.worker.0),
    );
    let mut out: Vec<Box<dyn Processor>> = Vec::with_capacity(chosen.len());
    for pos in chosen {
        let c = &cores[pos];
        let mut b = ThreadProc::builder()
            .name(format!("dagger-thread-{}", c.core))
            .label(format!("core {}", c.core))
            .property("core", c.core.to_string())
            .property("pu", list(&c.pus))
            .property("numa", list(&c.numa));
        for (level, size) in &c.caches {
            b = b.property(level.clone(), human(*size));
        }
        if pin {
            let topo = Arc::clone(&topology);
            let pus = c.pus.clone();
            b = b.pinning(Pinning::With {
                cpus: c.pus.clone(),
                bind: Box::new(move || -> Result<(), PinFailure> {
                    let mut set = CpuSet::new();
                    for pu in pus {
                        set.set(pu);
                    }
                    topo.bind_cpu(&set, CpuBindingFlags::THREAD)?;
                    Ok(())
                }),
            });
        }
        match b.spawn() {
            Ok(t) => out.push(Box::new(t)),
            Err(e) => eprintln!("dagger: {e}; core {} gets no thread processor", c.core),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_sizes() {
        assert_eq!(human(48 * 1024), "48 KiB");
        assert_eq!(human(32 * 1024 * 1024), "32 MiB");
        assert_eq!(human(1000), "1000 B");
    }

    #[test]
    fn cores_have_pus_and_numa() {
        let topo = Topology::new().expect("hwloc topology");
        let cores = usable_cores(&topo);
        assert!(!cores.is_empty());
        for c in &cores {
            assert!(!c.pus.is_empty());
            assert!(!c.numa.is_empty(), "core {} has no NUMA node", c.core);
        }
    }
}
