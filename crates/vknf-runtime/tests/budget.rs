//! The process's memory budget on its own: limits, categories, client shares, waiting for room, and
//! the figures `/metrics` shows.

use std::sync::Arc;

use prometheus_client::registry::Registry;
use vknf_runtime::{Category, Charge, MemoryBudget, Refusal};

#[test]
fn charges_stay_within_the_limit_and_are_given_back_when_dropped() {
    let budget = MemoryBudget::new(1000);
    let a = budget.try_charge(Category::Queued, 600).unwrap();
    let b = budget.try_charge(Category::Queued, 400).unwrap();
    let refused = budget.try_charge(Category::Unsent, 1).unwrap_err();
    assert!(matches!(refused, Refusal::BudgetFull { used: 1000, .. }), "{refused}");
    assert_eq!(budget.refusals(Category::Unsent, "budget_full"), 1);
    assert_eq!(budget.used(), 1000);
    drop(a);
    assert_eq!(budget.used(), 400);
    assert_eq!(budget.used_by(Category::Queued), 400);
    drop(b);
    assert_eq!(budget.used(), 0);
    assert_eq!(budget.peak(), 1000);
}

#[test]
fn frames_being_received_hold_at_most_half_and_leave_room_for_the_rest() {
    let budget = MemoryBudget::new(1000);
    let receiving = budget.try_charge(Category::Receiving, 500).unwrap();
    let refused = budget.try_charge(Category::Receiving, 1).unwrap_err();
    assert_eq!(refused.label(), "receiving_full");
    assert_eq!(budget.used_by(Category::Receiving), 500);
    // The other half is still there for admitted calls and their answers.
    let queued = budget.try_charge(Category::Queued, 500).unwrap();
    assert_eq!(budget.used(), 1000);
    drop((receiving, queued));
    assert_eq!(budget.used(), 0);
    assert_eq!(budget.used_by(Category::Receiving), 0);
}

#[test]
fn a_refused_receiving_charge_leaves_no_trace() {
    let budget = MemoryBudget::new(1000);
    let _queued = budget.try_charge(Category::Queued, 900).unwrap();
    let refused = budget.try_charge(Category::Receiving, 200).unwrap_err();
    assert_eq!(refused.label(), "budget_full");
    assert_eq!(budget.used_by(Category::Receiving), 0);
    assert_eq!(budget.used(), 900);
}

#[test]
fn answers_are_charged_even_past_the_limit_and_then_new_work_is_refused() {
    let budget = MemoryBudget::new(100);
    let answer = budget.charge(Category::Unsent, 150);
    assert_eq!(budget.used(), 150);
    assert!(budget.try_charge(Category::Queued, 1).is_err());
    drop(answer);
    assert!(budget.try_charge(Category::Queued, 100).is_ok());
}

#[test]
fn a_client_account_counts_charges_holds_and_running_accounts() {
    let budget = MemoryBudget::with_client_share(1000, 300);
    let client = budget.client();
    let receiving = client.try_charge(Category::Receiving, 100).unwrap();
    assert_eq!((client.used(), budget.used()), (100, 100));
    // Handed to the runtime: the process's part goes (the runtime charges it again on admission).
    let hold = receiving.into_client_hold();
    assert_eq!((client.used(), budget.used()), (100, 0));
    let unsent = client.account(Category::Unsent);
    unsent.add(250);
    assert_eq!((client.used(), budget.used_by(Category::Unsent)), (350, 250));
    unsent.sub(50);
    assert_eq!(client.used(), 300);
    drop(hold);
    drop(unsent);
    assert_eq!((client.used(), budget.used()), (0, 0));
    assert_eq!(
        client.check_share(Category::Receiving, 301).unwrap_err().label(),
        "larger_than_share"
    );
    assert_eq!(budget.refusals(Category::Receiving, "larger_than_share"), 1);
}

#[tokio::test]
async fn a_client_over_its_share_waits_until_it_has_room() {
    let budget = MemoryBudget::with_client_share(1000, 300);
    let client = budget.client();
    let unsent = Arc::new(client.account(Category::Unsent));
    unsent.add(280);
    // Room for 20 more: no wait.
    client.room_for(20).await;
    assert_eq!(budget.waits(), 0);
    let waiter = tokio::spawn({
        let client = client.clone();
        async move { client.room_for(100).await }
    });
    tokio::task::yield_now().await;
    assert!(!waiter.is_finished());
    unsent.sub(200);
    tokio::time::timeout(std::time::Duration::from_secs(10), waiter)
        .await
        .expect("the waiter woke")
        .unwrap();
    assert_eq!(budget.waits(), 1);
}

#[test]
fn absorbed_charges_are_given_back_together() {
    let budget = MemoryBudget::new(1000);
    let mut held = Charge::none();
    held.absorb(budget.try_charge(Category::Receiving, 10).unwrap());
    held.absorb(budget.try_charge(Category::Receiving, 20).unwrap());
    assert_eq!((held.bytes(), budget.used()), (30, 30));
    drop(held);
    assert_eq!(budget.used(), 0);
}

#[test]
fn the_metrics_show_the_limit_the_categories_and_the_refusals() {
    let budget = MemoryBudget::new(1 << 20);
    let _queued = budget.try_charge(Category::Queued, 4096).unwrap();
    let _ = budget.try_charge(Category::Receiving, 1 << 20);
    let mut registry = Registry::default();
    budget.register(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    assert!(text.contains("vknf_memory_budget_bytes 1048576"), "{text}");
    assert!(
        text.contains("vknf_memory_category_bytes{category=\"queued\"} 4096"),
        "{text}"
    );
    assert!(
        text.contains("vknf_memory_refusals_total{category=\"receiving\",reason=\"receiving_full\"} 1"),
        "{text}"
    );
}

#[test]
fn a_client_that_cannot_wait_is_refused_past_its_share_not_past_the_budget() {
    let budget = MemoryBudget::with_client_share(1000, 300);
    let (one, other) = (budget.client(), budget.client());
    let unsent = one.account(Category::Unsent);
    unsent.add(250);
    let refused = one.try_charge_in_share(Category::Unsent, 100).unwrap_err();
    assert!(
        matches!(
            refused,
            Refusal::ShareFull {
                used: 250,
                share: 300,
                ..
            }
        ),
        "{refused}"
    );
    assert!(refused.is_retryable());
    assert_eq!(budget.refusals(Category::Unsent, "share_full"), 1);
    // Another client still has its share.
    let theirs = other.try_charge_in_share(Category::Unsent, 300).unwrap();
    assert_eq!((other.used(), budget.used()), (300, 550));
    // Once the first has read its answers it has room again.
    unsent.sub(250);
    let mine = one.try_charge_in_share(Category::Unsent, 100).unwrap();
    assert_eq!(one.used(), 100);
    assert_eq!(
        one.try_charge_in_share(Category::Unsent, 301).unwrap_err().label(),
        "larger_than_share"
    );
    drop((theirs, mine, unsent));
    assert_eq!(budget.used(), 0);
}

#[test]
fn tls_connections_have_their_own_category() {
    let budget = MemoryBudget::new(1000);
    let first = budget.try_charge(Category::Tls, 600).unwrap();
    assert_eq!(
        budget.try_charge(Category::Tls, 600).unwrap_err().label(),
        "budget_full"
    );
    assert_eq!(budget.refusals(Category::Tls, "budget_full"), 1);
    assert_eq!((budget.used_by(Category::Tls), budget.used()), (600, 600));
    let mut registry = Registry::default();
    budget.register(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    assert!(
        text.contains("vknf_memory_category_bytes{category=\"tls\"} 600"),
        "{text}"
    );
    assert!(
        text.contains("vknf_memory_refusals_total{category=\"tls\",reason=\"budget_full\"} 1"),
        "{text}"
    );
    drop(first);
    assert_eq!(budget.used(), 0);
}
