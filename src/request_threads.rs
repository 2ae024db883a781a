//! Intra-request threads on the CPU: a request's candidates cut into parts,
//! scored by the calling thread and by helper threads the session starts
//! once and parks between calls ([`HelperThreads`]).
//!
//! Why parked helpers: a scoped spawn and join costs tens of µs per call
//! and allocates; a parked helper wakes in less, a spinning one at once,
//! and a call whose sizes have been seen allocates nothing.
//!
//! The request steps run once, on the calling thread; each part then runs
//! the candidate steps on its own scratch and writes its own logits, which
//! the caller copies out in order. Parts are cut so that every row is
//! summed in the same order as when one thread scores the whole request:
//! the scores are the same to the bit with any number of threads.

use std::ops::Range;
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Duration;

use crate::cpu::Isa;
use crate::error::{Error, Result};
use crate::exec::{self, Scratch};
use crate::helper_threads::HelperThreads;
use crate::model::Model;
use crate::program::Program;
use crate::request::Request;

/// How long a helper spins after each call, watching for the next, before
/// it parks: `MMOE_CPU_SPIN_US` (µs, 0 to 1,000,000; default 0), read once
/// per process. A parked helper takes a while to wake (35–75 µs per call on
/// the development machine's 2 vCPUs, bench/RESULTS.md); a spinning one
/// joins the next call at once, at the cost of a core busy for that long
/// after each call.
pub fn helper_spin() -> Result<Duration> {
    static SPIN: OnceLock<std::result::Result<Duration, String>> = OnceLock::new();
    SPIN.get_or_init(|| parse_spin(std::env::var("MMOE_CPU_SPIN_US").ok().as_deref()))
        .clone()
        .map_err(Error::argument)
}

/// `MMOE_CPU_SPIN_US`'s value, if set, as a spin.
fn parse_spin(value: Option<&str>) -> std::result::Result<Duration, String> {
    let Some(value) = value else {
        return Ok(Duration::ZERO);
    };
    match value.parse::<u64>() {
        Ok(us) if us <= 1_000_000 => Ok(Duration::from_micros(us)),
        _ => Err(format!(
            "MMOE_CPU_SPIN_US is `{value}`: expected 0 to 1000000 (µs)"
        )),
    }
}

/// One part of a request: the scratch it runs on and what it produced.
#[derive(Debug, Default)]
struct Part {
    scratch: Scratch,
    candidates: Range<usize>,
    /// `candidates.len() × tasks` logits, copied out by the caller.
    logits: Vec<f32>,
    result: Option<Result<()>>,
}

/// A session's scratch for each of its threads, and its helpers.
pub struct RequestThreads {
    /// One per thread, the caller's first (at least one).
    parts: Vec<Mutex<Part>>,
    /// The sizes of the current request's parts (reused between calls).
    shares: Vec<usize>,
    /// `parts.len() - 1` helpers; none with one thread, or where the
    /// system refused a thread (the caller then scores every part).
    helpers: Option<HelperThreads>,
}

impl Default for RequestThreads {
    /// One thread, the caller's.
    fn default() -> Self {
        RequestThreads {
            parts: vec![Mutex::default()],
            shares: Vec::new(),
            helpers: None,
        }
    }
}

/// The fewest rows of a request that are cut. Two rows split in two take
/// about 75% of the time of one thread (one row costs 230 µs of the 306 of
/// two, benchmark model, development machine): worth it to spinning
/// helpers, not to parked ones, which wake in 35–75 µs there.
fn min_split() -> usize {
    match helper_spin() {
        Ok(spin) if !spin.is_zero() => 2,
        _ => 3,
    }
}

fn lock(part: &Mutex<Part>) -> MutexGuard<'_, Part> {
    // A part's panic poisons its lock; the scratch is resized before use,
    // so a poisoned one is still sound.
    part.lock().unwrap_or_else(PoisonError::into_inner)
}

impl RequestThreads {
    /// Threads that score: the caller's and `threads - 1` helpers (started
    /// here, parked until a call has parts for them).
    pub fn set_threads(&mut self, threads: usize) {
        let threads = threads.max(1);
        if threads == self.parts.len() {
            return;
        }
        // Stop the old helpers before the parts they may use go.
        self.helpers = None;
        self.parts.resize_with(threads, Mutex::default);
        self.shares = Vec::with_capacity(threads);
        if threads > 1 {
            // A bad MMOE_CPU_SPIN_US fails each call that splits (`score`).
            let spin = helper_spin().unwrap_or(Duration::ZERO);
            self.helpers = HelperThreads::new(threads - 1, "mmoe-score", spin).ok();
        }
    }

    /// Threads that score, the caller's included.
    pub fn threads(&self) -> usize {
        self.parts.len()
    }

    /// Helper threads running (fewer than `threads() - 1` only where the
    /// system refused to start them).
    #[cfg(test)]
    fn helpers(&self) -> usize {
        self.helpers.as_ref().map_or(0, HelperThreads::count)
    }

    /// Starts or stops timing each step on every thread's scratch.
    pub fn set_profiling(&mut self, on: bool) {
        for part in &mut self.parts {
            part.get_mut()
                .unwrap_or_else(PoisonError::into_inner)
                .scratch
                .set_profiling(on);
        }
    }

    /// Nanoseconds per step summed over the threads (empty when off).
    pub fn step_nanos(&self) -> Vec<u64> {
        let mut sums: Vec<u64> = Vec::new();
        for part in &self.parts {
            let part = lock(part);
            if let Some(nanos) = part.scratch.step_nanos() {
                if sums.len() < nanos.len() {
                    sums.resize(nanos.len(), 0);
                }
                for (sum, n) in sums.iter_mut().zip(nanos) {
                    *sum += n;
                }
            }
        }
        sums
    }

    /// Reserves each thread's logits for requests of up to
    /// `max_candidates` (a warm-up; scratch is per tile and sized by
    /// scoring).
    pub fn reserve(&mut self, max_candidates: usize, tasks: usize) -> Result<()> {
        let threads = self.threads();
        shares(max_candidates, threads, 2, &mut self.shares);
        let rows = self.shares.iter().copied().max().unwrap_or(0);
        for part in &mut self.parts {
            let part = part.get_mut().unwrap_or_else(PoisonError::into_inner);
            reserve_logits(&mut part.logits, rows * tasks)?;
        }
        Ok(())
    }

    /// Scores a validated request into `logits` (`[candidates × tasks]`).
    pub fn score(
        &mut self,
        model: &Model,
        program: &Program,
        isa: Isa,
        request: &Request<'_>,
        logits: &mut [f32],
    ) -> Result<()> {
        let (n, threads) = (request.candidates(), self.parts.len());
        shares(n, threads, min_split(), &mut self.shares);
        let Some((first, others)) = self.parts.split_first_mut() else {
            return Err(Error::argument("no scratch to score with"));
        };
        let first = first.get_mut().unwrap_or_else(PoisonError::into_inner);
        if self.shares.len() <= 1 {
            return exec::score(model, program, isa, &mut first.scratch, request, logits);
        }
        helper_spin()?;
        exec::request_steps(model, program, isa, &mut first.scratch, request, logits)?;
        // Every part gets its candidates and the request-level results.
        let tasks = program.tasks;
        let mut start = 0;
        for (p, &share) in self.shares.iter().enumerate() {
            let part = match p.checked_sub(1) {
                None => &mut *first,
                Some(other) => {
                    let part = others[other]
                        .get_mut()
                        .unwrap_or_else(PoisonError::into_inner);
                    part.scratch.copy_request_buffers(program, &first.scratch);
                    part
                }
            };
            part.candidates = start..start + share;
            // Grows only for a larger part than any before (or warmed up).
            reserve_logits(&mut part.logits, share * tasks)?;
            part.logits.resize(share * tasks, 0.0);
            part.result = None;
            start += share;
        }
        let parts = &self.parts[..self.shares.len()];
        let work = |p: usize| {
            let mut part = lock(&parts[p]);
            let part = &mut *part;
            let candidates = part.candidates.clone();
            part.result = Some(exec::score_candidates(
                model,
                program,
                isa,
                &mut part.scratch,
                request,
                candidates,
                &mut part.logits,
            ));
        };
        match &self.helpers {
            Some(helpers) => helpers.run(parts.len(), &work),
            None => (0..parts.len()).for_each(work),
        }
        for part in parts {
            let mut part = lock(part);
            let rows = part.candidates.start * tasks..part.candidates.end * tasks;
            logits[rows].copy_from_slice(&part.logits);
            match part.result.take() {
                Some(result) => result?,
                None => unreachable!("HelperThreads::run runs every part"),
            }
        }
        Ok(())
    }
}

/// Makes room for `len` logits in `logits`, or says there is none.
fn reserve_logits(logits: &mut Vec<f32>, len: usize) -> Result<()> {
    if len > logits.capacity() {
        logits
            .try_reserve_exact(len - logits.len())
            .map_err(|e| Error::argument(format!("no memory for a thread's {len} logits: {e}")))?;
    }
    Ok(())
}

/// How a request of `n` candidates is cut across at most `threads`
/// threads: the sizes of the parts, in order, into `parts`, as even as can
/// be, down to one row; one part when `n` is below `min_split`. Every
/// thread count gives the same bits: each kernel adds a row's products in
/// one order whatever rows share its block (tests/integration/backends.rs).
fn shares(n: usize, threads: usize, min_split: usize, parts: &mut Vec<usize>) {
    parts.clear();
    let threads = if n < min_split.max(2) {
        1
    } else {
        threads.clamp(1, n)
    };
    parts.extend((0..threads).map(|i| n / threads + usize::from(i < n % threads)));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every request is cut into at most `threads` parts that cover it in
    /// order, each of a row at least, as even as can be.
    #[test]
    fn shares_cover_the_request_evenly() {
        let mut parts = Vec::new();
        for threads in 1..=5 {
            for n in 0..=300 {
                shares(n, threads, 2, &mut parts);
                let context = format!("{threads} threads, {n} candidates: {parts:?}");
                assert_eq!(parts.iter().sum::<usize>(), n, "{context}");
                if n == 0 {
                    assert_eq!(parts, [0], "{context}");
                    continue;
                }
                assert!(parts.iter().all(|&p| p > 0), "{context}");
                assert_eq!(parts.len(), threads.min(n), "{context}");
                let (longest, shortest) = (parts.iter().max(), parts.iter().min());
                assert!(
                    longest.zip(shortest).is_some_and(|(l, s)| l - s <= 1),
                    "{context}"
                );
            }
        }
        for (n, threads, want) in [
            (1, 2, &[1][..]),
            (2, 2, &[1, 1]),
            (3, 3, &[1, 1, 1]),
            (7, 3, &[3, 2, 2]),
            (32, 2, &[16, 16]),
            (40, 2, &[20, 20]),
            (100, 3, &[34, 33, 33]),
        ] {
            shares(n, threads, 2, &mut parts);
            assert_eq!(parts, want, "{n} candidates, {threads} threads");
        }
        // Parked helpers: two rows stay on one thread, three are cut.
        for (n, threads, want) in [(2, 2, &[2][..]), (3, 2, &[2, 1]), (3, 3, &[1, 1, 1])] {
            shares(n, threads, 3, &mut parts);
            assert_eq!(
                parts, want,
                "{n} candidates, {threads} threads, 3 rows to cut"
            );
        }
    }

    #[test]
    fn helpers_start_with_the_threads_and_stop_with_them() {
        let mut threads = RequestThreads::default();
        assert_eq!((threads.threads(), threads.helpers()), (1, 0));
        threads.set_threads(3);
        assert_eq!((threads.threads(), threads.helpers()), (3, 2));
        threads.set_threads(2);
        assert_eq!((threads.threads(), threads.helpers()), (2, 1));
        threads.set_threads(0);
        assert_eq!((threads.threads(), threads.helpers()), (1, 0));
    }

    #[test]
    fn spin_comes_from_its_variable_or_is_refused_naming_it() {
        assert_eq!(parse_spin(None), Ok(Duration::ZERO));
        assert_eq!(parse_spin(Some("100")), Ok(Duration::from_micros(100)));
        for bad in ["", "1ms", "-1", "1000001"] {
            let error = parse_spin(Some(bad)).unwrap_err();
            assert!(
                error.starts_with(&format!("MMOE_CPU_SPIN_US is `{bad}`")),
                "{error}"
            );
        }
    }
}
