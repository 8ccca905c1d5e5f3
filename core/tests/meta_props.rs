//! `Meta` against a model: a plain list of pairs, with each method written
//! the obvious way. Whatever sequence of edits is applied, the two hold the
//! same pairs, and metas with the same pairs are equal and hash alike
//! however they were built (the compact representation must not leak).

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};

use proptest::prelude::*;
use teleport_core::Meta;

type Model = Vec<(Vec<u8>, Vec<u8>)>;

#[derive(Debug, Clone)]
enum Op {
    Add(Vec<u8>, Vec<u8>),
    Set(Vec<u8>, Vec<u8>),
    Remove(Vec<u8>),
    Extend(Vec<(Vec<u8>, Vec<u8>)>),
}

/// Few distinct keys, so that edits hit existing pairs; values of every
/// length, empty included.
fn key() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(Vec::new()),
        prop::sample::select(vec![&b"a"[..], b"b", b"X-Id", b"%", b"a b"]).prop_map(<[u8]>::to_vec),
    ]
}

fn value() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..12)
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (key(), value()).prop_map(|(k, v)| Op::Add(k, v)),
        3 => (key(), value()).prop_map(|(k, v)| Op::Set(k, v)),
        1 => key().prop_map(Op::Remove),
        1 => prop::collection::vec((key(), value()), 0..4).prop_map(Op::Extend),
    ]
}

fn apply(m: &mut Meta, model: &mut Model, op: &Op) {
    match op {
        Op::Add(k, v) => {
            m.add(k, v);
            model.push((k.clone(), v.clone()));
        }
        Op::Set(k, v) => {
            m.set(k, v);
            match model.iter_mut().find(|(mk, _)| mk == k) {
                Some((_, mv)) => *mv = v.clone(),
                None => model.push((k.clone(), v.clone())),
            }
        }
        Op::Remove(k) => {
            let before = model.len();
            model.retain(|(mk, _)| mk != k);
            assert_eq!(m.remove(k), before - model.len(), "remove count");
        }
        Op::Extend(pairs) => {
            let other: Meta = pairs.iter().map(|(k, v)| (k, v)).collect();
            m.extend_from(&other);
            model.extend(pairs.iter().cloned());
        }
    }
}

fn pairs(m: &Meta) -> Model {
    m.iter().map(|(k, v)| (k.to_vec(), v.to_vec())).collect()
}

fn hash(m: &Meta) -> u64 {
    let mut h = DefaultHasher::new();
    m.hash(&mut h);
    h.finish()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn edits_match_the_model(ops in prop::collection::vec(op(), 0..24)) {
        let mut m = Meta::new();
        let mut model = Model::new();
        for op in &ops {
            apply(&mut m, &mut model, op);
            prop_assert_eq!(pairs(&m), model.clone());
            prop_assert_eq!(m.len(), model.len());
        }
        for (k, _) in &model {
            let first = model.iter().find(|(mk, _)| mk == k).map(|(_, v)| v.as_slice());
            prop_assert_eq!(m.get_bytes(k), first);
            let all: Vec<&[u8]> = model.iter().filter(|(mk, _)| mk == k).map(|(_, v)| v.as_slice()).collect();
            prop_assert_eq!(m.get_all(k).collect::<Vec<_>>(), all);
        }
        // The same pairs built in one go: equal, same hash.
        let fresh: Meta = model.iter().map(|(k, v)| (k, v)).collect();
        prop_assert_eq!(&fresh, &m);
        prop_assert_eq!(hash(&fresh), hash(&m));
        // And read back from the wire form: the pairs a reader keeps.
        let written: Model = model.iter().filter(|(k, v)| !(k.is_empty() && v.is_empty())).cloned().collect();
        let wire = m.to_string();
        prop_assert_eq!(wire.len(), m.encoded_len());
        prop_assert_eq!(pairs(&Meta::parse(wire.as_bytes())), written.clone());
        prop_assert_eq!(pairs(&Meta::try_parse(wire.as_bytes()).unwrap()), written);
    }

    /// Different pair lists are different metas (no two lists share a
    /// representation, e.g. a byte moved from a key to the previous value).
    #[test]
    fn different_pairs_are_not_equal(a in prop::collection::vec((key(), value()), 0..4),
                                     b in prop::collection::vec((key(), value()), 0..4)) {
        let (ma, mb): (Meta, Meta) = (a.iter().cloned().collect(), b.iter().cloned().collect());
        prop_assert_eq!(ma == mb, a == b);
    }
}

#[test]
fn a_byte_moved_between_key_and_value_is_another_meta() {
    let a: Meta = [("ab", "c")].into_iter().collect();
    let b: Meta = [("a", "bc")].into_iter().collect();
    let c: Meta = [("a", "b"), ("c", "")].into_iter().collect();
    assert_ne!(a, b);
    assert_ne!(a, c);
    assert_ne!(b, c);
}
