//! Graph branches: the launches of a plan spread over a few streams while the
//! graph is captured, so launches that do not depend on each other run
//! concurrently (in the benchmark model, the request part of the first
//! layers beside the candidate features). Stream capture turns the script's
//! event records and waits into the graph's edges. Plain Rust, tested
//! without a GPU: every dependency of the plan is an edge of the script.

use super::launch_plan::Launch;

/// One step of the capture script.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamOp {
    /// Launch `launch` (an index into the plan's launches) on `stream`.
    Launch { launch: usize, stream: usize },
    /// Record event `event` on `stream`: everything launched there so far.
    Record { stream: usize, event: usize },
    /// `stream` waits for event `event` (recorded by an earlier op).
    Wait { stream: usize, event: usize },
}

/// How a plan's launches are captured: stream 0 is the session's stream,
/// where capture begins and ends; streams 1… join it by waiting on its
/// events and are joined back before the capture ends.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct StreamSchedule {
    pub streams: usize,
    pub events: usize,
    pub ops: Vec<StreamOp>,
}

/// Whether launch `later` must run after `earlier`: read after write, write
/// after read or write after write on an arena buffer.
pub fn depends(earlier: &Launch, later: &Launch) -> bool {
    let touches = |a: &[usize], b: &[usize]| a.iter().any(|x| b.contains(x));
    touches(&earlier.writes, &later.reads)
        || touches(&earlier.reads, &later.writes)
        || touches(&earlier.writes, &later.writes)
}

/// Spreads `launches` (in an order that respects their dependencies) over
/// at most `max_streams` streams. A launch goes on a stream whose last
/// launch is one of its dependencies (the lowest-numbered such stream, so
/// the main chain stays on stream 0); otherwise (it can run beside every
/// stream's last launch) on a stream not yet used, or, with none left, on
/// the stream whose last launch is the oldest. Every dependency on another
/// stream that the stream does not already wait for becomes an event wait,
/// the newest first (a wait covers what its stream did before). With one
/// stream the script is the launches in order.
pub fn stream_schedule(launches: &[Launch], max_streams: usize) -> StreamSchedule {
    let max_streams = max_streams.max(1);
    let n = launches.len();
    // Per launch: its stream, the earlier launches on other streams it
    // waits for, and the launches known to be done once it is (a bit each).
    let mut stream_of = vec![0usize; n];
    let mut waits: Vec<Vec<usize>> = vec![Vec::new(); n];
    let mut done_after: Vec<Vec<bool>> = Vec::with_capacity(n);
    // Per stream: its last launch, and what is known done before its next.
    let mut tail: Vec<Option<usize>> = Vec::new();
    let mut done: Vec<Vec<bool>> = Vec::new();
    for i in 0..n {
        let mut deps: Vec<usize> = (0..i)
            .filter(|&j| depends(&launches[j], &launches[i]))
            .collect();
        let after_tail = (0..tail.len()).find(|&s| tail[s].is_some_and(|t| deps.contains(&t)));
        let s = match after_tail {
            Some(s) => s,
            None if tail.len() < max_streams => {
                tail.push(None);
                done.push(vec![false; n]);
                tail.len() - 1
            }
            None => (0..tail.len())
                .min_by_key(|&s| tail[s].unwrap_or(0))
                .unwrap_or(0),
        };
        // A side stream joins the capture by waiting on an event of a stream
        // in it, so a first launch without dependencies waits for stream 0's
        // last one (stream 0 always has one: it takes the first launch).
        if s != 0 && tail[s].is_none() && deps.is_empty() {
            deps.extend(tail[0]);
        }
        for &j in deps.iter().rev() {
            if !done[s][j] {
                waits[i].push(j);
                for (d, &k) in done[s].iter_mut().zip(&done_after[j]) {
                    *d |= k;
                }
            }
        }
        stream_of[i] = s;
        done[s][i] = true;
        tail[s] = Some(i);
        done_after.push(done[s].clone());
    }
    let streams = tail.len().max(1);
    // Events: one after each launch that another stream waits for, and one
    // per side stream to join it back at the end.
    let mut event_of = vec![None; n];
    let mut events = 0;
    for w in waits.iter().flatten() {
        if event_of[*w].is_none() {
            event_of[*w] = Some(events);
            events += 1;
        }
    }
    let mut ops = Vec::with_capacity(3 * n + 2 * streams);
    for i in 0..n {
        let s = stream_of[i];
        for &j in &waits[i] {
            if let Some(event) = event_of[j] {
                ops.push(StreamOp::Wait { stream: s, event });
            }
        }
        ops.push(StreamOp::Launch {
            launch: i,
            stream: s,
        });
        if let Some(event) = event_of[i] {
            ops.push(StreamOp::Record { stream: s, event });
        }
    }
    for s in 1..streams {
        ops.push(StreamOp::Record {
            stream: s,
            event: events,
        });
        ops.push(StreamOp::Wait {
            stream: 0,
            event: events,
        });
        events += 1;
    }
    StreamSchedule {
        streams,
        events,
        ops,
    }
}

impl StreamSchedule {
    /// The stream launch `launch` runs on.
    pub fn stream_of(&self, launch: usize) -> Option<usize> {
        self.ops.iter().find_map(|op| match *op {
            StreamOp::Launch { launch: l, stream } if l == launch => Some(stream),
            _ => None,
        })
    }

    /// The launches in an order the script allows: each stream's launches
    /// in order, a wait passed only once its event is recorded. Stream
    /// progress is tried from the last stream (`from_last`) or the first;
    /// the host emulator alternates the two, so a dependency missing from
    /// the script changes what it computes.
    pub fn execution_order(&self, from_last: bool) -> Vec<usize> {
        let mut queues: Vec<Vec<StreamOp>> = vec![Vec::new(); self.streams];
        for op in &self.ops {
            let s = match *op {
                StreamOp::Launch { stream, .. }
                | StreamOp::Record { stream, .. }
                | StreamOp::Wait { stream, .. } => stream,
            };
            queues[s].push(*op);
        }
        let mut next = vec![0usize; self.streams];
        let mut recorded = vec![false; self.events];
        let mut order = Vec::new();
        loop {
            let mut progressed = false;
            let streams: Vec<usize> = if from_last {
                (0..self.streams).rev().collect()
            } else {
                (0..self.streams).collect()
            };
            // One op at a time, then the preferred streams again.
            for s in streams {
                let Some(op) = queues[s].get(next[s]) else {
                    continue;
                };
                match *op {
                    StreamOp::Wait { event, .. } if !recorded[event] => continue,
                    StreamOp::Wait { .. } => {}
                    StreamOp::Record { event, .. } => recorded[event] = true,
                    StreamOp::Launch { launch, .. } => order.push(launch),
                }
                next[s] += 1;
                progressed = true;
                break;
            }
            if !progressed {
                return order;
            }
        }
    }
}

/// Replays the script with, per stream, the set of launches known to be
/// finished; panics where a launch could start before a dependency or a
/// wait names an event not yet recorded, and checks that every stream is
/// joined back into stream 0 at the end.
#[cfg(test)]
pub(crate) fn check_schedule(launches: &[Launch], schedule: &StreamSchedule) {
    let n = launches.len();
    let mut done = vec![vec![false; n]; schedule.streams];
    let mut events: Vec<Option<Vec<bool>>> = vec![None; schedule.events];
    let mut launched = vec![false; n];
    let mut joined = vec![false; schedule.streams];
    joined[0] = true;
    for op in &schedule.ops {
        match *op {
            StreamOp::Launch { launch, stream } => {
                assert!(
                    joined[stream],
                    "stream {stream} launches before joining the capture"
                );
                assert!(!launched[launch], "launch {launch} twice");
                for j in 0..launch {
                    if depends(&launches[j], &launches[launch]) {
                        assert!(
                            done[stream][j],
                            "launch {launch} ({:?}) on stream {stream} may start before launch {j} ({:?})",
                            launches[launch].kernel,
                            launches[j].kernel
                        );
                    }
                }
                launched[launch] = true;
                done[stream][launch] = true;
            }
            StreamOp::Record { stream, event } => {
                assert!(joined[stream], "stream {stream} records before joining");
                events[event] = Some(done[stream].clone());
            }
            StreamOp::Wait { stream, event } => {
                let Some(known) = events[event].clone() else {
                    panic!("stream {stream} waits for event {event} before it is recorded")
                };
                for (d, k) in done[stream].iter_mut().zip(known) {
                    *d |= k;
                }
                joined[stream] = true;
            }
        }
    }
    assert!(launched.iter().all(|&l| l), "a launch is missing");
    assert!(done[0].iter().all(|&d| d), "a stream is not joined back");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::launch_plan::Kernel;

    fn launch(reads: &[usize], writes: &[usize]) -> Launch {
        Launch {
            kernel: Kernel::Gather,
            grid: (1, 1, 1),
            block: (32, 1, 1),
            args: Vec::new(),
            reads: reads.to_vec(),
            writes: writes.to_vec(),
            problems: 0..0,
            origin: Vec::new(),
        }
    }

    #[test]
    fn one_stream_is_the_launches_in_order() {
        let launches = [launch(&[], &[0]), launch(&[0], &[1]), launch(&[], &[2])];
        let schedule = stream_schedule(&launches, 1);
        assert_eq!(schedule.streams, 1);
        assert_eq!(schedule.events, 0);
        let expected: Vec<StreamOp> = (0..3)
            .map(|launch| StreamOp::Launch { launch, stream: 0 })
            .collect();
        assert_eq!(schedule.ops, expected);
        check_schedule(&launches, &schedule);
    }

    #[test]
    fn independent_launches_branch_and_join() {
        // 0 writes a; 1 and 2 read a (independent); 3 reads both outputs.
        let launches = [
            launch(&[], &[0]),
            launch(&[0], &[1]),
            launch(&[0], &[2]),
            launch(&[1, 2], &[3]),
        ];
        let schedule = stream_schedule(&launches, 4);
        check_schedule(&launches, &schedule);
        assert_eq!(schedule.streams, 2);
        let stream = |l| schedule.stream_of(l);
        assert_ne!(stream(1), stream(2));
        assert_eq!(stream(3), Some(0));
        // Both orders respect the dependencies; they differ in 1 and 2.
        assert_eq!(schedule.execution_order(false), vec![0, 1, 2, 3]);
        assert_eq!(schedule.execution_order(true), vec![0, 2, 1, 3]);
    }

    #[test]
    fn a_side_stream_joins_by_waiting_on_stream_0() {
        // Two launches without dependencies: the second still waits for the
        // first (a side stream must join the capture through stream 0).
        let launches = [launch(&[], &[0]), launch(&[], &[1]), launch(&[0, 1], &[2])];
        let schedule = stream_schedule(&launches, 2);
        check_schedule(&launches, &schedule);
        assert_eq!(schedule.streams, 2);
        assert_eq!(
            schedule.ops[..4],
            [
                StreamOp::Launch {
                    launch: 0,
                    stream: 0
                },
                StreamOp::Record {
                    stream: 0,
                    event: 0
                },
                StreamOp::Wait {
                    stream: 1,
                    event: 0
                },
                StreamOp::Launch {
                    launch: 1,
                    stream: 1
                },
            ]
        );
    }

    #[test]
    fn write_after_read_is_a_dependency() {
        // 1 reads a, 2 overwrites a: 2 waits for 1 even on another stream.
        let launches = [
            launch(&[], &[0]),
            launch(&[0], &[1]),
            launch(&[5], &[0]),
            launch(&[0, 1], &[3]),
        ];
        for streams in 1..4 {
            let schedule = stream_schedule(&launches, streams);
            check_schedule(&launches, &schedule);
            for from_last in [false, true] {
                let order = schedule.execution_order(from_last);
                let at = |l: usize| order.iter().position(|&x| x == l);
                assert!(at(1) < at(2), "{order:?}");
            }
        }
    }

    #[test]
    fn more_independent_launches_than_streams_share_them() {
        let launches: Vec<Launch> = (0..6).map(|b| launch(&[], &[b])).collect();
        let all: Vec<usize> = (0..6).collect();
        let mut launches = launches;
        launches.push(launch(&all, &[9]));
        for streams in 1..5 {
            let schedule = stream_schedule(&launches, streams);
            assert_eq!(schedule.streams, streams.min(6));
            check_schedule(&launches, &schedule);
            let mut order = schedule.execution_order(true);
            assert_eq!(order.pop(), Some(6));
            order.sort();
            assert_eq!(order, (0..6).collect::<Vec<_>>());
        }
    }
}
