//! Softmax attention and two linear-time approximations of it on the same inputs: Based's
//! second-order Taylor map (`taylor2`) and Performer's positive random features (`favor`), both
//! with the sum normaliser, next to exact softmax attention (flash-style tiled). Prints how far
//! each is from softmax and how long each takes.
//!
//! Run with `cargo run --release --example feature_maps [N]` (default N = 2048).
//!
//! Both maps approximate `exp(q . k / sqrt(dk))`: taylor2 as `1 + x + x^2 / 2` of it, favor as an
//! unbiased random-feature estimate whose variance falls as the feature count m grows.

use attnc::prelude::*;
use std::time::Instant;

/// Exact causal softmax attention, dk = 16.
#[attention(head_dim = 16, value_dim = 64, feature_map = softmax, chunk = 64)]
pub struct Softmax;

/// Based (Arora et al., 2024): taylor2 features, F = 1 + 16 + 16 * 17 / 2 = 153.
#[attention(head_dim = 16, value_dim = 64, feature_map = taylor2, normalize = sum, chunk = 64)]
pub struct Based;

/// Performer (Choromanski et al., 2021): FAVOR+ with 256 features.
#[attention(head_dim = 16, value_dim = 64, feature_map = favor(features = 256), normalize = sum, chunk = 64)]
pub struct Performer256;

/// Performer with 2048 features: closer to softmax, slower.
#[attention(head_dim = 16, value_dim = 64, feature_map = favor(features = 2048), normalize = sum, chunk = 64)]
pub struct Performer2048;

const H: usize = 4;
type Keys = Tensor<(Const<1>, Const<H>, usize, Const<16>), f32, Cpu>;
type Values = Tensor<(Const<1>, Const<H>, usize, Const<64>), f32, Cpu>;

fn main() -> Result<(), Error> {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(2048);
    println!("{}", attnc::Device::auto()?.describe());
    println!("B = 1, H = {H}, N = {n}, dk = 16, dv = 64, causal\n");
    let dev = Cpu::seed_from_u64(3);
    // Queries and keys of moderate norm (the regime where both approximations are meant to work).
    let small = |t: Keys| t * 0.5;
    let q: Keys = small(dev.sample_normal_like(&(Const, Const, n, Const)));
    let k: Keys = small(dev.sample_normal_like(&(Const, Const, n, Const)));
    let v: Values = dev.sample_normal_like(&(Const, Const, n, Const));
    let w256 = attnc::favor::orthogonal_gaussian(1)?;
    let w2048 = attnc::favor::orthogonal_gaussian(2)?;

    let (exact, ms) = timed(|| Softmax::forward(q.clone(), k.clone(), v.clone()))?;
    let exact = exact.as_vec();
    println!(
        "{:<34} {:>5} {:>9.2} ms   (reference)",
        "softmax (tiled online softmax)", "-", ms
    );
    let rows = [
        (
            "Based (taylor2)",
            Based::FEATURE_DIM,
            timed(|| Based::forward(q.clone(), k.clone(), v.clone()))?,
        ),
        (
            "Performer (favor, m = 256)",
            Performer256::FEATURE_DIM,
            timed(|| Performer256::forward(q.clone(), k.clone(), v.clone(), w256.clone()))?,
        ),
        (
            "Performer (favor, m = 2048)",
            Performer2048::FEATURE_DIM,
            timed(|| Performer2048::forward(q.clone(), k.clone(), v.clone(), w2048.clone()))?,
        ),
    ];
    for (name, f, (o, ms)) in rows {
        let (max_rel, rms_rel) = distance(&o.as_vec(), &exact);
        println!(
            "{name:<34} {f:>5} {ms:>9.2} ms   vs softmax: max-rel {max_rel:.2e}, rms-rel {rms_rel:.2e}"
        );
    }
    println!(
        "\ncolumns: name, FEATURE_DIM (state rows), forward time (best of 3), distance to softmax"
    );
    Ok(())
}

/// Best of three runs after a warm-up: the last output and the time in ms.
fn timed<T>(mut f: impl FnMut() -> Result<T, Error>) -> Result<(T, f64), Error> {
    let mut out = f()?;
    let mut best = f64::INFINITY;
    for _ in 0..3 {
        let t0 = Instant::now();
        out = f()?;
        best = best.min(t0.elapsed().as_secs_f64() * 1e3);
    }
    Ok((out, best))
}

/// max |a - b| / max |b| and the root-mean-square difference over the rms of b.
fn distance(a: &[f32], b: &[f32]) -> (f64, f64) {
    let scale = b.iter().fold(0.0f64, |m, x| m.max(x.abs() as f64));
    let max = a
        .iter()
        .zip(b)
        .fold(0.0f64, |m, (x, y)| m.max((x - y).abs() as f64));
    let sq = |it: &mut dyn Iterator<Item = f64>| it.map(|x| x * x).sum::<f64>();
    let diff = sq(&mut a.iter().zip(b).map(|(x, y)| (x - y) as f64));
    let base = sq(&mut b.iter().map(|x| *x as f64));
    (max / scale, (diff / base).sqrt())
}
