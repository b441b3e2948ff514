//! `ferroclip._native`: the thin PyO3 layer over `ferroclip-core`. Conversion, GIL release
//! and error mapping only; no algorithm lives here.

mod augment;
mod detach;
mod errors;
mod preprocess;
mod probe;
mod retrieval;

use pyo3::prelude::*;

extern "C" fn child_after_fork() {
    ferroclip_core::batch::mark_forked();
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    // A torch DataLoader forks worker processes; rayon threads do not survive a fork, so
    // the child must build fresh pools (tokenizers registers the same kind of handler).
    static REGISTER: std::sync::Once = std::sync::Once::new();
    REGISTER.call_once(|| unsafe {
        libc::pthread_atfork(None, None, Some(child_after_fork));
    });
    preprocess::register(m)?;
    augment::register(m)?;
    retrieval::register(m)?;
    probe::register(m)?;
    Ok(())
}
