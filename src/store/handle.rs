//! The thread that owns the database connection. Async code sends it closures and awaits
//! their results; the connection is never held across an `.await` and never shared.

use super::{Result, Store, StoreError};
use tokio::sync::oneshot;

type Job = Box<dyn FnOnce(&mut Store) + Send>;

/// A handle to the store thread. Cheap to clone; the thread ends when the last handle drops.
#[derive(Clone)]
pub struct StoreHandle {
    tx: std::sync::mpsc::Sender<Job>,
}

impl StoreHandle {
    /// Moves `store` onto its own thread.
    pub fn spawn(mut store: Store) -> StoreHandle {
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("store".into())
            .spawn(move || {
                for job in rx {
                    job(&mut store);
                }
            })
            .expect("the store thread starts");
        StoreHandle { tx }
    }

    /// Runs `f` on the store thread and returns its result.
    pub async fn run<T: Send + 'static>(&self, f: impl FnOnce(&mut Store) -> Result<T> + Send + 'static) -> Result<T> {
        let (done, result) = oneshot::channel();
        self.tx
            .send(Box::new(move |s| {
                let _ = done.send(f(s));
            }))
            .map_err(|_| StoreError::Closed)?;
        result.await.map_err(|_| StoreError::Closed)?
    }
}
