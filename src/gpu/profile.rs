//! GPU timing by timestamp queries: the GPU time of each submission, or of each dispatch
//! totalled per kernel. For benchmarks only: a timed submission is waited for.

use std::collections::HashMap;

use super::{Gpu, Kernel};
use crate::error::Result;

/// The running totals while profiling.
pub(crate) struct Profile {
    total_ns: f64,
    /// Per kernel name: (dispatches, ns), when timing each dispatch.
    per_kernel: Option<HashMap<String, (usize, f64)>>,
}

impl Gpu {
    /// Whether submissions can be timed on the GPU (the adapter has TIMESTAMP_QUERY).
    pub fn has_timestamps(&self) -> bool {
        self.features().contains(wgpu::Features::TIMESTAMP_QUERY)
    }

    /// Turns GPU timing on or off. While on, each submission waits for the GPU and adds its
    /// duration (first dispatch to last, by timestamps) to a total read by
    /// [`take_gpu_ms`](Self::take_gpu_ms). With `per_kernel`, every dispatch gets a compute
    /// pass and timestamps of its own, totalled per kernel
    /// ([`take_kernel_times`](Self::take_kernel_times)). It serialises the CPU and the GPU.
    /// Without TIMESTAMP_QUERY it stays off.
    pub fn set_profiling(&self, on: bool, per_kernel: bool) {
        let state = (on && self.has_timestamps()).then(|| Profile {
            total_ns: 0.0,
            per_kernel: per_kernel.then(HashMap::new),
        });
        *self.inner.profile.lock().expect("profile") = state;
    }

    /// The GPU time of the submissions since the last call, in ms (None when not profiling).
    pub fn take_gpu_ms(&self) -> Option<f64> {
        let mut p = self.inner.profile.lock().expect("profile");
        p.as_mut().map(|p| std::mem::take(&mut p.total_ns) / 1e6)
    }

    /// Per kernel: (name, dispatches, total ms) since the last call, slowest first.
    pub fn take_kernel_times(&self) -> Vec<(String, usize, f64)> {
        let mut p = self.inner.profile.lock().expect("profile");
        let Some(map) = p.as_mut().and_then(|p| p.per_kernel.as_mut()) else {
            return Vec::new();
        };
        let mut v: Vec<(String, usize, f64)> =
            map.drain().map(|(k, (n, ns))| (k, n, ns / 1e6)).collect();
        v.sort_by(|a, b| b.2.total_cmp(&a.2));
        v
    }
}

/// The timestamp queries of one submission.
pub(crate) struct Timer {
    set: wgpu::QuerySet,
    resolve: wgpu::Buffer,
    queries: u32,
    /// Whether each dispatch has a pass and two queries of its own.
    pub per_kernel: bool,
    dispatches: usize,
}

impl Timer {
    /// A timer for a submission of `dispatches` dispatches, or `None` when not profiling.
    /// Timing each dispatch needs two queries apiece; past a query set's limit the submission
    /// is timed as a whole.
    pub fn new(gpu: &Gpu, dispatches: usize) -> Result<Option<Timer>> {
        let per_kernel = match &*gpu.inner.profile.lock().expect("profile") {
            None => return Ok(None),
            Some(_) if dispatches == 0 => return Ok(None),
            Some(p) => {
                p.per_kernel.is_some() && 2 * dispatches <= wgpu::QUERY_SET_MAX_QUERIES as usize
            }
        };
        let queries = if per_kernel { 2 * dispatches as u32 } else { 2 };
        let (set, resolve) = gpu.scoped("creating timestamp queries", || {
            let set = gpu.device().create_query_set(&wgpu::QuerySetDescriptor {
                label: Some("timer"),
                ty: wgpu::QueryType::Timestamp,
                count: queries,
            });
            let resolve = gpu.device().create_buffer(&wgpu::BufferDescriptor {
                label: Some("timestamps"),
                size: 8 * queries as u64,
                usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            });
            (set, resolve)
        })?;
        Ok(Some(Timer {
            set,
            resolve,
            queries,
            per_kernel,
            dispatches,
        }))
    }

    /// The timestamp writes of a compute pass holding dispatches `first..end` of the
    /// submission: its own pair per kernel, else the start of the first and the end of the
    /// last.
    pub fn pass_writes(
        &self,
        first: usize,
        end: usize,
    ) -> Option<wgpu::ComputePassTimestampWrites<'_>> {
        let (begin, finish) = if self.per_kernel {
            (Some(2 * first as u32), Some(2 * first as u32 + 1))
        } else {
            (
                (first == 0).then_some(0),
                (end == self.dispatches).then_some(1),
            )
        };
        (begin.is_some() || finish.is_some()).then_some(wgpu::ComputePassTimestampWrites {
            query_set: &self.set,
            beginning_of_pass_write_index: begin,
            end_of_pass_write_index: finish,
        })
    }

    /// Copies the timestamps where they can be read (the last command of the submission).
    pub fn resolve(&self, enc: &mut wgpu::CommandEncoder) {
        enc.resolve_query_set(&self.set, 0..self.queries, &self.resolve, 0);
    }

    /// Reads the timestamps of the submitted work and adds them to the totals; `kernels` are
    /// the submission's dispatches in order.
    pub fn finish(self, gpu: &Gpu, kernels: &[Kernel]) -> Result<()> {
        let ticks: Vec<u64> =
            bytemuck::pod_collect_to_vec(&gpu.read(&self.resolve, 0, 8 * self.queries as u64)?);
        let period = gpu.queue().get_timestamp_period() as f64;
        let span = |j: usize| ticks[2 * j + 1].saturating_sub(ticks[2 * j]) as f64 * period;
        let mut profile = gpu.inner.profile.lock().expect("profile");
        let Some(p) = profile.as_mut() else {
            return Ok(());
        };
        match p.per_kernel.as_mut().filter(|_| self.per_kernel) {
            Some(map) => {
                for (j, k) in kernels.iter().enumerate() {
                    let e = map.entry(k.name()).or_default();
                    e.0 += 1;
                    e.1 += span(j);
                    p.total_ns += span(j);
                }
            }
            None => p.total_ns += span(0),
        }
        Ok(())
    }
}
