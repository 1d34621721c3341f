//! Queue throughput: enqueue, update, pop, schedule and remove 100,000
//! intents, a queue page over 100,000 pending intents, and one scan's lookup
//! against the whole snapshot.
//!
//! Run with `cargo bench -p nuclei-dispatcher --bench queue`.

use std::hint::black_box;
use std::num::NonZeroUsize;
use std::time::{Duration, Instant};

use dispatcher::bench_internals::{Blocker, ScanQueue};
use dispatcher::{Config, Dispatcher, Intent, Reason};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const N: usize = 100_000;

fn intents(rng: &mut StdRng, payload: u64) -> Vec<Intent<u64>> {
    (0..N)
        .map(|i| {
            let reason = Reason::ALL[rng.random_range(0..Reason::ALL.len())];
            let host = format!("host-{}.example", rng.random_range(0..5_000));
            Intent::new(format!("namespace-{}/scan-{i}", i % 100), reason, payload)
                .with_hosts([host])
        })
        .collect()
}

fn report(what: &str, ops: usize, took: Duration) {
    let per_sec = ops as f64 / took.as_secs_f64();
    println!(
        "{what:<50} {ops:>8} ops {:>10.2} ms {per_sec:>14.0} ops/s",
        took.as_secs_f64() * 1e3
    );
}

fn timed<T>(total: &mut Duration, what: &str, ops: usize, f: impl FnOnce() -> T) -> T {
    let start = Instant::now();
    let out = f();
    let took = start.elapsed();
    *total += took;
    report(what, ops, took);
    out
}

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("tokio runtime");
    let _guard = runtime.enter();
    let mut rng = StdRng::seed_from_u64(1);
    let mut total = Duration::ZERO;

    let mut queue = ScanQueue::new();
    let first = intents(&mut rng, 1);
    timed(&mut total, "enqueue (new keys)", N, || {
        for intent in first {
            queue.enqueue(intent);
        }
    });
    let updates = intents(&mut rng, 2);
    timed(&mut total, "enqueue (update existing keys)", N, || {
        for intent in updates {
            queue.enqueue(intent);
        }
    });
    assert_eq!(queue.len(), N);
    let popped = timed(&mut total, "pop (admission order)", N, || {
        let mut popped = 0;
        while let Some(q) = queue.pop() {
            black_box(q);
            popped += 1;
        }
        popped
    });
    assert_eq!(popped, N);

    let now = tokio::time::Instant::now();
    let dues: Vec<tokio::time::Instant> = (0..N)
        .map(|_| now + Duration::from_millis(rng.random_range(1_000..86_400_000)))
        .collect();
    let delayed = intents(&mut rng, 3);
    let keys: Vec<String> = delayed.iter().map(|i| i.key.clone()).collect();
    timed(&mut total, "enqueue_at (delay queue, new keys)", N, || {
        for (intent, due) in delayed.into_iter().zip(&dues) {
            queue.enqueue_at(intent, *due);
        }
    });
    let rescheduled = intents(&mut rng, 4);
    timed(
        &mut total,
        "enqueue_at (reschedule existing keys)",
        N,
        || {
            for (intent, due) in rescheduled.into_iter().zip(dues.iter().rev()) {
                queue.enqueue_at(intent, *due);
            }
        },
    );
    timed(&mut total, "remove (delayed keys)", N, || {
        for key in &keys {
            black_box(queue.remove(key));
        }
    });
    assert!(queue.is_empty());

    // One host in ten is busy: intents on it are parked by pop_first, then
    // unparked when the host frees.
    let mixed = intents(&mut rng, 5);
    let busy = |i: &Intent<u64>| {
        let host = i.hosts.first().expect("one host");
        host.ends_with("7.example")
            .then(|| Blocker::Host(host.clone()))
    };
    let busy_hosts: Vec<Blocker> = (0..5_000)
        .map(|h| format!("host-{h}.example"))
        .filter(|h| h.ends_with("7.example"))
        .map(Blocker::Host)
        .collect();
    timed(
        &mut total,
        "enqueue + pop_first with 1 in 10 parked + unpark",
        2 * N,
        || {
            for intent in mixed {
                queue.enqueue(intent);
            }
            let mut taken = 0;
            while let Some(q) = queue.pop_first(busy) {
                black_box(q);
                taken += 1;
            }
            for blocker in &busy_hosts {
                queue.unpark(blocker);
            }
            while let Some(q) = queue.pop() {
                black_box(q);
                taken += 1;
            }
            assert_eq!(taken, N);
        },
    );

    let (_dispatcher, handle) = Dispatcher::<u64>::new(Config::new(NonZeroUsize::MIN));
    for intent in intents(&mut rng, 6) {
        handle.enqueue(intent);
    }
    let pages = 100;
    timed(
        &mut total,
        "snapshot(50, 0) over 100k pending",
        pages,
        || {
            for _ in 0..pages {
                black_box(handle.snapshot(50, 0));
            }
        },
    );

    // One scan's page: a direct lookup, against the whole snapshot the
    // single-scan page used to take.
    let lookups = 100;
    let key = "namespace-0/scan-50000";
    assert!(handle.lookup(key).is_some(), "{key} is queued");
    timed(
        &mut total,
        "lookup(one key) over 100k pending",
        lookups,
        || {
            for _ in 0..lookups {
                black_box(handle.lookup(key));
            }
        },
    );
    timed(
        &mut total,
        "snapshot(all) over 100k pending (old lookup)",
        lookups,
        || {
            for _ in 0..lookups {
                black_box(handle.snapshot(usize::MAX, 0));
            }
        },
    );

    println!(
        "total of the timed phases: {:.1} ms",
        total.as_secs_f64() * 1e3
    );
}
