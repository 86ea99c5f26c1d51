//! The thread pool an engine runs one inference on, shared by the direct fp32 engine and the
//! int8 engine so that both start, name and report their threads alike.

use std::path::Path;
use std::sync::Arc;

use crate::{Error, Result};

/// A pool of `threads` threads named `scanside-<engine>-<i>`, or `None` for one thread (the
/// calling thread runs the inference, rayon untouched). `model` names the file in the error.
pub fn inference_pool(
    threads: usize,
    engine: &'static str,
    model: &Path,
) -> Result<Option<Arc<rayon::ThreadPool>>> {
    if threads <= 1 {
        return Ok(None);
    }
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(move |i| format!("scanside-{engine}-{i}"))
        .build()
        .map(|pool| Some(Arc::new(pool)))
        .map_err(|e| Error::Model {
            path: model.to_path_buf(),
            reason: format!("cannot start {threads} threads: {e}"),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_thread_needs_no_pool_and_more_get_named_threads() {
        assert!(inference_pool(1, "fp32", Path::new("m")).unwrap().is_none());
        let pool = inference_pool(3, "int8", Path::new("m")).unwrap().unwrap();
        assert_eq!(pool.current_num_threads(), 3);
        let name = pool.install(|| std::thread::current().name().map(str::to_string));
        assert!(name.unwrap().starts_with("scanside-int8-"));
    }
}
