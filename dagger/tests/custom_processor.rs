//! A user's processor kind, brought by a detector registered before `init`, is placed by the
//! scheduler when a task's scope asks for it, and a user's move converts the task's input on
//! the way to it. Runs over real worker processes.

// Worker processes link to the driver over QUIC.
#![cfg(feature = "quic")]

use dagger::prelude::*;
use std::any::Any;
use std::sync::mpsc;
use std::sync::Mutex;

struct Board {
    queue: Mutex<mpsc::Sender<Box<dyn FnOnce() + Send>>>,
}

impl Board {
    fn open() -> Self {
        let (tx, rx) = mpsc::channel::<Box<dyn FnOnce() + Send>>();
        std::thread::spawn(move || {
            for job in rx {
                job();
            }
        });
        Board {
            queue: Mutex::new(tx),
        }
    }
}

impl Processor for Board {
    fn kind(&self) -> ProcKind {
        ProcKind::custom("fpga")
    }
    fn memory(&self) -> dagger::MemorySpace {
        dagger::MemorySpace::custom("fpga-ddr", 0)
    }
    fn label(&self) -> String {
        "test board".into()
    }
    fn execute(&self, job: Box<dyn FnOnce() + Send>) {
        let _ = self.queue.lock().unwrap().send(job);
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// What the board "holds" after the move: the host vector converted on the way.
struct OnBoard(Vec<u32>);

#[dagger::task]
fn board_sum(xs: Vec<u32>) -> (u64, u32) {
    (
        xs.iter().map(|&x| x as u64).sum(),
        dagger::current_processor()
            .map(|p| p.index)
            .unwrap_or(u32::MAX),
    )
}

#[dagger::task]
fn cpu_sum(xs: Vec<u32>) -> u64 {
    xs.iter().map(|&x| x as u64).sum()
}

fn setup() {
    dagger::detectors().register("fpga", |_| {
        vec![Box::new(Board::open()) as Box<dyn Processor>]
    });
    // The user's move wins over the built-in identity: it adds 1000 to every element, so
    // the result shows that it ran.
    dagger::moves().register::<Vec<u32>, Vec<u32>>(
        ProcKind::THREAD,
        ProcKind::custom("fpga"),
        |v, _dst| {
            let OnBoard(v) = OnBoard(v.into_iter().map(|x| x + 1000).collect());
            Ok(v)
        },
    );
}

#[test]
fn the_scheduler_places_work_on_a_user_processor_and_uses_the_user_move() {
    setup();
    dagger::init();
    let ctx = Context::builder()
        .workers(2)
        .test_harness()
        .worker_threads(1)
        .build()
        .unwrap();
    let topo = ctx.topology();
    let boards: Vec<_> = topo
        .procs()
        .filter(|p| p.kind.as_str() == "fpga")
        .map(|p| p.id)
        .collect();
    assert_eq!(boards.len(), 2, "one board per worker:\n{topo}");

    let xs: Vec<u32> = (1..=10).collect();
    let h = board_sum::with(Options::new().scope(Scope::kind("fpga")))
        .spawn(&ctx, xs.clone())
        .unwrap();
    let (sum, index) = h.fetch().unwrap();
    assert_eq!(sum, 55 + 10 * 1000, "the user's move converted the input");
    let info = h.info().unwrap();
    assert!(
        boards.contains(&info.proc.unwrap()),
        "ran on {}",
        info.processor
    );
    assert!(info.processor.starts_with("fpga["), "{}", info.processor);
    assert_eq!(index, info.proc.unwrap().index);

    // Unscoped tasks never land on the board, and see the input unconverted.
    for _ in 0..20 {
        let h = cpu_sum::spawn(&ctx, xs.clone()).unwrap();
        assert_eq!(h.fetch().unwrap(), 55);
        assert!(h.info().unwrap().processor.starts_with("thread["));
    }

    // An exact board.
    let h = board_sum::with(Options::new().scope(Scope::proc(boards[1])))
        .spawn(&ctx, xs)
        .unwrap();
    h.wait().unwrap();
    assert_eq!(h.info().unwrap().proc, Some(boards[1]));
}
