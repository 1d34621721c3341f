//! Component tests of the scan queue on a paused Tokio clock.

use std::time::Duration;

use super::{Blocker, Enqueued, Intent, Reason, ScanQueue};
use tokio::time::{Instant, advance, timeout};

fn intent(key: &str, reason: Reason) -> Intent<u32> {
    Intent::new(key, reason, 0)
}

fn drain_keys(queue: &mut ScanQueue<u32>) -> Vec<String> {
    std::iter::from_fn(|| queue.pop().map(|q| q.intent.key)).collect()
}

#[tokio::test(start_paused = true)]
async fn manual_rescan_jumps_ahead_of_older_scheduled_intents() {
    let mut queue = ScanQueue::new();
    queue.enqueue(intent("old-scheduled", Reason::Scheduled));
    advance(Duration::from_secs(3600)).await;
    queue.enqueue(intent("manual", Reason::ManualRescan));

    assert_eq!(drain_keys(&mut queue), ["manual", "old-scheduled"]);
}

#[tokio::test(start_paused = true)]
async fn reasons_leave_in_priority_order_whatever_the_enqueue_order() {
    let mut queue = ScanQueue::new();
    for reason in Reason::ALL.iter().rev() {
        queue.enqueue(intent(reason.as_str(), *reason));
        advance(Duration::from_secs(1)).await;
    }

    let expected: Vec<&str> = Reason::ALL.iter().map(|r| r.as_str()).collect();
    assert_eq!(drain_keys(&mut queue), expected);
    let priorities: Vec<u8> = Reason::ALL.iter().map(|r| r.priority()).collect();
    assert_eq!(priorities, [5, 4, 3, 2, 1, 0]);
}

#[tokio::test(start_paused = true)]
async fn intents_of_one_reason_leave_oldest_first() {
    let mut queue = ScanQueue::new();
    queue.enqueue(intent("b", Reason::NewScan));
    advance(Duration::from_millis(1)).await;
    queue.enqueue(intent("a", Reason::NewScan));
    // Same instant: enqueue order decides.
    queue.enqueue(intent("c", Reason::NewScan));
    queue.enqueue(intent("retry", Reason::Retry));

    assert_eq!(drain_keys(&mut queue), ["b", "a", "c", "retry"]);
}

#[tokio::test(start_paused = true)]
async fn reenqueueing_a_key_updates_it_instead_of_duplicating_it() {
    let mut queue = ScanQueue::new();
    assert_eq!(
        queue.enqueue(Intent::new("ns/web", Reason::Scheduled, 1)),
        Enqueued::Added
    );
    let first_enqueued = queue.enqueued_at("ns/web").unwrap();
    advance(Duration::from_secs(10)).await;
    let update = Intent::new("ns/web", Reason::SpecChanged, 2).with_hosts(["web.example"]);
    assert_eq!(queue.enqueue(update.clone()), Enqueued::Updated);

    assert_eq!(queue.len(), 1);
    assert_eq!(queue.get("ns/web"), Some(&update));
    assert_eq!(queue.enqueued_at("ns/web"), Some(first_enqueued));
    assert_eq!(queue.pending_counts().get(Reason::SpecChanged), 1);
    assert_eq!(queue.pending_counts().total(), 1);
    let popped = queue.pop().unwrap();
    assert_eq!(popped.intent, update);
    assert_eq!(popped.enqueued_at, first_enqueued);
    assert!(queue.pop().is_none());
}

#[tokio::test(start_paused = true)]
async fn a_reenqueued_key_keeps_its_place_among_later_arrivals() {
    let mut queue = ScanQueue::new();
    queue.enqueue(intent("first", Reason::Retry));
    advance(Duration::from_secs(1)).await;
    queue.enqueue(intent("second", Reason::NewScan));
    advance(Duration::from_secs(1)).await;
    queue.enqueue(intent("third", Reason::NewScan));
    advance(Duration::from_secs(1)).await;
    // Upgraded to the reason of the others, but waiting longest: it goes first.
    queue.enqueue(intent("first", Reason::NewScan));
    // Same reason, new payload: keeps its place ahead of "third".
    queue.enqueue(Intent::new("second", Reason::NewScan, 7));

    assert_eq!(drain_keys(&mut queue), ["first", "second", "third"]);
}

#[tokio::test(start_paused = true)]
async fn a_scheduled_intent_becomes_pending_when_due_and_not_before() {
    let mut queue = ScanQueue::new();
    let due = Instant::now() + Duration::from_secs(10);
    queue.enqueue_at(intent("later", Reason::Scheduled), due);
    assert_eq!(queue.due_at("later"), Some(due));
    assert_eq!(queue.scheduled_counts().get(Reason::Scheduled), 1);

    let early = timeout(Duration::from_millis(9_999), queue.next_due()).await;
    assert!(early.is_err(), "fired before it was due");
    assert!(queue.pop().is_none());

    assert_eq!(queue.next_due().await, 1);
    assert_eq!(Instant::now(), due);
    assert_eq!(queue.enqueued_at("later"), Some(due));
    assert_eq!(queue.pending_counts().get(Reason::Scheduled), 1);
    assert_eq!(queue.scheduled_counts().total(), 0);
    assert_eq!(queue.pop().unwrap().intent.key, "later");
}

#[tokio::test(start_paused = true)]
async fn scheduled_intents_that_fall_due_together_leave_in_priority_order() {
    let mut queue = ScanQueue::new();
    let due = Instant::now() + Duration::from_secs(5);
    queue.enqueue_at(intent("scheduled", Reason::Scheduled), due);
    queue.enqueue_at(intent("retry", Reason::Retry), due - Duration::from_secs(1));
    queue.enqueue_at(intent("manual", Reason::ManualRescan), due);

    assert_eq!(queue.next_due().await, 1);
    advance(Duration::from_secs(1)).await;
    assert_eq!(queue.next_due().await, 2);
    assert_eq!(drain_keys(&mut queue), ["manual", "scheduled", "retry"]);
}

#[tokio::test(start_paused = true)]
async fn a_delay_beyond_the_timer_wheel_horizon_still_fires_on_time() {
    let mut queue = ScanQueue::new();
    let due = Instant::now() + Duration::from_secs(1000 * 24 * 3600);
    queue.enqueue_at(intent("far", Reason::Scheduled), due);

    assert_eq!(queue.next_due().await, 1);
    assert_eq!(Instant::now(), due);
}

#[tokio::test(start_paused = true)]
async fn remove_takes_a_key_out_of_the_pending_queue() {
    let mut queue = ScanQueue::new();
    queue.enqueue(intent("a", Reason::NewScan));
    queue.enqueue(intent("b", Reason::NewScan));

    assert_eq!(queue.remove("a").map(|i| i.key), Some("a".to_owned()));
    assert!(queue.remove("a").is_none());
    assert_eq!(queue.pending_counts().total(), 1);
    assert_eq!(drain_keys(&mut queue), ["b"]);
}

#[tokio::test(start_paused = true)]
async fn remove_takes_a_key_out_of_the_delay_queue_so_it_never_fires() {
    let mut queue = ScanQueue::new();
    let now = Instant::now();
    queue.enqueue_at(
        intent("gone", Reason::Scheduled),
        now + Duration::from_secs(5),
    );
    queue.enqueue_at(intent("kept", Reason::Retry), now + Duration::from_secs(10));

    assert!(queue.remove("gone").is_some());
    assert_eq!(queue.scheduled_counts().total(), 1);
    assert_eq!(queue.next_due().await, 1);
    assert_eq!(Instant::now(), now + Duration::from_secs(10));
    assert_eq!(drain_keys(&mut queue), ["kept"]);
    assert!(
        timeout(Duration::from_secs(3600), queue.next_due())
            .await
            .is_err()
    );
}

#[tokio::test(start_paused = true)]
async fn enqueueing_a_scheduled_key_now_makes_it_pending() {
    let mut queue = ScanQueue::new();
    let due = Instant::now() + Duration::from_secs(60);
    queue.enqueue_at(intent("web", Reason::Scheduled), due);
    assert_eq!(
        queue.enqueue(intent("web", Reason::SpecChanged)),
        Enqueued::Updated
    );

    assert_eq!(queue.len(), 1);
    assert_eq!(queue.due_at("web"), None);
    assert_eq!(queue.scheduled_counts().total(), 0);
    let popped = queue.pop().unwrap();
    assert_eq!(popped.intent.reason, Reason::SpecChanged);
    assert!(
        timeout(Duration::from_secs(120), queue.next_due())
            .await
            .is_err()
    );
    assert!(queue.is_empty());
}

#[tokio::test(start_paused = true)]
async fn scheduling_a_pending_key_moves_it_to_the_delay_queue() {
    let mut queue = ScanQueue::new();
    queue.enqueue(intent("web", Reason::NewScan));
    let due = Instant::now() + Duration::from_secs(30);
    assert_eq!(
        queue.enqueue_at(intent("web", Reason::Scheduled), due),
        Enqueued::Updated
    );

    assert!(queue.pop().is_none());
    assert_eq!(queue.pending_counts().total(), 0);
    assert_eq!(queue.scheduled_counts().get(Reason::Scheduled), 1);
    assert_eq!(queue.next_due().await, 1);
    assert_eq!(Instant::now(), due);
}

#[tokio::test(start_paused = true)]
async fn rescheduling_a_scheduled_key_moves_its_due_time_both_ways() {
    let mut queue = ScanQueue::new();
    let start = Instant::now();
    queue.enqueue_at(
        intent("web", Reason::Scheduled),
        start + Duration::from_secs(30),
    );
    queue.enqueue_at(
        intent("web", Reason::Retry),
        start + Duration::from_secs(90),
    );
    assert_eq!(queue.len(), 1);
    assert_eq!(queue.scheduled_counts().get(Reason::Retry), 1);
    assert_eq!(queue.scheduled_counts().total(), 1);

    assert!(
        timeout(Duration::from_secs(89), queue.next_due())
            .await
            .is_err()
    );
    queue.enqueue_at(
        intent("web", Reason::Retry),
        start + Duration::from_secs(100),
    );
    queue.enqueue_at(
        intent("web", Reason::Retry),
        start + Duration::from_secs(95),
    );
    assert_eq!(queue.next_due().await, 1);
    assert_eq!(Instant::now(), start + Duration::from_secs(95));
}

#[tokio::test(start_paused = true)]
async fn a_due_time_in_the_past_makes_the_intent_pending_at_once() {
    let mut queue = ScanQueue::new();
    advance(Duration::from_secs(10)).await;
    let past = Instant::now() - Duration::from_secs(5);
    assert_eq!(
        queue.enqueue_at(intent("late", Reason::Scheduled), past),
        Enqueued::Added
    );

    assert_eq!(queue.pending_len(), 1);
    assert_eq!(queue.scheduled_len(), 0);
}

fn blocked_on_x(intent: &Intent<u32>) -> Option<Blocker> {
    intent
        .hosts
        .contains("x")
        .then(|| Blocker::Host("x".to_owned()))
}

#[tokio::test(start_paused = true)]
async fn blocked_intents_are_parked_until_their_blocker_is_released() {
    let mut queue = ScanQueue::new();
    queue.enqueue(intent("manual-on-x", Reason::ManualRescan).with_hosts(["x"]));
    queue.enqueue(intent("new-on-y", Reason::NewScan).with_hosts(["y"]));
    queue.enqueue(intent("retry-on-x", Reason::Retry).with_hosts(["x"]));
    queue.enqueue(intent("scheduled-on-z", Reason::Scheduled).with_hosts(["z"]));

    assert_eq!(
        queue.pop_first(blocked_on_x).unwrap().intent.key,
        "new-on-y"
    );
    // "manual-on-x" was parked on the way; a plain pop passes it by.
    assert_eq!(queue.pop().unwrap().intent.key, "scheduled-on-z");
    assert_eq!(queue.pop_first(blocked_on_x).map(|q| q.intent.key), None);
    assert!(queue.pop().is_none());
    assert_eq!(queue.pending_len(), 2);
    assert_eq!(queue.pending_counts().total(), 2);

    assert_eq!(queue.unpark(&Blocker::Host("y".to_owned())), 0);
    assert_eq!(queue.unpark(&Blocker::Host("x".to_owned())), 2);
    assert_eq!(drain_keys(&mut queue), ["manual-on-x", "retry-on-x"]);
}

#[tokio::test(start_paused = true)]
async fn a_parked_intent_that_is_enqueued_again_is_looked_at_again() {
    let mut queue = ScanQueue::new();
    queue.enqueue(intent("a", Reason::NewScan).with_hosts(["x"]));
    let enqueued_at = queue.enqueued_at("a").unwrap();
    assert!(queue.pop_first(blocked_on_x).is_none());
    advance(Duration::from_secs(5)).await;

    queue.enqueue(intent("a", Reason::SpecChanged).with_hosts(["w"]));
    let popped = queue.pop_first(blocked_on_x).unwrap();
    assert_eq!(
        (popped.intent.reason, popped.enqueued_at),
        (Reason::SpecChanged, enqueued_at)
    );
    // Its old parking spot is gone with it.
    assert_eq!(queue.unpark(&Blocker::Host("x".to_owned())), 0);
}

#[tokio::test(start_paused = true)]
async fn removing_or_delaying_a_parked_intent_takes_it_off_the_parking_lot() {
    let mut queue = ScanQueue::new();
    queue.enqueue(intent("removed", Reason::NewScan).with_hosts(["x"]));
    queue.enqueue(intent("scheduled", Reason::NewScan).with_hosts(["x"]));
    assert!(queue.pop_first(blocked_on_x).is_none());

    assert!(queue.remove("removed").is_some());
    let due = Instant::now() + Duration::from_secs(10);
    queue.enqueue_at(intent("scheduled", Reason::Retry).with_hosts(["x"]), due);
    assert_eq!(queue.unpark(&Blocker::Host("x".to_owned())), 0);
    assert_eq!((queue.pending_len(), queue.scheduled_len()), (0, 1));
    assert_eq!(queue.next_due().await, 1);
    assert_eq!(Instant::now(), due);
    assert_eq!(drain_keys(&mut queue), ["scheduled"]);
}

#[tokio::test(start_paused = true)]
async fn reason_counts_follow_every_change() {
    let mut queue = ScanQueue::new();
    let later = Instant::now() + Duration::from_secs(60);
    queue.enqueue(intent("a", Reason::NewScan));
    queue.enqueue(intent("b", Reason::NewScan));
    queue.enqueue(intent("c", Reason::ManualRescan));
    queue.enqueue_at(intent("d", Reason::Scheduled), later);
    queue.enqueue_at(intent("e", Reason::Retry), later);
    queue.enqueue(intent("a", Reason::Recovered));
    queue.enqueue_at(intent("b", Reason::Scheduled), later);
    queue.enqueue(intent("e", Reason::ManualRescan));
    queue.remove("d");

    let pending: Vec<(Reason, usize)> = queue
        .pending_counts()
        .iter()
        .filter(|(_, n)| *n > 0)
        .collect();
    assert_eq!(pending, [(Reason::ManualRescan, 2), (Reason::Recovered, 1)]);
    let scheduled: Vec<(Reason, usize)> = queue
        .scheduled_counts()
        .iter()
        .filter(|(_, n)| *n > 0)
        .collect();
    assert_eq!(scheduled, [(Reason::Scheduled, 1)]);
    assert_eq!(queue.pending_len(), 3);
    assert_eq!(queue.scheduled_len(), 1);

    queue.pop();
    assert_eq!(queue.pending_counts().total(), 2);
}
