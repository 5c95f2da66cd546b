//! Grain compression and decompression on all cores, through one pool of worker threads kept
//! for the life of the process (no threads are started per call).

use disk_core::sync::lock;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex, OnceLock};

/// A unit of work for the pool.
type Job = Box<dyn FnOnce() + Send + 'static>;

/// The workers' queue: started on first use, one worker per core (none on a single core).
struct Pool {
    queue: Mutex<Sender<Job>>,
    workers: usize,
}

fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| {
        let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
        let (queue, jobs) = channel::<Job>();
        let jobs = Arc::new(Mutex::new(jobs));
        let mut started = 0;
        let count = if workers > 1 { workers } else { 0 };
        for i in 0..count {
            let jobs: Arc<Mutex<Receiver<Job>>> = jobs.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("vmdk-grain-{i}"))
                .spawn(move || {
                    loop {
                        let job = lock(&jobs).recv();
                        match job {
                            Ok(job) => job(),
                            Err(_) => break,
                        }
                    }
                });
            if spawned.is_ok() {
                started += 1;
            }
        }
        Pool {
            queue: Mutex::new(queue),
            workers: started,
        }
    })
}

/// `f` applied to every item, spread over the pool's workers; results in item order. Runs on
/// the calling thread when there are fewer than `min_items` items or no workers. A panic in `f`
/// is re-raised on the calling thread (never turned into missing results).
pub(crate) fn map_in_order<T, U>(items: Vec<T>, min_items: usize, f: fn(T) -> U) -> Vec<U>
where
    T: Send + 'static,
    U: Send + 'static,
{
    let pool = pool();
    if pool.workers < 2 || items.len() < min_items {
        return items.into_iter().map(f).collect();
    }
    let n = items.len();
    let (done, results) = channel();
    {
        let queue = lock(&pool.queue);
        for (i, item) in items.into_iter().enumerate() {
            let done = done.clone();
            let job: Job = Box::new(move || {
                let _ = done.send((i, catch_unwind(AssertUnwindSafe(|| f(item)))));
            });
            if queue.send(job).is_err() {
                // The pool is gone (process exit): nothing can be computed.
                unreachable_pool();
            }
        }
    }
    drop(done);
    let mut out: Vec<Option<U>> = (0..n).map(|_| None).collect();
    for (i, result) in results.iter().take(n) {
        match result {
            Ok(u) => out[i] = Some(u),
            Err(panic) => resume_unwind(panic),
        }
    }
    out.into_iter()
        .map(|u| u.unwrap_or_else(|| unreachable_pool()))
        .collect()
}

/// The pool's workers never exit while the process runs; a missing result means one was lost.
fn unreachable_pool() -> ! {
    panic!("the grain worker pool lost a job")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_order_on_any_split() {
        let items: Vec<u32> = (0..1000).collect();
        assert_eq!(
            map_in_order(items.clone(), 2, |x| x * 2),
            items.iter().map(|x| x * 2).collect::<Vec<_>>()
        );
        assert_eq!(map_in_order(vec![1u32], 2, |x| x + 1), vec![2]);
        assert!(map_in_order(Vec::<u32>::new(), 2, |x| x).is_empty());
    }

    #[test]
    fn a_panic_reaches_the_caller_and_the_pool_survives() {
        let r = std::panic::catch_unwind(|| {
            map_in_order((0..8u32).collect(), 2, |x| if x == 5 { panic!("five") } else { x })
        });
        assert!(r.is_err());
        assert_eq!(
            map_in_order((0..8u32).collect(), 2, |x| x + 1),
            (1..9).collect::<Vec<_>>()
        );
    }
}
