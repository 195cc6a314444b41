//! Self-test of the gradient oracle (tests/common/grad.rs): its forward against mod.rs's
//! `reference` (and softmax against a direct quadratic), and its gradients against central finite
//! differences (h = 1e-4, in f64) of its loss, element by element, for every input (q, k, v, beta,
//! g, proj, s0, z0; Richardson-extrapolated, see STEP), over every update, mask, normaliser,
//! qk_norm and feature map:
//! max |fd - oracle| / max |oracle| <= 1e-6 per gradient.

mod common;
#[path = "common/grad.rs"]
mod grad;

use attnc::spec::{FeatureMap, Mask, Normalize, QkNorm, Spec, Update};
use common::{quadratic_softmax, reference, Inputs, Rng};
use grad::*;

const B: usize = 1;
const H: usize = 2;
const D: usize = 4;
/// Central-difference step. The derivative is Richardson's extrapolation of the central
/// differences at STEP and STEP / 2, error O(STEP^4): plain central differences at 1e-4 are off
/// by up to 4e-5 (relative, exactly the h^2 term: 25x less at h = 2e-5) where normalize = sum
/// divides by a small q~ . z (squared_relu keeping one small positive component of q).
const STEP: f64 = 1e-4;
/// Inputs of maps with a kink at 0 are kept at least this far from it.
const NUDGE: f64 = 1e-3;
const TOL: f64 = 1e-6;

fn closure_map() -> FeatureMap {
    attnc_codegen::parse::parse_spec_str("head_dim = 8, feature_map = |x| x * x + 1.0")
        .expect("the closure spec parses")
        .spec
        .feature_map
}

fn maps() -> Vec<(&'static str, FeatureMap)> {
    vec![
        ("identity", FeatureMap::Identity),
        ("elu_plus_one", FeatureMap::EluPlusOne),
        ("relu", FeatureMap::Relu),
        ("squared_relu", FeatureMap::SquaredRelu),
        ("sigmoid", FeatureMap::Sigmoid),
        ("taylor2", FeatureMap::Taylor2),
        ("dpfp2", FeatureMap::Dpfp { nu: 2 }),
        ("favor8", FeatureMap::Favor { features: 8 }),
        ("closure", closure_map()),
    ]
}

fn has_kink(fm: &FeatureMap) -> bool {
    matches!(
        fm,
        FeatureMap::EluPlusOne
            | FeatureMap::Relu
            | FeatureMap::SquaredRelu
            | FeatureMap::Dpfp { .. }
    )
}

struct Case {
    name: String,
    spec: Spec,
}

/// Every valid combination for `update` (mask none only with additive, normalize = sum only with
/// non-delta updates and non-negative maps), both qk_norms.
fn linear_cases(update: Update) -> Vec<Case> {
    let masks: &[Mask] = if update == Update::Additive {
        &[Mask::Causal, Mask::None]
    } else {
        &[Mask::Causal]
    };
    let mut out = Vec::new();
    for (map_name, fm) in maps() {
        for &mask in masks {
            for normalize in [Normalize::None, Normalize::Sum] {
                if normalize == Normalize::Sum
                    && (matches!(update, Update::Delta | Update::GatedDelta)
                        || fm == FeatureMap::Identity)
                {
                    continue;
                }
                for qk_norm in [QkNorm::None, QkNorm::L2] {
                    let mut spec = Spec::with_head_dim(D);
                    spec.feature_map = fm.clone();
                    spec.mask = mask;
                    spec.update = update;
                    spec.normalize = normalize;
                    spec.qk_norm = qk_norm;
                    let name = format!(
                        "{:?}/{map_name}/mask={:?}/norm={:?}/qk={:?}",
                        update, mask, normalize, qk_norm
                    );
                    out.push(Case { name, spec });
                }
            }
        }
    }
    out
}

fn softmax_cases() -> Vec<Case> {
    let mut out = Vec::new();
    for mask in [Mask::Causal, Mask::None] {
        for qk_norm in [QkNorm::None, QkNorm::L2] {
            let mut spec = Spec::with_head_dim(D);
            spec.feature_map = FeatureMap::Softmax;
            spec.mask = mask;
            spec.qk_norm = qk_norm;
            out.push(Case {
                name: format!("softmax/mask={mask:?}/qk={qk_norm:?}"),
                spec,
            });
        }
    }
    out
}

/// One problem: f32 inputs (mod.rs's), initial state (None for softmax), cotangents.
struct Problem {
    x: Inputs,
    s0: Option<Vec<f32>>,
    z0: Option<Vec<f32>>,
    ct: Cotangents,
}

fn problem(spec: &Spec, seed: u64) -> Problem {
    let n = 5 + (seed as usize % 3);
    let mut x = Inputs::random(B, H, n, D, D, seed).for_spec(spec, 7);
    if has_kink(&spec.feature_map) {
        for e in x.q.iter_mut().chain(x.k.iter_mut()) {
            if (*e as f64).abs() < NUDGE {
                *e = if *e < 0.0 {
                    -NUDGE as f32
                } else {
                    NUDGE as f32
                };
            }
        }
    }
    let f = spec.feature_dim();
    let mut rng = Rng::new(seed ^ 0xABCD);
    let (s0, z0) = if spec.feature_map == FeatureMap::Softmax {
        (None, None)
    } else {
        let s0 = rng.normals(B * H * f * D).iter().map(|v| 0.5 * v).collect();
        let z0 = (0..B * H * f).map(|_| 0.5 + rng.uniform()).collect();
        (Some(s0), Some(z0))
    };
    let ct = Cotangents::random(spec, B, H, n, D, seed ^ 0x1234);
    Problem { x, s0, z0, ct }
}

fn opt64(v: &Option<Vec<f32>>) -> Option<Vec<f64>> {
    v.as_ref().map(|v| v.iter().map(|&e| e as f64).collect())
}

/// The loss with one element of one input moved by `d`.
#[allow(clippy::too_many_arguments)]
fn perturbed(
    spec: &Spec,
    x: &Inputs64,
    s0: &Option<Vec<f64>>,
    z0: &Option<Vec<f64>>,
    ct: &Cotangents,
    which: &str,
    i: usize,
    d: f64,
) -> f64 {
    let (mut x, mut s0, mut z0) = (x.clone(), s0.clone(), z0.clone());
    {
        let slot: &mut Vec<f64> = match which {
            "q" => &mut x.q,
            "k" => &mut x.k,
            "v" => &mut x.v,
            "beta" => &mut x.beta,
            "g" => &mut x.g,
            "proj" => &mut x.proj,
            "s0" => s0.as_mut().expect("s0 given"),
            "z0" => z0.as_mut().expect("z0 given"),
            other => panic!("no input {other}"),
        };
        slot[i] += d;
    }
    loss64(spec, &x, s0.as_deref(), z0.as_deref(), ct)
}

/// Per gradient: (name, max |fd - oracle| / max |oracle|, max |oracle|).
fn check_case(case: &Case, seed: u64) -> Vec<(&'static str, f64, f64)> {
    let spec = &case.spec;
    let p = problem(spec, seed);
    let x = Inputs64::from(&p.x);
    let (s0, z0) = (opt64(&p.s0), opt64(&p.z0));
    // z0 is an input only with normalize = sum.
    let z0 = if spec.normalize == Normalize::Sum {
        z0
    } else {
        None
    };
    let grads = backward64(spec, &x, s0.as_deref(), z0.as_deref(), &p.ct);
    // The f32 entry point is the same computation.
    let via_f32 = backward(
        spec,
        &p.x,
        p.s0.as_deref(),
        z0.as_ref().and(p.z0.as_deref()),
        &p.ct,
    );
    assert_eq!(
        via_f32.q, grads.q,
        "{}: backward(f32) != backward64",
        case.name
    );
    let mut expected = vec!["q", "k", "v"];
    if spec.feature_map != FeatureMap::Softmax {
        if spec.has_beta() {
            expected.push("beta");
        }
        if spec.has_gate() {
            expected.push("g");
        }
    }
    if matches!(spec.feature_map, FeatureMap::Favor { .. }) {
        expected.push("proj");
    }
    if spec.feature_map != FeatureMap::Softmax {
        expected.push("s0");
    }
    if spec.normalize == Normalize::Sum {
        expected.push("z0");
    }
    let named = grads.named();
    assert_eq!(
        named.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
        expected,
        "{}: the gradients returned",
        case.name
    );
    named
        .into_iter()
        .map(|(which, g)| {
            let fd: Vec<f64> = (0..g.len())
                .map(|i| {
                    let central = |h: f64| {
                        let lp = perturbed(spec, &x, &s0, &z0, &p.ct, which, i, h);
                        let lm = perturbed(spec, &x, &s0, &z0, &p.ct, which, i, -h);
                        (lp - lm) / (2.0 * h)
                    };
                    // Richardson: cancels the h^2 term of the central difference.
                    (4.0 * central(STEP / 2.0) - central(STEP)) / 3.0
                })
                .collect();
            let scale = g.iter().fold(0.0f64, |m, v| m.max(v.abs()));
            (which, rel_err(&fd, g), scale)
        })
        .collect()
}

fn check_all(cases: Vec<Case>) {
    let mut failures = Vec::new();
    for (idx, case) in cases.iter().enumerate() {
        let seed = 1000 + idx as u64 * 17;
        let errs = check_case(case, seed);
        let worst = errs.iter().fold(0.0f64, |m, e| m.max(e.1));
        let detail: Vec<String> = errs
            .iter()
            .map(|(n, e, s)| format!("{n} {e:.1e} (|g| {s:.1e})"))
            .collect();
        eprintln!("{:<60} worst {worst:.2e}: {}", case.name, detail.join(", "));
        for (n, e, s) in errs {
            if e.is_nan() || e > TOL || s == 0.0 {
                failures.push(format!(
                    "{} d{n}: rel err {e:.2e}, max |grad| {s:.1e}",
                    case.name
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn gradients_additive() {
    check_all(linear_cases(Update::Additive));
}

#[test]
fn gradients_gated() {
    check_all(linear_cases(Update::Gated));
}

#[test]
fn gradients_delta() {
    check_all(linear_cases(Update::Delta));
}

#[test]
fn gradients_gated_delta() {
    check_all(linear_cases(Update::GatedDelta));
}

#[test]
fn gradients_softmax() {
    check_all(softmax_cases());
}

/// The f64 forward agrees with mod.rs's `reference` (which rounds l2-normalised rows and
/// elementwise feature maps to f32, hence not bit for bit).
#[test]
fn forward64_matches_reference() {
    let mut worst = 0.0f64;
    let mut idx = 0u64;
    for update in [
        Update::Additive,
        Update::Gated,
        Update::Delta,
        Update::GatedDelta,
    ] {
        for case in linear_cases(update) {
            idx += 1;
            let spec = &case.spec;
            let p = problem(spec, 5000 + idx);
            let z0 = if spec.normalize == Normalize::Sum {
                p.z0.clone()
            } else {
                None
            };
            let want = reference(spec, &p.x, p.s0.as_deref(), z0.as_deref());
            let (s0_64, z0_64) = (opt64(&p.s0), opt64(&z0));
            let got = forward64(
                spec,
                &Inputs64::from(&p.x),
                s0_64.as_deref(),
                z0_64.as_deref(),
            );
            let errs = [
                rel_err(&got.o, &want.o),
                rel_err(&got.s, &want.s),
                rel_err(&got.z, &want.z),
            ];
            let e = errs.iter().cloned().fold(0.0, f64::max);
            worst = worst.max(e);
            assert!(
                e <= 1e-5,
                "{}: forward64 vs reference: o/s/z {:.2e} {:.2e} {:.2e}",
                case.name,
                errs[0],
                errs[1],
                errs[2]
            );
        }
    }
    eprintln!("forward64 vs reference: worst max-rel {worst:.2e} over {idx} specs");
}

/// Softmax: against the direct quadratic computation of mod.rs.
#[test]
fn softmax_forward64_matches_quadratic() {
    for (idx, case) in softmax_cases().iter().enumerate() {
        let spec = &case.spec;
        let x = Inputs::random(B, H, 6, D, D, 77 + idx as u64);
        let got = forward64(spec, &Inputs64::from(&x), None, None);
        let want = quadratic_softmax(spec, &x);
        let e = rel_err(&got.o, &want);
        assert!(e <= 1e-12, "{}: {e:.2e}", case.name);
    }
}

/// The loss through the f32 entry point is <o, dO> + <S_N, dS> + <z_N, dz> of mod.rs's forward.
#[test]
fn loss_is_the_inner_product_with_the_reference() {
    for (idx, case) in linear_cases(Update::Gated).iter().enumerate() {
        let spec = &case.spec;
        let p = problem(spec, 300 + idx as u64);
        let z0 = if spec.normalize == Normalize::Sum {
            p.z0.clone()
        } else {
            None
        };
        let r = reference(spec, &p.x, p.s0.as_deref(), z0.as_deref());
        let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
        let mut want = dot(&r.o, &p.ct.d_o) + dot(&r.s, &p.ct.d_s);
        if !p.ct.d_z.is_empty() {
            want += dot(&r.z, &p.ct.d_z);
        }
        let got = loss(spec, &p.x, p.s0.as_deref(), z0.as_deref(), &p.ct);
        assert!(
            (got - want).abs() <= 1e-5 * want.abs().max(1.0),
            "{}: {got} vs {want}",
            case.name
        );
    }
}
