use super::*;
use KeyState::*;

fn key(public: &str, state: KeyState) -> KeyRecord {
    KeyRecord { public: public.into(), state, created_at: 1_000, changed_at: 1_000 }
}

fn ack(host: &str, keys: Option<&[&str]>) -> HostAck {
    HostAck { host: host.into(), keys: keys.map(|ks| ks.iter().map(|k| (*k).to_owned()).collect()) }
}

#[test]
fn states_round_trip_and_unknown_ones_are_refused() {
    for s in [Next, Current, Retiring, Retired] {
        assert_eq!(s.as_str().parse::<KeyState>(), Ok(s));
    }
    assert_eq!("Current".parse::<KeyState>(), Err(UnknownState("Current".into())));
}

#[test]
fn the_transition_follows_the_hosts_acknowledgements() {
    let rotating = [key("a", Current), key("b", Next)];
    let retiring = [key("a", Retiring), key("b", Current)];
    let settled = [key("a", Current), key("z", Retired)];
    let to_retire = vec![
        Change { public: "a".into(), from: Current, to: Retiring },
        Change { public: "b".into(), from: Next, to: Current },
    ];
    type Case<'a> = (&'a str, &'a [KeyRecord], Vec<HostAck>, Vec<Change>, Vec<&'a str>);
    let cases: Vec<Case> = vec![
        (
            "every host lists the next key",
            &rotating,
            vec![ack("web", Some(&["a", "b"])), ack("db", Some(&["b"]))],
            to_retire.clone(),
            vec![],
        ),
        (
            "one host never acknowledged",
            &rotating,
            vec![ack("web", Some(&["a", "b"])), ack("db", None)],
            vec![],
            vec!["db"],
        ),
        (
            "one host lists only the old key",
            &rotating,
            vec![ack("web", Some(&["a"])), ack("db", Some(&["b"]))],
            vec![],
            vec!["web"],
        ),
        ("no hosts enrolled", &rotating, vec![], to_retire, vec![]),
        ("a host still lists the retiring key", &retiring, vec![ack("web", Some(&["a", "b"]))], vec![], vec![]),
        (
            "no host lists the retiring key",
            &retiring,
            vec![ack("web", Some(&["b"])), ack("db", None)],
            vec![Change { public: "a".into(), from: Retiring, to: Retired }],
            vec![],
        ),
        ("no rotation", &settled, vec![ack("web", None)], vec![], vec![]),
    ];
    for (what, keys, hosts, changes, waiting) in cases {
        assert_eq!(step(keys, &hosts), changes, "{what}");
        assert_eq!(waiting_for(keys, &hosts), waiting, "{what}");
    }
}

#[test]
fn the_epoch_grows_with_every_change_and_the_envelope_follows_the_states() {
    let stages: [&[KeyRecord]; 4] = [
        &[key("a", Current)],
        &[key("a", Current), key("b", Next)],
        &[key("a", Retiring), key("b", Current)],
        &[key("a", Retired), key("b", Current)],
    ];
    let epochs: Vec<u64> = stages.iter().map(|s| epoch(s)).collect();
    assert!(epochs.windows(2).all(|w| w[0] < w[1]), "{epochs:?}");
    let publics = |ks: &[&KeyRecord]| ks.iter().map(|k| k.public.clone()).collect::<Vec<_>>();
    let e = envelope(stages[1]).unwrap();
    assert_eq!(
        (e.primary.public.as_str(), publics(&e.cosigners), publics(&e.announced)),
        ("a", vec!["b".into()], vec!["a".into(), "b".into()])
    );
    let e = envelope(stages[2]).unwrap();
    assert_eq!(
        (e.primary.public.as_str(), publics(&e.cosigners), publics(&e.retired)),
        ("b", vec![], vec!["a".into()])
    );
    let e = envelope(stages[3]).unwrap();
    assert_eq!((publics(&e.announced), publics(&e.retired)), (vec!["b".to_owned()], vec![]));
    assert_eq!(envelope(&[key("a", Retired)]), None);
    assert_eq!(may_rotate(stages[0]), Ok(()));
    assert_eq!(may_rotate(stages[1]), Err(RotateError::InProgress("b".into())));
    assert_eq!(may_rotate(stages[2]), Ok(()));
    assert_eq!(may_rotate(&[]), Err(RotateError::NoCurrent));
}

#[test]
fn a_key_warns_once_per_expiry() {
    let day = 86_400;
    let current = KeyRecord { created_at: 0, ..key("a", Current) };
    assert_eq!(expires_at(&current, Some(365 * day), None, Some(30 * day)), Some(365 * day));
    assert_eq!(expires_at(&current, Some(365 * day), Some(100 * day), Some(30 * day)), Some(130 * day));
    assert_eq!(expires_at(&current, None, Some(100 * day), Some(30 * day)), Some(130 * day));
    assert_eq!(expires_at(&KeyRecord { state: Next, ..current.clone() }, None, Some(0), Some(30 * day)), None);
    assert_eq!(expires_at(&current, None, None, None), None);
    assert_eq!(expires_at(&KeyRecord { created_at: i64::MAX, ..current }, Some(day), None, None), Some(i64::MAX));
    let at = Some(100 * day);
    let lead = 14 * day;
    let cases = [
        ("long before", 10 * day, None, None),
        ("just inside the lead", 86 * day, None, Some(100 * day)),
        ("already warned for this expiry", 90 * day, Some(100 * day), None),
        ("warned for an earlier expiry", 90 * day, Some(50 * day), Some(100 * day)),
        ("after expiry, never warned", 120 * day, None, Some(100 * day)),
    ];
    for (what, now, warned, want) in cases {
        assert_eq!(warn_due(at, lead, now, warned), want, "{what}");
    }
    assert_eq!(warn_due(None, lead, 0, None), None);
    assert_eq!(warn_due(Some(i64::MIN), i64::MAX, 0, None), Some(i64::MIN));
}

#[test]
fn an_agent_behind_the_key_set_is_told_at_once_if_it_can_verify() {
    let rotating = [key("a", Current), key("b", Next)];
    let retiring = [key("a", Retiring), key("b", Current)];
    let settled = [key("b", Current), key("a", Retired)];
    let list = |ks: &[&str]| ks.iter().map(|k| (*k).to_owned()).collect::<Vec<_>>();
    let cases: [(&str, &[KeyRecord], Vec<String>, bool); 9] = [
        ("rotating, agent knows only the current key", &rotating, list(&["a"]), true),
        ("rotating, agent has both", &rotating, list(&["a", "b"]), false),
        ("rotating, order does not matter", &rotating, list(&["b", "a"]), false),
        ("rotating, agent trusts neither signer", &rotating, list(&["x"]), false),
        ("retiring, agent still lists the old key", &retiring, list(&["a", "b"]), true),
        ("retiring, agent dropped it", &retiring, list(&["b"]), false),
        ("retiring, agent knows only the old key: cannot verify the new signer", &retiring, list(&["a"]), false),
        ("settled", &settled, list(&["b"]), false),
        ("an empty header", &settled, list(&[]), false),
    ];
    for (what, keys, trusted, want) in cases {
        assert_eq!(needs_announcement(&envelope(keys).unwrap(), &trusted), want, "{what}");
    }
}

#[test]
fn the_next_key_gets_the_next_free_number() {
    let cases = [
        ("berth-deploy-1", &[][..], "berth-deploy-2"),
        ("berth-deploy-9", &[], "berth-deploy-10"),
        ("host-deploy-1", &["host-deploy-2"], "host-deploy-3"),
        ("deploy", &[], "deploy-2"),
        ("deploy-", &[], "deploy--2"),
        ("deploy-12345678901234567890", &[], "deploy-12345678901234567890-2"),
        ("café-3", &[], "café-4"),
    ];
    for (current, taken, want) in cases {
        assert_eq!(next_key_name(current, taken), want, "{current}");
    }
}
