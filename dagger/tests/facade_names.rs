//! A program needs `dagger` alone: every type the facade's API names is reachable through
//! `dagger::...` paths. This file names nothing from another crate of the workspace: it
//! configures the scheduler, reads the counters, the events and the topology, and writes
//! a transport with `dagger::net` only, and registers it (in every feature configuration:
//! without `quic` the transport gets the empty identity).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[dagger::task]
fn square(x: u64) -> u64 {
    x * x
}

#[test]
fn the_scheduler_s_settings_counters_events_and_topology_are_named_through_dagger() {
    dagger::init();
    let config = dagger::SchedulerConfig {
        no_processor_grace: Some(Duration::from_secs(30)),
        ..dagger::SchedulerConfig::default()
    };
    let ctx: dagger::Context = dagger::Context::builder()
        .scheduler(config)
        .build()
        .unwrap();
    let mut events: dagger::ClusterEvents = ctx.subscribe();
    let h: dagger::Handle<u64> = square::spawn(&ctx, 7).unwrap();
    assert_eq!(h.fetch().unwrap(), 49);
    let info: dagger::TaskInfo = h.info().unwrap();
    assert_eq!(info.task, h.id());
    let stats: dagger::Stats = ctx.stats().unwrap();
    assert!(stats.submitted >= 1, "{stats:?}");
    let lazy: dagger::Lazy<u64> = square::delayed(square::delayed(2));
    assert_eq!(ctx.collect(lazy).unwrap(), 16);
    let _: dagger::LazyArg = dagger::IntoLazy::<u64>::into_lazy(5u64);

    let topology: dagger::Topology = ctx.topology();
    let _: &dagger::DefaultCosts = topology.costs();
    let mut tree_edges = 0;
    for p in topology.procs() {
        let edges: &[dagger::Edge] = topology.edges(p.id);
        tree_edges += edges
            .iter()
            .filter(|e| matches!(e.kind, dagger::EdgeKind::Tree))
            .count();
    }
    assert!(tree_edges > 0, "{topology}");
    let os = dagger::ProcKind::OS;
    let _: Option<Arc<dagger::MoveFn>> = dagger::moves().lookup(&os, &os, "u64");
    fn run_on(p: &dyn dagger::Processor, job: dagger::Job) {
        p.execute(job);
    }
    let _ = run_on;

    // Whatever has arrived by now is an event of this cluster.
    while let Ok(e) = events.try_recv() {
        let _: dagger::ClusterEvent = e;
    }
    ctx.shutdown();
}

/// The in-process hub, wrapped: a transport written with `dagger::net` names only.
struct Wrapped {
    inner: dagger::net::MemTransport,
    listens: Arc<AtomicUsize>,
}

impl dagger::net::Transport for Wrapped {
    fn listen<'a>(
        &'a self,
        addr: &'a str,
    ) -> dagger::net::BoxFuture<'a, Result<Box<dyn dagger::net::Listener>, dagger::net::NetError>>
    {
        self.listens.fetch_add(1, Ordering::SeqCst);
        self.inner.listen(addr)
    }

    fn connect<'a>(
        &'a self,
        addr: &'a str,
    ) -> dagger::net::BoxFuture<'a, Result<dagger::net::Conn, dagger::net::NetError>> {
        self.inner.connect(addr)
    }

    fn name(&self) -> &'static str {
        "wrapped-mem"
    }
}

#[test]
fn a_registered_transport_written_with_dagger_net_links_the_driver_s_own_worker() {
    static IDENTITIES: Mutex<Vec<dagger::Identity>> = Mutex::new(Vec::new());
    let listens = Arc::new(AtomicUsize::new(0));
    let counter = listens.clone();
    dagger::set_transport(move |identity: &dagger::Identity| {
        IDENTITIES.lock().unwrap().push(identity.clone());
        let t: Arc<dyn dagger::net::Transport> = Arc::new(Wrapped {
            inner: dagger::net::MemTransport::new(),
            listens: counter.clone(),
        });
        Ok(t)
    });
    dagger::init();
    // Listening makes the context link processes through the registered transport; the
    // driver's own cores still run the tasks.
    let ctx = dagger::Context::builder().listen("mem:0").build().unwrap();
    assert!(ctx.listen_addr().unwrap().starts_with("mem:"));
    assert_eq!(square::spawn(&ctx, 9).unwrap().fetch().unwrap(), 81);
    // The driver listened for workers, and its own worker for peers.
    assert_eq!(listens.load(Ordering::SeqCst), 2);
    let identities = IDENTITIES.lock().unwrap().clone();
    assert_eq!(identities.len(), 1, "one transport for this process");
    #[cfg(feature = "quic")]
    {
        assert!(!identities[0].is_empty());
        assert_eq!(ctx.driver_identity(), Some(&identities[0]));
        let ca: &dagger::ClusterCa = ctx.cluster_ca().unwrap();
        let _: &dagger::net::ClusterCa = ca;
    }
    #[cfg(not(feature = "quic"))]
    {
        assert_eq!(identities[0], dagger::Identity::empty());
        assert!(ctx.driver_identity().is_none());
    }
    ctx.shutdown();
}
