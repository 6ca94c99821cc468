//! Pieces shared by the examples and the integration tests.

pub mod tree {
    //! The tasks of the quickstart's reduction tree, which other examples run too.

    /// What a leaf computes from `i`: some arithmetic, so the tasks are not empty.
    pub fn leaf_value(i: u64) -> u64 {
        (0..2_000u64).fold(i, |acc, k| {
            acc.wrapping_mul(6364136223846793005).wrapping_add(k)
        }) % 1_000
            + i * i
    }

    /// A leaf: some work on one number.
    #[dagger::task]
    pub fn leaf(i: u64) -> u64 {
        leaf_value(i)
    }

    /// An inner node: the sum of two children.
    #[dagger::task]
    pub fn add(a: u64, b: u64) -> u64 {
        a + b
    }
}

pub mod fpga {
    //! A pretend FPGA board: a processor kind the runtime does not know, with its own
    //! memory space, a detector that finds "boards", and a move into its memory.

    use dagger::{MemorySpace, ProcKind, Processor};
    use std::any::Any;
    use std::collections::BTreeMap;
    use std::sync::mpsc;
    use std::sync::Mutex;

    /// The kind's name.
    pub const KIND: &str = "fpga";

    /// One board: runs jobs one at a time on its own thread (its "command queue").
    pub struct Fpga {
        board: u32,
        queue: Mutex<mpsc::Sender<Box<dyn FnOnce() + Send>>>,
    }

    impl Fpga {
        /// Opens board `board`.
        pub fn open(board: u32) -> Self {
            let (tx, rx) = mpsc::channel::<Box<dyn FnOnce() + Send>>();
            std::thread::Builder::new()
                .name(format!("fpga-{board}"))
                .spawn(move || {
                    for job in rx {
                        job();
                    }
                })
                .expect("spawning the board's queue thread");
            Self {
                board,
                queue: Mutex::new(tx),
            }
        }
    }

    impl Processor for Fpga {
        fn kind(&self) -> ProcKind {
            ProcKind::custom(KIND)
        }
        fn memory(&self) -> MemorySpace {
            MemorySpace::custom("fpga-ddr", self.board)
        }
        fn label(&self) -> String {
            format!("pretend FPGA board {}", self.board)
        }
        fn properties(&self) -> BTreeMap<String, String> {
            BTreeMap::from([("board".to_string(), self.board.to_string())])
        }
        fn execute(&self, job: Box<dyn FnOnce() + Send>) {
            if let Ok(q) = self.queue.lock() {
                let _ = q.send(job);
            }
        }
        fn as_any(&self) -> &dyn Any {
            self
        }
    }

    /// Registers the detector (one board per process) and a move into board memory.
    /// Call before `dagger::init()`.
    pub fn register() {
        dagger::detectors().register(KIND, |_ctx| {
            vec![Box::new(Fpga::open(0)) as Box<dyn Processor>]
        });
        dagger::moves().register::<Vec<u32>, Vec<u32>>(
            ProcKind::THREAD,
            ProcKind::custom(KIND),
            |v, _dst| Ok(v),
        );
    }
}
