//! The I/O worker pool: a few threads that run storage requests, so that
//! neither a vCPU nor the VMBus worker ever waits for the disk.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

type Job = Box<dyn FnOnce() + Send + 'static>;

struct Queue {
    jobs: VecDeque<Job>,
    stopping: bool,
}

struct Shared {
    q: Mutex<Queue>,
    cv: Condvar,
}

/// A fixed set of threads running queued jobs in FIFO order. Dropping the
/// pool runs the jobs already queued, then joins the threads.
pub struct IoPool {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for IoPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IoPool")
            .field("threads", &self.threads.len())
            .finish()
    }
}

fn lock(m: &Mutex<Queue>) -> std::sync::MutexGuard<'_, Queue> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl IoPool {
    /// Start `threads` workers (at least one) named `{name}-{i}`.
    pub fn new(name: &str, threads: usize) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            q: Mutex::new(Queue {
                jobs: VecDeque::new(),
                stopping: false,
            }),
            cv: Condvar::new(),
        });
        let mut handles = Vec::new();
        for i in 0..threads.max(1) {
            let s = Arc::clone(&shared);
            let h = std::thread::Builder::new()
                .name(format!("{name}-{i}"))
                .spawn(move || worker(&s));
            match h {
                Ok(h) => handles.push(h),
                Err(e) => {
                    // Stop what already started before reporting.
                    drop(Self {
                        shared,
                        threads: handles,
                    });
                    return Err(e);
                }
            }
        }
        Ok(Self {
            shared,
            threads: handles,
        })
    }

    /// Queue a job. Never blocks on I/O (only on the queue lock).
    pub fn submit(&self, job: impl FnOnce() + Send + 'static) {
        lock(&self.shared.q).jobs.push_back(Box::new(job));
        self.shared.cv.notify_one();
    }

    /// Number of worker threads.
    pub fn threads(&self) -> usize {
        self.threads.len()
    }
}

fn worker(s: &Shared) {
    loop {
        let job = {
            let mut q = lock(&s.q);
            loop {
                if let Some(j) = q.jobs.pop_front() {
                    break j;
                }
                if q.stopping {
                    return;
                }
                q = s.cv.wait(q).unwrap_or_else(|e| e.into_inner());
            }
        };
        // A panicking job must not take the worker down with it.
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(job)).is_err() {
            tracing::error!("storage I/O job panicked");
        }
    }
}

impl Drop for IoPool {
    fn drop(&mut self) {
        lock(&self.shared.q).stopping = true;
        self.shared.cv.notify_all();
        let me = std::thread::current().id();
        for h in self.threads.drain(..) {
            // The last owner may be a job on one of our own threads: that
            // thread ends by itself once the queue is empty.
            if h.thread().id() == me {
                continue;
            }
            if h.join().is_err() {
                tracing::error!("storage I/O thread panicked");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Barrier;

    #[test]
    fn jobs_run_concurrently_and_drop_drains() {
        let pool = IoPool::new("test-io", 4).unwrap();
        assert_eq!(pool.threads(), 4);
        // Four jobs that only finish together prove four run at once.
        let barrier = Arc::new(Barrier::new(4));
        let done = Arc::new(AtomicUsize::new(0));
        for _ in 0..4 {
            let (b, d) = (Arc::clone(&barrier), Arc::clone(&done));
            pool.submit(move || {
                b.wait();
                d.fetch_add(1, Ordering::SeqCst);
            });
        }
        for _ in 0..100 {
            let d = Arc::clone(&done);
            pool.submit(move || {
                d.fetch_add(1, Ordering::SeqCst);
            });
        }
        pool.submit(|| panic!("a job panics"));
        let d = Arc::clone(&done);
        pool.submit(move || {
            d.fetch_add(1, Ordering::SeqCst);
        });
        drop(pool);
        assert_eq!(done.load(Ordering::SeqCst), 105);
    }
}
