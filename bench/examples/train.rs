//! Training cost: forward+backward on dfdx's tape beside the forward alone, same run, for the
//! headline variants at B = 1, H = 8, d = 64, chunk 64, 1 and 2 threads, plus the dfdx quadratic
//! composition's forward+backward (plain, identity map) and the peak memory of a training step.
//!
//! `cargo run --release -p attnc-bench --example train [-- N ...]` (default N = 512 2048 4096;
//! softmax rows up to N = 4096).
//! `-- --memory N` reports the peak resident memory of one plain training step at N.

use attnc::prelude::*;
use dfdx::prelude::{Axes4, PermuteTo, SumTo, TryMatMul};
use dfdx::tensor::{Tensor as T, Trace};
use dfdx::tensor_ops::Backward;
use std::time::Instant;

#[attention(head_dim = 64, chunk = 64)]
struct Plain;
#[attention(head_dim = 64, feature_map = elu_plus_one, normalize = sum, chunk = 64)]
struct Elu;
#[attention(head_dim = 64, update = gated, chunk = 64)]
struct Gated;
#[attention(head_dim = 64, update = delta, qk_norm = l2, chunk = 64)]
struct Delta;
#[attention(head_dim = 64, update = gated_delta, qk_norm = l2, chunk = 64)]
struct GatedDelta;
#[attention(head_dim = 64, feature_map = softmax, chunk = 64)]
struct Softmax;

type Tok = Tensor<(usize, usize, usize, Const<64>), f32, Cpu>;
type Sc = Tensor<(usize, usize, usize), f32, Cpu>;

fn best_ms(runs: usize, mut f: impl FnMut()) -> f64 {
    f();
    (0..runs)
        .map(|_| {
            let t0 = Instant::now();
            f();
            t0.elapsed().as_secs_f64() * 1e3
        })
        .fold(f64::INFINITY, f64::min)
}

fn pool(threads: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("a thread pool")
}

fn peak_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

struct Data {
    q: Tok,
    k: Tok,
    v: Tok,
    d_o: Tok,
    beta: Sc,
    g: Sc,
}

/// Heads of the problem: 8, or `ATTNC_TRAIN_HEADS` (1 exercises the chunk-parallel backward).
fn heads() -> usize {
    std::env::var("ATTNC_TRAIN_HEADS")
        .ok()
        .and_then(|h| h.parse().ok())
        .unwrap_or(8)
}

fn data(n: usize) -> Data {
    let h = heads();
    let dev = Cpu::seed_from_u64(0);
    let tok = || -> Tok { dev.sample_normal_like(&(1, h, n, Const)) };
    let beta: Sc = dev.sample_uniform_like(&(1, h, n));
    let g: Sc = dev.sample_uniform_like(&(1, h, n));
    Data {
        q: tok(),
        k: tok(),
        v: tok(),
        d_o: tok(),
        beta,
        g: -g * 0.1,
    }
}

/// (forward ms, forward+backward ms) of one variant.
macro_rules! variant {
    ($x:expr, $s:ident $(, $extra:ident)*) => {{
        let x = $x;
        let fwd = best_ms(3, || {
            $s::forward(x.q.clone(), x.k.clone(), x.v.clone() $(, x.$extra.clone())*).unwrap();
        });
        let train = best_ms(3, || {
            let o = $s::forward(
                x.q.leaky_trace(), x.k.leaky_trace(), x.v.leaky_trace() $(, x.$extra.leaky_trace())*
            ).unwrap();
            let _ = (o * x.d_o.clone()).sum::<Rank0, _>().backward();
        });
        (fwd, train)
    }};
}

/// dfdx's quadratic masked form of plain causal attention, forward+backward.
fn dfdx_train(x: &Data) -> f64 {
    best_ms(2, || {
        let a: T<(usize, usize, usize, usize), f32, Cpu, _> =
            x.q.leaky_trace()
                .try_matmul(x.k.leaky_trace().permute::<_, Axes4<0, 1, 3, 2>>())
                .unwrap();
        let o = (a.lower_tri(None) * 0.125)
            .try_matmul(x.v.leaky_trace())
            .unwrap();
        let _ = (o * x.d_o.clone()).sum::<Rank0, _>().backward();
    })
}

fn memory(n: usize) {
    let x = data(n);
    let before = peak_mib();
    let o = Plain::forward(x.q.leaky_trace(), x.k.leaky_trace(), x.v.leaky_trace()).unwrap();
    let grads = (o * x.d_o.clone()).sum::<Rank0, _>().backward();
    let after = peak_mib();
    let mib = |floats: usize| (floats * 4) as f64 / (1 << 20) as f64;
    let io = mib(5 * 8 * n * 64); // q, k, v, o, dO
    let states = mib(8 * Plain::BACKWARD.saved_floats(n));
    for (name, plan) in [
        ("plain", Plain::BACKWARD),
        ("gated delta", GatedDelta::BACKWARD),
        ("softmax", Softmax::BACKWARD),
    ] {
        let every_token = mib(n * plan.state_floats);
        println!(
            "{name}: {:?}, saves {:.2} MiB per (batch, head) at N = {n} (every token's state: {every_token:.1} MiB)",
            plan.algorithm,
            mib(plan.saved_floats(n)),
        );
    }
    println!(
        "memory N={n}: +{:.1} MiB peak over a training step; inputs+output+dO {io:.1} MiB, \
         saved chunk states {states:.1} MiB (gradients {:.1} MiB)",
        after - before,
        mib(grads.get(&x.q).as_vec().len() * 3)
    );
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(n) = args.iter().skip_while(|a| *a != "--memory").nth(1) {
        memory(n.parse().expect("--memory N"));
        return;
    }
    let ns: Vec<usize> = args.iter().filter_map(|a| a.parse().ok()).collect();
    let ns = if ns.is_empty() {
        vec![512, 2048, 4096]
    } else {
        ns
    };
    println!("| N | threads | variant | forward ms | fwd+bwd ms | ratio |");
    println!("|---|---|---|---|---|---|");
    for &n in &ns {
        let x = data(n);
        for threads in [1, 2] {
            pool(threads).install(|| {
                type Run<'a> = Box<dyn Fn() -> (f64, f64) + 'a>;
                let rows: [(&str, Run); 6] = [
                    ("plain", Box::new(|| variant!(&x, Plain))),
                    ("elu+1 sum", Box::new(|| variant!(&x, Elu))),
                    ("gated", Box::new(|| variant!(&x, Gated, g))),
                    ("delta", Box::new(|| variant!(&x, Delta, beta))),
                    ("gated delta", Box::new(|| variant!(&x, GatedDelta, beta, g))),
                    ("softmax", Box::new(|| variant!(&x, Softmax))),
                ];
                // `ATTNC_TRAIN_ONLY=plain` (a variant's name) runs that row alone, e.g. under perf.
                let only = std::env::var("ATTNC_TRAIN_ONLY").ok();
                let mut plain = f64::NAN;
                for (name, run) in &rows {
                    if only.as_deref().is_some_and(|o| o != *name) {
                        continue;
                    }
                    // Quadratic: about 30 s a measurement past N = 4096 on 2 cores.
                    if *name == "softmax" && n > 4096 {
                        continue;
                    }
                    let (f, t) = run();
                    if *name == "plain" {
                        plain = t;
                    }
                    println!("| {n} | {threads} | {name} | {f:.2} | {t:.2} | {:.2} |", t / f);
                }
                if n <= 2048 && only.is_none() {
                    let d = dfdx_train(&x);
                    let t = plain;
                    println!(
                        "| {n} | {threads} | dfdx composition (plain) | | {d:.2} | attnc {:.1}x faster |",
                        d / t
                    );
                }
            });
        }
    }
}
