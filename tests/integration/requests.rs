//! Scoring through the Rust API: bad requests are refused with a message that
//! names the input and candidate, outputs are written only on success, and
//! request-scope features behave as the contract says.

use crate::common;

use common::small;
use mmoe::{Backend, DType, ErrorKind, Request, Scores, Session};

/// The small model's inputs: u (dense request 4), a (dense candidate 6,
/// missing zero), us (sparse request, 10 rows × 3), as (sparse candidate,
/// 20 rows × 3).
struct Features {
    u: Vec<f32>,
    a: Vec<f32>,
    us_ids: Vec<u64>,
    us_offsets: Vec<u32>,
    as_ids: Vec<u64>,
    as_offsets: Vec<u32>,
}

fn features(n: usize) -> Features {
    Features {
        u: vec![0.5, -1.0, 2.0, 0.0],
        a: (0..n * 6).map(|i| (i as f32 * 0.37).sin()).collect(),
        us_ids: vec![1, 7, u64::MAX],
        us_offsets: vec![0, 3],
        as_ids: (0..n as u64 * 2).collect(),
        as_offsets: (0..=n as u32).map(|c| c * 2).collect(),
    }
}

fn request<'a>(f: &'a Features, n: usize) -> Request<'a> {
    let mut r = Request::new(n);
    r.set_dense(0, &f.u)
        .set_dense(1, &f.a)
        .set_sparse(2, &f.us_ids, &f.us_offsets)
        .set_sparse(3, &f.as_ids, &f.as_offsets);
    r
}

fn score(session: &mut Session, request: &Request<'_>) -> mmoe::Result<Vec<f32>> {
    let mut logits = vec![f32::NAN; request.candidates() * 2];
    session.score(
        request,
        &mut Scores {
            logits: Some(&mut logits),
            probabilities: None,
        },
    )?;
    Ok(logits)
}

#[test]
fn bad_requests_name_the_input() {
    let (_, _, packed) = small(DType::F16);
    let model = packed.open();
    let mut session = Session::new(model.clone());
    let n = 3;
    let f = features(n);
    assert!(score(&mut session, &request(&f, n)).is_ok());

    fn check<'a>(
        model: &std::sync::Arc<mmoe::Model>,
        f: &'a Features,
        edit: impl Fn(&mut Request<'a>),
        expect: &str,
    ) {
        let mut session = Session::new(model.clone());
        let mut r = request(f, 3);
        edit(&mut r);
        let err = score(&mut session, &r).expect_err(expect);
        assert_eq!(err.kind(), ErrorKind::Request, "{err}");
        assert!(
            err.message().contains(expect),
            "`{err}` should say `{expect}`"
        );
    }
    let short = vec![0.0f32; 3];
    let long = vec![0.0f32; n * 6 + 1];
    check(
        &model,
        &f,
        |r| {
            r.set_dense(0, &short);
        },
        "input `u`: 3 values, expected 4",
    );
    check(
        &model,
        &f,
        |r| {
            r.set_dense(1, &long);
        },
        "input `a`: 19 values, expected 3 candidates × 6",
    );
    check(
        &model,
        &f,
        |r| {
            r.set_sparse(0, &[1], &[0, 1]);
        },
        "input `u` is dense but was given sparse ids",
    );
    check(
        &model,
        &f,
        |r| {
            r.set_dense(2, &short);
        },
        "input `us` is sparse but was given dense values",
    );
    check(
        &model,
        &f,
        |r| {
            r.reset(n);
        },
        "input `u` is not set",
    );
    check(
        &model,
        &f,
        |r| {
            r.set_dense(4, &short);
        },
        "input index 4 is set, but model `small` has 4 inputs",
    );
    // CSR offsets.
    check(
        &model,
        &f,
        |r| {
            r.set_sparse(2, &[1, 2], &[0, 1, 2]);
        },
        "input `us`: 3 offsets, expected 2",
    );
    check(
        &model,
        &f,
        |r| {
            r.set_sparse(2, &[1, 2], &[1, 2]);
        },
        "input `us`: offsets must start at 0",
    );
    check(
        &model,
        &f,
        |r| {
            r.set_sparse(3, &[1, 2, 3], &[0, 2, 1, 3]);
        },
        "input `as`: offsets decrease at bag 1",
    );
    check(
        &model,
        &f,
        |r| {
            r.set_sparse(3, &[1, 2, 3], &[0, 1, 2, 2]);
        },
        "input `as`: last offset is 2 but there are 3 ids",
    );
    check(
        &model,
        &f,
        |r| {
            r.set_sparse(3, &[1], &[0, 1, 1, 5]);
        },
        "last offset is 5 but there are 1 ids",
    );
    // NaN where the input does not allow missing values.
    let mut u_nan = f.u.clone();
    u_nan[2] = f32::NAN;
    check(
        &model,
        &f,
        |r| {
            r.set_dense(0, &u_nan);
        },
        "input `u` (request scope) element 2: value NaN is not finite",
    );
    let mut u_inf = f.u.clone();
    u_inf[1] = f32::INFINITY;
    check(
        &model,
        &f,
        |r| {
            r.set_dense(0, &u_inf);
        },
        "input `u` (request scope) element 1: value inf",
    );

    // Unknown names are refused by name lookup.
    let err = model.input_index("user_dense").unwrap_err();
    assert!(
        err.message().contains("unknown input `user_dense`")
            && err.message().contains("u, a, us, as"),
        "{err}"
    );
}

/// A request-scope value that is not finite, where the input allows no
/// missing values, is refused by every backend alike, with candidates or
/// without (the reference backend once scored an empty request with it).
#[test]
fn a_request_scope_value_not_finite_is_refused_by_every_backend_even_without_candidates() {
    let (_, _, packed) = small(DType::F16);
    let model = packed.open();
    for n in [0, 2] {
        let mut f = features(n);
        f.u[3] = f32::NAN;
        for backend in [Backend::Reference, Backend::Cpu] {
            let mut session = Session::with_backend(model.clone(), backend);
            let err = score(&mut session, &request(&f, n)).expect_err("NaN in `u`");
            assert_eq!(err.kind(), ErrorKind::Request, "{err}");
            assert!(
                err.message()
                    .contains("input `u` (request scope) element 3: value NaN is not finite"),
                "{backend:?}, {n} candidates: {err}"
            );
        }
    }
}

#[test]
fn outputs_are_written_only_on_success_and_checked_for_length() {
    let (_, _, packed) = small(DType::F16);
    let mut session = Session::new(packed.open());
    let n = 2;
    let f = features(n);
    let mut bad = request(&f, n);
    let nan = vec![f32::NAN; 4];
    bad.set_dense(0, &nan);
    let mut logits = vec![7.0; n * 2];
    let mut probabilities = vec![7.0; n * 2];
    let result = session.score(
        &bad,
        &mut Scores {
            logits: Some(&mut logits),
            probabilities: Some(&mut probabilities),
        },
    );
    assert!(result.is_err());
    assert!(
        logits.iter().chain(&probabilities).all(|&v| v == 7.0),
        "outputs untouched on error"
    );

    let good = request(&f, n);
    let mut short = vec![0.0; 3];
    let err = session
        .score(
            &good,
            &mut Scores {
                logits: Some(&mut short),
                probabilities: None,
            },
        )
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Argument);
    assert!(
        err.message()
            .contains("logits output holds 3 floats, expected 2 candidates × 2 tasks = 4"),
        "{err}"
    );

    session
        .score(
            &good,
            &mut Scores {
                logits: Some(&mut logits),
                probabilities: Some(&mut probabilities),
            },
        )
        .unwrap();
    for (l, p) in logits.iter().zip(&probabilities) {
        assert!((1.0 / (1.0 + (-l).exp()) - p).abs() < 1e-6);
    }
}

#[test]
fn missing_zero_and_request_scope_behave_as_the_contract_says() {
    let (_, _, packed) = small(DType::F32);
    let model = packed.open();
    let mut session = Session::new(model);
    let n = 4;
    let f = features(n);
    let base = score(&mut session, &request(&f, n)).unwrap();

    // A missing value of a `missing: zero` input scores like an explicit 0
    // (the input has no transforms, so 0 stays 0).
    let mut a_missing = f.a.clone();
    let mut a_zero = f.a.clone();
    a_missing[6 + 2] = f32::NAN;
    a_zero[6 + 2] = 0.0;
    let mut r1 = request(&f, n);
    r1.set_dense(1, &a_missing);
    let mut r2 = request(&f, n);
    r2.set_dense(1, &a_zero);
    let (s1, s2) = (
        score(&mut session, &r1).unwrap(),
        score(&mut session, &r2).unwrap(),
    );
    assert_eq!(s1, s2);
    assert_ne!(s1[2..4], base[2..4], "candidate 1 changed");
    assert_eq!(s1[..2], base[..2], "candidate 0 did not");

    // Candidates with identical candidate features score identically: the
    // request-scope features are shared.
    let same_a: Vec<f32> = (0..n).flat_map(|_| f.a[..6].to_vec()).collect();
    let same_ids: Vec<u64> = (0..n).flat_map(|_| [3u64, 4]).collect();
    let mut r = request(&f, n);
    r.set_dense(1, &same_a)
        .set_sparse(3, &same_ids, &f.as_offsets);
    let s = score(&mut session, &r).unwrap();
    for c in 1..n {
        assert_eq!(s[c * 2..c * 2 + 2], s[..2]);
    }

    // Ids read row `id mod rows`: 3 and 23 hit the same row of a 20-row table.
    let wrapped: Vec<u64> = same_ids.iter().map(|id| id + 20).collect();
    r.set_sparse(3, &wrapped, &f.as_offsets);
    assert_eq!(score(&mut session, &r).unwrap(), s);

    // An empty bag pools to zeros; a request with zero candidates is fine.
    let empty: Vec<u32> = vec![0; n + 1];
    r.set_sparse(3, &[], &empty);
    assert!(score(&mut session, &r)
        .unwrap()
        .iter()
        .all(|v| v.is_finite()));
    let f0 = features(0);
    assert_eq!(
        score(&mut session, &request(&f0, 0)).unwrap(),
        Vec::<f32>::new()
    );
}

#[test]
fn step_profile_names_every_step_and_does_not_change_scores() {
    let (_, _, packed) = small(DType::F32);
    let model = packed.open();
    let f = features(70); // three tiles of candidates
    let request = request(&f, 70);
    let mut session = Session::new(model.clone());
    let plain = score(&mut session, &request).unwrap();
    assert!(
        session.step_profile().is_empty(),
        "profiling is off by default"
    );

    session.set_threads(2);
    session.set_step_profiling(true);
    let profiled = score(&mut session, &request).unwrap();
    assert_eq!(plain, profiled, "profiling changed the scores");
    let profile = session.step_profile();
    let program = model.program();
    let steps = program.request_steps.len() + program.candidate_steps.len();
    assert_eq!(profile.len(), steps, "one entry per step");
    for (label, _) in &profile {
        assert!(!label.is_empty());
    }
    // Every expert layer is named by its tensor, with its shape.
    assert!(
        profile
            .iter()
            .any(|(label, _)| label.starts_with("linear experts.") && label.contains('→')),
        "{profile:?}"
    );
    let total: std::time::Duration = profile.iter().map(|(_, d)| *d).sum();
    assert!(total > std::time::Duration::ZERO);

    session.set_step_profiling(false);
    assert!(session.step_profile().is_empty(), "switched off");
}
