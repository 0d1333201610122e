//! `paligemma_wgpu._native`: the library's model, scheduler and validation, seen from Python.
//! The Python half (`paligemma_wgpu/__init__.py`) turns Python's image types into [`Image`]s
//! and the JSON answers made here into objects; everything that decides anything runs in the
//! library, so Python answers as the command line does.
//!
//! Across the boundary: the GIL is released while the GPU works ([`Python::detach`]); the
//! library's errors become `ValueError` (bad input: the same checks and words as the command
//! line), `FileNotFoundError` (a missing file) or `RuntimeError` (the GPU); a panic becomes a
//! `RuntimeError` too, never an abort.

mod image;
mod model;
mod output;
mod stream;

use std::panic::{AssertUnwindSafe, catch_unwind};

use pyo3::exceptions::{PyFileNotFoundError, PyOSError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;

/// The library's error as the Python exception a caller expects.
fn py_error(e: paligemma::Error) -> PyErr {
    use paligemma::Error as E;
    let message = e.to_string();
    match e {
        E::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
            PyFileNotFoundError::new_err(message)
        }
        // As transformers answers a model id it cannot fetch.
        E::Hub { .. } => PyOSError::new_err(message),
        E::NoAdapter(_) | E::Device(_) | E::Gpu { .. } | E::DeviceLost(_) => {
            PyRuntimeError::new_err(message)
        }
        _ => PyValueError::new_err(message),
    }
}

/// Runs `f` with the GIL released (other Python threads run meanwhile), turning the library's
/// errors into Python exceptions and a panic into a `RuntimeError`.
fn detached<T: Send>(
    py: Python<'_>,
    f: impl FnOnce() -> paligemma::Result<T> + Send,
) -> PyResult<T> {
    py.detach(|| catch_unwind(AssertUnwindSafe(f)))
        .map_err(|panic| {
            let what = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("unknown");
            PyRuntimeError::new_err(format!("internal error (please report it): {what}"))
        })?
        .map_err(py_error)
}

/// Every GPU adapter wgpu finds, as JSON: position (what `adapter=` takes as an int), name,
/// vendor and device ids, type, backend, driver, PCI bus id.
#[pyfunction]
fn list_adapters(py: Python<'_>) -> PyResult<String> {
    detached(py, || {
        let adapters: Vec<_> = paligemma::Gpu::adapters()
            .iter()
            .enumerate()
            .map(|(index, a)| {
                serde_json::json!({
                    "index": index,
                    "name": a.name,
                    "vendor": a.vendor,
                    "device": a.device,
                    "device_type": format!("{:?}", a.device_type),
                    "backend": a.backend.to_str(),
                    "driver": a.driver,
                    "driver_info": a.driver_info,
                    "pci_bus_id": a.device_pci_bus_id,
                })
            })
            .collect();
        Ok(serde_json::Value::Array(adapters).to_string())
    })
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(list_adapters, m)?)?;
    m.add_class::<image::Image>()?;
    m.add_class::<model::Model>()?;
    m.add_class::<model::Options>()?;
    m.add_class::<stream::Stream>()?;
    Ok(())
}
